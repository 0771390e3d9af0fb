"""DEC (Xie et al.) as a one-class scorer (Gutoski et al.), and its SDAE + k-means baseline.

Both start from a trained SDAE and k-means++ centroids on its bottleneck codes
(training/clustering.py). The baseline stops there; DEC then refines encoder and
centroids jointly:
  q_ij = (1 + |z_i - mu_j|^2)^-1 / sum_j' (1 + |z_i - mu_j'|^2)^-1      Student-t, alpha = 1
  p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j'),  f_j = sum_i q_ij     sharpened target
  minimise KL(P || Q) with SGD + momentum; P is refreshed every `update_interval`
  iterations, and training stops once fewer than `tol` of the hard assignments change.

Score: the Euclidean distance from a patch's code to its nearest centroid. Not the
soft assignment max_j q_ij: q is normalised over the clusters, so a code far from
every centroid but relatively nearer one of them still gets q close to 1. The
distance is absolute (the unnormalised Student-t similarity 1 / (1 + d^2) ranks
patches identically but squeezes all far patches towards 0).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .clustering import kmeans
from .config import DECConfig
from .loops import as_float, minibatches
from .sdae import SDAEEncoder, encode_patches

log = logging.getLogger(__name__)


def soft_assignment(z: torch.Tensor, centroids: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """(N, K) Student-t similarities of codes to centroids, normalised per code."""
    d2 = (z[:, None, :] - centroids[None]).square().sum(-1)
    kernel = (1 + d2 / alpha).pow(-(alpha + 1) / 2)
    return kernel / kernel.sum(1, keepdim=True)


def target_distribution(q: torch.Tensor) -> torch.Tensor:
    """DEC's target: square q, divide by cluster frequency f_j = sum_i q_ij, renormalise per code."""
    weight = q.square() / q.sum(0)
    return weight / weight.sum(1, keepdim=True)


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) summed over clusters, averaged over codes."""
    return (p * (p.log() - q.log())).sum(1).mean()


class CentroidDistance(nn.Module):
    """Patches -> distance of their code to the nearest centroid: the exported scoring graph."""

    def __init__(self, encoder: nn.Module, centroids: torch.Tensor):
        super().__init__()
        self.encoder = encoder
        self.register_buffer("centroids", centroids.detach().clone())  # constants in the ONNX graph

    def score_latent(self, z: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        d2 = (z[:, None, :] - self.centroids[None]).square().sum(-1)
        return d2.min(dim=1).values.sqrt()

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.score_latent(self.encoder(patches), patches)


def initial_centroids(encoder: nn.Module, train: np.ndarray, clusters: int, seed: int) -> tuple[np.ndarray, dict]:
    """k-means++ on the training codes: the baseline's centroids and DEC's starting point."""
    labels, centres = kmeans(encode_patches(encoder, train), min(clusters, len(train)), seed)
    sizes = np.bincount(labels, minlength=len(centres))
    log.info("k-means on %d codes: %d clusters, sizes %d-%d", len(train), len(centres), sizes.min(), sizes.max())
    return centres, {"clusters": int(len(centres)), "cluster_sizes": sizes.tolist()}


@torch.no_grad()
def all_assignments(encoder: nn.Module, centroids: torch.Tensor, patches: np.ndarray, batch_size: int = 4096):
    encoder.eval()
    return torch.cat(
        [
            soft_assignment(encoder(as_float(patches[i : i + batch_size])), centroids)
            for i in range(0, len(patches), batch_size)
        ]
    )


def validation_kl(encoder: nn.Module, centroids: torch.Tensor, val: np.ndarray) -> float | None:
    """KL(P || Q) of the held-out patches against their own target: DEC's objective, for the log."""
    if not len(val):
        return None
    q = all_assignments(encoder, centroids, val)
    return float(kl_divergence(target_distribution(q), q))


def refine(
    cfg: DECConfig,
    encoder: SDAEEncoder,
    centres: np.ndarray,
    train: np.ndarray,
    val: np.ndarray,
    rng: np.random.Generator,
    progress: bool = True,
) -> tuple[torch.Tensor, dict]:
    """DEC's self-training on the training patches; returns the refined centroids (the encoder is updated in place)."""
    centroids = nn.Parameter(torch.from_numpy(centres).clone())
    optimizer = torch.optim.SGD([*encoder.parameters(), centroids], lr=cfg.lr, momentum=cfg.momentum)
    history, labels, iteration, converged = [], None, 0, False
    for epoch in range(1, cfg.max_epochs + 1):
        bar = tqdm(
            list(minibatches(len(train), cfg.batch_size, rng)),
            desc=f"dec {epoch}/{cfg.max_epochs}",
            leave=False,
            disable=not progress,
        )
        for idx in bar:
            if iteration % cfg.update_interval == 0:
                q = all_assignments(encoder, centroids.detach(), train)
                target = target_distribution(q)
                new_labels = q.argmax(1)
                changed = 1.0 if labels is None else float((new_labels != labels).float().mean())
                labels = new_labels
                val_kl = validation_kl(encoder, centroids.detach(), val)
                history.append({"iteration": iteration, "changed": changed, "val_kl": val_kl})
                log.info("dec iteration %d: %.4f of assignments changed, validation KL %s", iteration, changed, val_kl)
                if changed < cfg.tol:
                    converged = True
                    break
                encoder.train()
            loss = kl_divergence(
                target[torch.from_numpy(idx)], soft_assignment(encoder(as_float(train[idx])), centroids)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            iteration += 1
            bar.set_postfix(kl=f"{loss.item():.5f}")
        if converged:
            break
    encoder.eval()
    sizes = np.bincount(labels.numpy(), minlength=len(centres))
    return centroids.detach(), {
        "iterations": iteration,
        "converged": converged,
        "cluster_sizes": sizes.tolist(),
        "history": history,
    }
