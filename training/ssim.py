"""SSIM between patches and their reconstructions (Wang et al. 2004), in torch.

Gaussian window (sigma 1.5), the standard constants C1 = (0.01 L)^2 and
C2 = (0.03 L)^2 for pixels in [0, 1] (L = 1), 'valid' windows only (a 30x30
patch with a 7-pixel window has 24x24 of them). A multi-channel patch's SSIM is
the mean over its channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

C1 = 0.01**2
C2 = 0.03**2


def gaussian_window(size: int, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> torch.Tensor:
    """(N,) mean SSIM of (N, C, H, W) batches in [0, 1]."""
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"ssim needs two (N, C, H, W) batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    channels = a.shape[1]
    kernel = gaussian_window(window).to(a.dtype).expand(channels, 1, window, window)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, kernel, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + C1) * (2 * cov + C2)) / ((mu_a**2 + mu_b**2 + C1) * (var_a + var_b + C2))
    return index.flatten(2).mean(2).mean(1)
