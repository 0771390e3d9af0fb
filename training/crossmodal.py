"""Appearance -> motion: a network that predicts a patch's motion channels from its look (after Nguyen & Meunier).

Trained on normal video only, a convolutional encoder-decoder (the
autoencoder section's widths and latent) takes the appearance channel I_t
and outputs the patch's other channels (speed bands, and the signed or
context channels where the patch spec has them). What a walker looks like
implies how its pixels move; a shape never seen moving in training (a
bicycle, a board) gets a motion the network could not predict. Score: the
mean squared error of the predicted motion channels. One frame in, so the
network cannot read motion off a frame difference: it has to infer it from
the look.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .config import AutoencoderConfig
from .loops import as_float, fit
from .nets import ConvAutoencoder


class AppearanceEncoder(nn.Module):
    """Patches -> the code of their appearance channel (channel 0)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.encoder(patches[:, :1])


class CrossModalScore(nn.Module):
    """Patches -> mean squared error of their channels 1.. as predicted from channel 0: the exported graph."""

    def __init__(self, network: ConvAutoencoder):
        super().__init__()
        self.network = network
        self.encoder = AppearanceEncoder(network.encoder)

    def score_latent(self, z: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        error = self.network.decoder(z) - patches[:, 1:]
        return error.square().flatten(1).mean(dim=1)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.score_latent(self.encoder(patches), patches)


def train_crossmodal(
    cfg: AutoencoderConfig,
    channels: int,
    train: np.ndarray,
    val: np.ndarray,
    rng: np.random.Generator,
    progress: bool = True,
) -> tuple[CrossModalScore, list[dict]]:
    if channels < 2:
        raise ValueError("the appearance -> motion network needs an appearance channel and motion channels")
    score = CrossModalScore(ConvAutoencoder(1, tuple(cfg.widths), cfg.latent, out_channels=channels - 1))

    def loss(patches: np.ndarray):
        return lambda idx: score(as_float(patches[idx])).mean()

    history = fit(
        score,
        loss(train),
        len(train),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        optimizer=torch.optim.Adam(score.parameters(), lr=cfg.lr),
        rng=rng,
        val_loss_fn=loss(val),
        n_val=len(val),
        desc="appearance -> motion",
        progress=progress,
    )
    return score, history
