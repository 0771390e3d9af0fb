"""Density in a method's latent space: the distance from a patch's code to its nearest normal training codes.

A reconstruction network forgives a new shape it can draw, and a classifier
or a few centroids can map it next to the normal ones; a density score asks
instead whether anything like this patch was seen in training. Every
method's encoder (the autoencoder's, NRE's, ICS's features, the SDAE's)
gives codes; a memory bank of training codes, thinned to a coreset by greedy
k-centre selection (each pick the code farthest from those picked, as image
anomaly detectors such as PatchCore thin theirs), is stored in the exported
graph as a constant. The score is the mean squared Euclidean distance to
the `neighbours` nearest bank codes: one matmul and a TopK, so the pipeline
and the GPU path still run one graph. (Squared, as reconstruction errors
are, and cheaper.)

`fused` adds the method's own score to the density, each divided by its
spread (99th percentile less median) on the held-out normal patches, so
neither drowns the other.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from .loops import as_float

log = logging.getLogger(__name__)


@torch.no_grad()
def latents_of(encoder: nn.Module, patches: np.ndarray, batch_size: int = 4096) -> torch.Tensor:
    encoder.eval()
    return torch.cat(
        [encoder(as_float(patches[i : i + batch_size])).flatten(1) for i in range(0, len(patches), batch_size)]
    )


@torch.no_grad()
def k_center_coreset(codes: torch.Tensor, size: int, rng: np.random.Generator, pool: int = 30000) -> np.ndarray:
    """Indices of `size` codes picked greedily, each farthest from those already picked (from a random pool)."""
    candidates = np.sort(rng.choice(len(codes), size=min(pool, len(codes)), replace=False))
    points = codes[torch.from_numpy(candidates)]
    size = min(size, len(points))
    picked = np.empty(size, dtype=np.int64)
    picked[0] = int(rng.integers(len(points)))
    nearest = (points - points[picked[0]]).square().sum(1)
    for i in range(1, size):
        picked[i] = int(nearest.argmax())
        nearest = torch.minimum(nearest, (points - points[picked[i]]).square().sum(1))
    log.info("coreset: %d of %d codes, covering radius %.4g", size, len(points), float(nearest.max().sqrt()))
    return candidates[picked]


class NearestDistance(nn.Module):
    """Codes [N, L] -> mean squared distance to their `neighbours` nearest codes of a constant bank [M, L].

    The nearest are found with |z - b|^2 = |z|^2 - 2 z.b + |b|^2 (one matmul, codes centred on the bank's mean to
    keep the norms small), and their distances then taken exactly: the expansion loses small distances to
    float32 rounding, which onnxruntime and PyTorch round differently.
    """

    def __init__(self, bank: torch.Tensor, neighbours: int = 1):
        super().__init__()
        if not 1 <= neighbours <= len(bank):
            raise ValueError(f"neighbours must be in [1, {len(bank)}], got {neighbours}")
        self.neighbours = neighbours
        centre = bank.detach().mean(0)
        self.register_buffer("centre", centre.clone())
        self.register_buffer("bank", (bank.detach() - centre).clone())
        self.register_buffer("bank_norms", self.bank.square().sum(1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z - self.centre
        d2 = z.square().sum(1, keepdim=True) - 2 * z @ self.bank.T + self.bank_norms
        nearest = self.bank[torch.topk(d2, self.neighbours, dim=1, largest=False).indices]  # (N, k, L)
        return (z[:, None, :] - nearest).square().sum(2).mean(1)


class DensityScore(nn.Module):
    """Patches -> distance of their code to the bank; with `own`, plus the method's score, each over its spread.

    `own` is the method's scoring module; it must offer `score_latent(z, patches)`, its score from the code
    the shared `encoder` already computed, so the encoder runs once.
    """

    def __init__(
        self,
        encoder: nn.Module,
        nearest: NearestDistance,
        own: nn.Module | None = None,
        spreads: tuple[float, float] = (1.0, 1.0),
    ):
        super().__init__()
        self.encoder, self.nearest, self.own = encoder, nearest, own
        self.register_buffer("spreads", torch.tensor(spreads, dtype=torch.float32))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        z = self.encoder(patches)
        density = self.nearest(z.flatten(1))
        if self.own is None:
            return density
        return self.own.score_latent(z, patches) / self.spreads[0] + density / self.spreads[1]


@torch.no_grad()
def spread(module: nn.Module, patches: np.ndarray, batch_size: int = 4096) -> float:
    module.eval()
    scores = torch.cat([module(as_float(patches[i : i + batch_size])) for i in range(0, len(patches), batch_size)])
    scores = scores.numpy().astype(np.float64)
    return max(float(np.quantile(scores, 0.99) - np.median(scores)), 1e-12)


def density_scorer(
    own: nn.Module,
    encoder: nn.Module,
    train: np.ndarray,
    val: np.ndarray,
    bank_size: int,
    neighbours: int,
    fused: bool,
    rng: np.random.Generator,
) -> tuple[DensityScore, dict]:
    """The density (or fused) scoring module over a coreset of the training patches' codes, and its card entry."""
    codes = latents_of(encoder, train)
    bank = codes[torch.from_numpy(k_center_coreset(codes, bank_size, rng))]
    nearest = NearestDistance(bank, neighbours)
    density = DensityScore(encoder, nearest)
    details = {"bank": int(len(bank)), "latent": int(bank.shape[1]), "neighbours": neighbours, "fused": fused}
    if not fused:
        return density, details
    held_out = val if len(val) else train  # unseen patches: the bank's own codes sit at distance 0
    spreads = (spread(own, held_out), spread(density, held_out))
    details["spreads"] = {"own": spreads[0], "density": spreads[1], "on": "validation" if len(val) else "training"}
    log.info("fused score: own / %.4g + density / %.4g", *spreads)
    return DensityScore(encoder, nearest, own, spreads), details
