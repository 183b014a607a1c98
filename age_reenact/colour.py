"""Colour rules for what models trained on colour faces give back: a black-and-white face stays black-and-white."""
from __future__ import annotations

import torch

from .filters import gaussian_blur

GREY_SPREAD = (3 / 255, 10 / 255)  # channel spread (max - min) at which a region starts / stops counting as grey
LIT = 0.1  # darker pixels (and the black outside a photo) say nothing about colour: their spread is small anyway
LUMA = (0.299, 0.587, 0.114)  # Rec. 601


def keep_colourless(sources: torch.Tensor, outputs: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """Outputs [B, H, W, 3] in 0..1 made grey where their sources (float [B, H, W, 3], same shape) are grey.

    Models trained on colour faces tint black-and-white photos (AgeTransGAN's old groups turn them cyan). Each
    region follows the channel spread of its lit neighbours (Gaussian `sigma` px), so a grey face pasted into a
    colour frame turns grey beside colour hair; regions with no lit neighbour (dark ones, or the black outside
    the photo) follow the crop's lit pixels overall. Colour regions keep the model's colours exactly.
    """
    if sources.shape != outputs.shape or sources.ndim != 4 or sources.shape[-1] != 3:
        raise ValueError(f"sources and outputs must both be [B, H, W, 3]; got {tuple(sources.shape)} and {tuple(outputs.shape)}")
    sources = sources.to(outputs.device, torch.float32)  # bf16 cannot resolve a spread of 3/255
    spread = (sources.amax(-1) - sources.amin(-1))[:, None]
    lit = (sources.amax(-1) > LIT)[:, None].float()
    overall = (spread * lit).flatten(1).sum(1) / lit.flatten(1).sum(1).clamp(min=1)
    neighbours = gaussian_blur(lit, sigma)
    local = gaussian_blur(spread * lit, sigma) / neighbours.clamp(min=1e-6)
    local = torch.where(neighbours > 0.05, local, overall[:, None, None, None].expand_as(local))
    lo, hi = GREY_SPREAD
    colour = ((local - lo) / (hi - lo)).clamp(0, 1)[:, 0, ..., None]
    if bool((colour == 1).all()):
        return outputs
    values = outputs.float()
    luma = (values @ torch.tensor(LUMA, dtype=values.dtype, device=values.device))[..., None]
    return (luma + colour * (values - luma)).to(outputs.dtype)
