"""Low-pass filters of [B, C, H, W] tensors: Gaussian blur (paste-back masks, photo degradation, the prototype
guide) and a round trip through a lower resolution (photo degradation, the estimator's low-pass view)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_blur(images: torch.Tensor, sigma: float, padding: str = "replicate") -> torch.Tensor:
    """Each channel blurred with a Gaussian of `sigma` px (kernel radius 3 sigma); `padding` is F.pad's mode."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).view(1, 1, 1, -1).repeat(images.shape[1], 1, 1, 1)
    padded = F.pad(images, (radius, radius, radius, radius), mode=padding)
    rows = F.conv2d(padded, kernel, groups=images.shape[1])
    return F.conv2d(rows, kernel.transpose(2, 3), groups=images.shape[1])


def through_resolution(images: torch.Tensor, small: int) -> torch.Tensor:
    """The images as a `small` px photo shows them: resized down (antialiased) and back to their size (bilinear)."""
    size = tuple(images.shape[-2:])
    down = F.interpolate(images, size=(small, small), mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(down, size=size, mode="bilinear", align_corners=False)
