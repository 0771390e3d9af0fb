"""ICS: deep one-class classification by intra-class splitting (after Schlachter et al.).

1. An autoencoder trained on all normal patches (the `autoencoder` section) splits
   them: the share rho with the lowest SSIM between patch and reconstruction is
   "atypical" (label 1), the rest "typical" (label 0).
2. A classifier, feature subnetwork -> latent z -> dense -> sigmoid, plus a
   distance subnetwork |z_i - z_j| -> dense -> sigmoid, are trained by two steps
   in turn, as the authors' code does:
     pairs           closeness -log(1 - dist(z_i, z_j)) on typical pairs
                     + dispersion -log(dist(z_i, z_j)) on atypical pairs (weights 1 and 1)
     classification  intra-class binary cross-entropy, typical 0 / atypical 1, on
                     batches of as many typical as atypical patches
   The feature subnetwork starts from the splitting autoencoder's encoder.
3. Score: the log-odds of atypicality head(z), the logit of the classifier's
   output. It orders patches as the paper's probability does, but float32 rounds
   sigmoid(u) to exactly 1 for u above about 17, and after balanced training
   three quarters of the Ped2 test frames reached that ceiling.

The epoch kept is the one with the lowest class-balanced intra-class loss on the
held-out normal clips, split by the same SSIM threshold; test data is never looked
at (the original code picked checkpoints on test anomalies; this does not).
docs/methods.md sets this against the paper point by point.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import ICSConfig
from .loops import as_float, fit
from .nets import ConvAutoencoder
from .ssim import ssim

log = logging.getLogger(__name__)


class ICSNet(nn.Module):
    """Classifier (features -> z -> atypicality) and the distance subnetwork on pairs of z."""

    def __init__(self, features: nn.Module, latent: int):
        super().__init__()
        self.features = features
        self.head = nn.Linear(latent, 1)
        self.distance = nn.Linear(latent, 1)

    def atypicality_logit(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(z).squeeze(1)

    def distance_logit(self, zi: torch.Tensor, zj: torch.Tensor) -> torch.Tensor:
        return self.distance((zi - zj).abs()).squeeze(1)

    def score_latent(self, z: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        return self.atypicality_logit(z)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """The exported scoring graph: the log-odds of atypicality (a probability would round to 1 in float32)."""
        return self.score_latent(self.features(patches), patches)


def closeness_loss(distance_logit: torch.Tensor) -> torch.Tensor:
    """mean -log(1 - sigmoid(u)) = softplus(u): typical pairs pulled together."""
    return F.softplus(distance_logit).mean()


def dispersion_loss(distance_logit: torch.Tensor) -> torch.Tensor:
    """mean -log(sigmoid(u)) = softplus(-u): atypical pairs pushed apart."""
    return F.softplus(-distance_logit).mean()


def intra_class_loss(
    atypicality_logit: torch.Tensor, atypical: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(atypicality_logit, atypical.float(), weight=weight)


@torch.no_grad()
def reconstruction_ssim(
    autoencoder: ConvAutoencoder, patches: np.ndarray, window: int = 7, batch_size: int = 4096
) -> np.ndarray:
    autoencoder.eval()
    out = []
    for start in range(0, len(patches), batch_size):
        x = as_float(patches[start : start + batch_size])
        out.append(ssim(x, autoencoder(x), window).numpy())
    return np.concatenate(out)


def split_atypical(similarity: np.ndarray, fraction: float) -> tuple[np.ndarray, float]:
    """Mask of the round(fraction * N) lowest similarities (at least one), and the highest of them."""
    count = max(1, int(round(fraction * len(similarity))))
    lowest = np.argsort(similarity, kind="stable")[:count]
    atypical = np.zeros(len(similarity), dtype=bool)
    atypical[lowest] = True
    return atypical, float(similarity[lowest[-1]])


class ICSLoss:
    """The pair step and the classification step in turn, one per call (= minibatch), each on `len(idx)` patches.

    Pairs are drawn at random within each class. A classification batch holds as many typical as atypical
    patches, as in the authors' code: drawn from all patches it would hold a tenth atypical ones.
    """

    def __init__(self, net: ICSNet, patches: np.ndarray, atypical: np.ndarray, rng: np.random.Generator):
        if atypical.all() or not atypical.any():
            raise ValueError("ICS needs both typical and atypical training patches")
        self.net, self.patches, self.rng = net, patches, rng
        self.members = {False: np.flatnonzero(~atypical), True: np.flatnonzero(atypical)}
        self.turn = 0

    def _pair_logits(self, atypical: bool, count: int) -> torch.Tensor:
        i, j = self.rng.choice(self.members[atypical], size=(2, count))
        z = self.net.features(as_float(self.patches[np.concatenate([i, j])]))
        return self.net.distance_logit(z[:count], z[count:])

    def __call__(self, idx: np.ndarray) -> torch.Tensor:
        count, self.turn = max(len(idx) // 2, 1), self.turn + 1
        if self.turn % 2:
            return closeness_loss(self._pair_logits(False, count)) + dispersion_loss(self._pair_logits(True, count))
        picked = np.concatenate([self.rng.choice(self.members[label], size=count) for label in (False, True)])
        logits = self.net.atypicality_logit(self.net.features(as_float(self.patches[picked])))
        return intra_class_loss(logits, torch.arange(2 * count) >= count)


def classification_loss(net: ICSNet, patches: np.ndarray, atypical: np.ndarray):
    """Intra-class loss alone, each class weighing half as in training: the validation criterion."""
    counts = np.bincount(atypical, minlength=2)
    weight = torch.from_numpy(len(atypical) / (2 * np.maximum(counts, 1))[atypical.astype(int)]).float()

    def loss(idx: np.ndarray) -> torch.Tensor:
        logits = net.atypicality_logit(net.features(as_float(patches[idx])))
        return intra_class_loss(logits, torch.from_numpy(atypical[idx]), weight[idx])

    return loss


def train_ics(
    cfg: ICSConfig,
    autoencoder: ConvAutoencoder,
    train: np.ndarray,
    val: np.ndarray,
    rng: np.random.Generator,
    progress: bool = True,
) -> tuple[ICSNet, dict]:
    train_ssim = reconstruction_ssim(autoencoder, train, cfg.ssim_window)
    atypical, threshold = split_atypical(train_ssim, cfg.atypical_fraction)
    val_atypical = reconstruction_ssim(autoencoder, val, cfg.ssim_window) <= threshold
    log.info(
        "ICS split: SSIM <= %.4f is atypical: %d of %d training patches, %.1f%% of validation patches",
        threshold,
        atypical.sum(),
        len(train),
        100 * val_atypical.mean() if len(val) else 0.0,
    )
    net = ICSNet(copy.deepcopy(autoencoder.encoder), autoencoder.config["latent"])
    history = fit(
        net,
        ICSLoss(net, train, atypical, rng),
        len(train),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        optimizer=torch.optim.Adam(net.parameters(), lr=cfg.lr),
        rng=rng,
        val_loss_fn=classification_loss(net, val, val_atypical),
        n_val=len(val),
        desc="ics",
        progress=progress,
    )
    return net, {
        "ssim_threshold": threshold,
        "atypical_training_patches": int(atypical.sum()),
        "atypical_validation_share": float(val_atypical.mean()) if len(val) else None,
        "history": history,
    }
