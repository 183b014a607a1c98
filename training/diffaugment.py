"""DiffAugment (Zhao, Liu, Lin, Zhu, Han: "Differentiable Augmentation for Data-Efficient GAN Training",
NeurIPS 2020): random, differentiable transforms of everything a GAN's discriminator reads.

Real and generated images alike go through them, in the discriminator's step and in the generator's: the
discriminator cannot memorise a small set of real faces, and since generated faces are augmented too the
generator gains nothing by producing augmented-looking faces. The transforms are differentiable, so the
generator's gradient passes through them. Each image of a batch draws its own parameters from the given
generator (the step's, so a resumed run draws the same). Images are in [-1, 1]; the policies are the paper's:

    color        brightness + U(-0.5, 0.5), saturation x U(0, 2), contrast x U(0.5, 1.5)
    translation  shift by up to 1/8 of the side, zeros shifted in
    cutout       a square of half the side set to zero
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")


def parse_policy(text: str) -> tuple[str, ...]:
    """'color,translation,cutout' -> its policies, in order; '' -> none."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in POLICIES]
    if unknown:
        raise ValueError(f"unknown DiffAugment policy {', '.join(unknown)}; choose from {', '.join(POLICIES)}")
    return names


def _uniform(x: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator).to(x.device, x.dtype)


def _color(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    per_image = (len(x), 1, 1, 1)
    x = x + _uniform(x, per_image, generator) - 0.5
    grey = x.mean(1, keepdim=True)
    x = (x - grey) * (_uniform(x, per_image, generator) * 2) + grey
    mean = x.mean((1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(x, per_image, generator) + 0.5) + mean


def _translation(x: torch.Tensor, generator: torch.Generator | None, ratio: float = 0.125) -> torch.Tensor:
    b, _, h, w = x.shape
    reach_y, reach_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-reach_y, reach_y + 1, (b, 1, 1), generator=generator)
    dx = torch.randint(-reach_x, reach_x + 1, (b, 1, 1), generator=generator)
    # Output pixel (i, j) reads input (i - dy, j - dx); reads from outside land on the zero border of the padding.
    rows = (torch.arange(h)[None, :, None] - dy + 1).clamp(0, h + 1).to(x.device)
    cols = (torch.arange(w)[None, None, :] - dx + 1).clamp(0, w + 1).to(x.device)
    padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)
    return padded[torch.arange(b, device=x.device)[:, None, None], rows, cols].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, generator: torch.Generator | None, ratio: float = 0.5) -> torch.Tensor:
    b, _, h, w = x.shape
    size_y, size_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
    # The square's centre is anywhere in the image, so it may hang over an edge (as in the paper).
    top = torch.randint(0, h, (b, 1, 1), generator=generator) - size_y // 2
    left = torch.randint(0, w, (b, 1, 1), generator=generator) - size_x // 2
    ys, xs = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    inside = (ys >= top) & (ys < top + size_y) & (xs >= left) & (xs < left + size_x)
    return x * (~inside)[:, None].to(x.device, x.dtype)


_TRANSFORMS = {"color": _color, "translation": _translation, "cutout": _cutout}


def diff_augment(x: torch.Tensor, policy: Sequence[str], generator: torch.Generator | None = None) -> torch.Tensor:
    """Images [B, C, H, W] in [-1, 1] through the policies' random transforms, in order (no policy: x itself)."""
    for name in policy:
        x = _TRANSFORMS[name](x, generator)
    return x
