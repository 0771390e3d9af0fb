"""Networks shared by the trainers."""

from __future__ import annotations

import torch
from torch import nn


class ConvAutoencoder(nn.Module):
    """Convolutional autoencoder for S x S patches (S = 30 by default).

    Encoder: three stride-2 convolutions (30 -> 15 -> 8 -> 4) and a linear map to a
    ReLU'd latent (NRE's R_A is this latent). Decoder mirrors it and ends in a
    sigmoid, since inputs are pixels in [0, 1]. It outputs `out_channels`
    (default: as many as it takes), so it can also map one set of channels to
    another (training/crossmodal.py).
    """

    def __init__(
        self,
        channels: int,
        widths: tuple[int, int, int] = (16, 32, 64),
        latent: int = 64,
        size: int = 30,
        out_channels: int | None = None,
    ):
        super().__init__()
        if size != 30:
            raise ValueError("ConvAutoencoder is built for 30x30 patches")
        a, b, c = widths
        out_channels = out_channels or channels
        self.config = {"channels": channels, "widths": list(widths), "latent": latent, "size": size}
        if out_channels != channels:
            self.config["out_channels"] = out_channels
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, a, 4, stride=2, padding=1),  # 15x15
            nn.ReLU(),
            nn.Conv2d(a, b, 3, stride=2, padding=1),  # 8x8
            nn.ReLU(),
            nn.Conv2d(b, c, 3, stride=2, padding=1),  # 4x4
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(c * 16, latent),
            nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent, c * 16),
            nn.ReLU(),
            nn.Unflatten(1, (c, 4, 4)),
            nn.ConvTranspose2d(c, b, 3, stride=2, padding=1, output_padding=1),  # 8x8
            nn.ReLU(),
            nn.ConvTranspose2d(b, a, 3, stride=2, padding=1),  # 15x15
            nn.ReLU(),
            nn.ConvTranspose2d(a, out_channels, 4, stride=2, padding=1),  # 30x30
            nn.Sigmoid(),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class ReconstructionScore(nn.Module):
    """Patch batch -> mean squared reconstruction error per patch: the exported scoring graph."""

    def __init__(self, autoencoder: nn.Module):
        super().__init__()
        self.autoencoder = autoencoder

    def score_latent(self, z: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """The score from the code the encoder gave (training/density.py shares one encoder pass)."""
        error = self.autoencoder.decoder(z) - patches
        return error.square().flatten(1).mean(dim=1)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.score_latent(self.autoencoder.encoder(patches), patches)
