"""Stacked denoising autoencoder (Xie et al., DEC's network): d-500-500-2000-b, fully connected.

ReLU everywhere except at the bottleneck and the output, which are linear.
Trained in two stages, with inputs corrupted by dropout:
  1. greedy layer-wise: layer i is a one-hidden-layer denoising autoencoder on the
     (clean) codes of the already trained layers below it;
  2. end to end: the whole encoder and decoder on corrupted patches, pixel MSE.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import SDAEConfig
from .loops import as_float, fit


class SDAE(nn.Module):
    def __init__(self, inputs: int, hidden: tuple[int, ...] = (500, 500, 2000), bottleneck: int = 10):
        super().__init__()
        dims = [inputs, *hidden, bottleneck]
        self.config = {"inputs": inputs, "hidden": list(hidden), "bottleneck": bottleneck}
        self.encoders = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.decoders = nn.ModuleList(nn.Linear(b, a) for a, b in zip(dims[:-1], dims[1:]))

    @property
    def depth(self) -> int:
        return len(self.encoders)

    def encode_layer(self, i: int, h: torch.Tensor) -> torch.Tensor:
        h = self.encoders[i](h)
        return h if i == self.depth - 1 else F.relu(h)  # linear bottleneck

    def decode_layer(self, i: int, h: torch.Tensor) -> torch.Tensor:
        h = self.decoders[i](h)
        return h if i == 0 else F.relu(h)  # linear output

    def encode(self, x: torch.Tensor, layers: int | None = None) -> torch.Tensor:
        """Patches (N, C, S, S) -> codes of the first `layers` encoder layers (all: the bottleneck)."""
        h = x.flatten(1)
        for i in range(self.depth if layers is None else layers):
            h = self.encode_layer(i, h)
        return h

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        for i in reversed(range(self.depth)):
            z = self.decode_layer(i, z)
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)).view_as(x)


class SDAEEncoder(nn.Module):
    """Patches -> bottleneck codes: the graph `vad select` encodes with."""

    def __init__(self, sdae: SDAE):
        super().__init__()
        self.sdae = sdae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sdae.encode(x)


def layer_loss(sdae: SDAE, layer: int, patches: np.ndarray, dropout: float):
    """Denoising reconstruction of layer `layer`'s input codes by that layer alone."""

    def loss(idx: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            h = sdae.encode(as_float(patches[idx]), layers=layer)
        noisy = F.dropout(h, dropout, training=sdae.encoders[layer].training)  # clean when validating
        return (sdae.decode_layer(layer, sdae.encode_layer(layer, noisy)) - h).square().mean()

    return loss


def finetune_loss(sdae: SDAE, patches: np.ndarray, dropout: float):
    def loss(idx: np.ndarray) -> torch.Tensor:
        x = as_float(patches[idx])
        return (sdae(F.dropout(x, dropout, training=sdae.training)) - x).square().mean()

    return loss


def train_sdae(
    cfg: SDAEConfig,
    inputs: int,
    train: np.ndarray,
    val: np.ndarray,
    rng: np.random.Generator,
    progress: bool = True,
) -> tuple[SDAE, dict]:
    """Greedy layer-wise pre-training then end-to-end fine-tuning; validation loss picks each stage's epoch."""
    sdae = SDAE(inputs, tuple(cfg.hidden), cfg.bottleneck)
    shared = dict(batch_size=cfg.batch_size, rng=rng, n_val=len(val), progress=progress)
    history = {"pretrain": []}
    for layer in range(sdae.depth):
        pair = nn.ModuleList([sdae.encoders[layer], sdae.decoders[layer]])  # the weights this stage trains
        history["pretrain"].append(
            fit(
                pair,
                layer_loss(sdae, layer, train, cfg.dropout),
                len(train),
                epochs=cfg.pretrain_epochs,
                optimizer=torch.optim.Adam(pair.parameters(), lr=cfg.lr),
                val_loss_fn=layer_loss(sdae, layer, val, cfg.dropout),
                desc=f"sdae layer {layer + 1}/{sdae.depth}",
                **shared,
            )
        )
    history["finetune"] = fit(
        sdae,
        finetune_loss(sdae, train, cfg.dropout),
        len(train),
        epochs=cfg.finetune_epochs,
        optimizer=torch.optim.Adam(sdae.parameters(), lr=cfg.lr),
        val_loss_fn=finetune_loss(sdae, val, cfg.dropout),
        desc="sdae fine-tune",
        **shared,
    )
    sdae.eval()
    return sdae, history


def save_sdae(sdae: SDAE, history: dict, path: Path) -> None:
    """Weights as plain arrays in an .npz (no pickle), with the layer sizes and training history as JSON."""
    arrays = {f"state.{name}": tensor.numpy() for name, tensor in sdae.state_dict().items()}
    with open(path, "wb") as f:  # an open file: np.savez would append .npz to a path
        np.savez(f, config=np.array(json.dumps(sdae.config)), history=np.array(json.dumps(history)), **arrays)


def load_sdae(path: str | os.PathLike, inputs: int, cfg: SDAEConfig) -> tuple[SDAE, dict]:
    """An SDAE saved by `save_sdae`, checked against the layers this config asks for."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            config, history = json.loads(str(saved["config"])), json.loads(str(saved["history"]))
            state = {k[6:]: torch.from_numpy(saved[k]) for k in saved.files if k.startswith("state.")}
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot read SDAE checkpoint {path}: {e}") from None
    sdae = SDAE(inputs, tuple(cfg.hidden), cfg.bottleneck)
    if config != sdae.config:
        raise ValueError(f"SDAE checkpoint {path} holds layers {config}, the config asks for {sdae.config}")
    sdae.load_state_dict(state)
    return sdae.eval(), history


@torch.no_grad()
def encode_patches(encoder: nn.Module, patches: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """(N, b) float32 codes of uint8 patches under any patches -> codes module."""
    encoder.eval()
    return np.concatenate(
        [encoder(as_float(patches[i : i + batch_size])).numpy() for i in range(0, len(patches), batch_size)]
    )
