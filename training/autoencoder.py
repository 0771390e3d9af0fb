"""The plain convolutional autoencoder: pixel MSE on normal patches.

It is the baseline method (`vad train ae`) and NRE's pre-trained network A.
"""

from __future__ import annotations

import numpy as np
import torch

from .config import AutoencoderConfig
from .loops import as_float, fit
from .nets import ConvAutoencoder


def reconstruction_loss(model: torch.nn.Module, patches: np.ndarray):
    def loss(idx: np.ndarray) -> torch.Tensor:
        x = as_float(patches[idx])
        return (model(x) - x).square().mean()

    return loss


def train_autoencoder(
    cfg: AutoencoderConfig,
    channels: int,
    train: np.ndarray,
    val: np.ndarray,
    rng: np.random.Generator,
    progress: bool = True,
    desc: str = "autoencoder",
) -> tuple[ConvAutoencoder, list[dict]]:
    model = ConvAutoencoder(channels, tuple(cfg.widths), cfg.latent)
    history = fit(
        model,
        reconstruction_loss(model, train),
        len(train),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        optimizer=torch.optim.Adam(model.parameters(), lr=cfg.lr),
        rng=rng,
        val_loss_fn=reconstruction_loss(model, val),
        n_val=len(val),
        desc=desc,
        progress=progress,
    )
    return model, history
