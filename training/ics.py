"""ICS: deep one-class classification by intra-class splitting (after Schlachter et al.).

1. An autoencoder trained on all normal patches (the `autoencoder` section) splits
   them: the share rho with the lowest SSIM between patch and reconstruction is
   "atypical" (label 1), the rest "typical" (label 0).
2. A classifier, feature subnetwork -> latent z -> dense -> sigmoid, plus a
   distance subnetwork |z_i - z_j| -> dense -> sigmoid, are trained with three
   losses in turn, one per minibatch:
     closeness     -log(1 - dist(z_i, z_j)) on typical pairs
     intra-class   binary cross-entropy, typical 0 / atypical 1
     dispersion    -log(dist(z_i, z_j)) on atypical pairs
   The feature subnetwork starts from the splitting autoencoder's encoder.
3. Score: the predicted atypicality sigmoid(head(z)).

The epoch kept is the one with the lowest intra-class loss on the held-out
normal clips, split by the same SSIM threshold; test data is never looked at
(the original code picked checkpoints on test anomalies; this does not).
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
        return torch.sigmoid(self.atypicality_logit(z))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """The exported scoring graph: predicted atypicality in (0, 1)."""
        return self.score_latent(self.features(patches), patches)


def closeness_loss(distance_logit: torch.Tensor) -> torch.Tensor:
    """mean -log(1 - sigmoid(u)) = softplus(u): typical pairs pulled together."""
    return F.softplus(distance_logit).mean()


def dispersion_loss(distance_logit: torch.Tensor) -> torch.Tensor:
    """mean -log(sigmoid(u)) = softplus(-u): atypical pairs pushed apart."""
    return F.softplus(-distance_logit).mean()


def intra_class_loss(atypicality_logit: torch.Tensor, atypical: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(atypicality_logit, atypical.float())


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
    """The three ICS losses in turn, one per call (= minibatch); pairs are drawn at random within each class."""

    def __init__(self, net: ICSNet, patches: np.ndarray, atypical: np.ndarray, rng: np.random.Generator):
        if atypical.all() or not atypical.any():
            raise ValueError("ICS needs both typical and atypical training patches")
        self.net, self.patches, self.atypical, self.rng = net, patches, atypical, rng
        self.members = {False: np.flatnonzero(~atypical), True: np.flatnonzero(atypical)}
        self.turn = 0

    def _pair_logits(self, atypical: bool, count: int) -> torch.Tensor:
        i, j = self.rng.choice(self.members[atypical], size=(2, count))
        z = self.net.features(as_float(self.patches[np.concatenate([i, j])]))
        return self.net.distance_logit(z[:count], z[count:])

    def __call__(self, idx: np.ndarray) -> torch.Tensor:
        turn, self.turn = self.turn % 3, self.turn + 1
        if turn == 0:
            return closeness_loss(self._pair_logits(False, len(idx)))
        if turn == 1:
            logits = self.net.atypicality_logit(self.net.features(as_float(self.patches[idx])))
            return intra_class_loss(logits, torch.from_numpy(self.atypical[idx]))
        return dispersion_loss(self._pair_logits(True, len(idx)))


def classification_loss(net: ICSNet, patches: np.ndarray, atypical: np.ndarray):
    """Intra-class loss alone: the validation criterion."""

    def loss(idx: np.ndarray) -> torch.Tensor:
        logits = net.atypicality_logit(net.features(as_float(patches[idx])))
        return intra_class_loss(logits, torch.from_numpy(atypical[idx]))

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
