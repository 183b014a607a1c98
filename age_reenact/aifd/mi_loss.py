"""The target paper's MI loss (eq. 2): L_MI = 1 − cos(E_A(I_s), E_A(Î_t)), averaged over the batch.

E_A is frozen and stays in eval mode (BN running statistics, no dropout) even when the loss module
sits inside a model that is switched to training. Gradients flow through E_A into Î_t only.
Inputs are AgeTransGAN-aligned faces [B, 3, H, H] at any size; `value_range` states their values
((-1, 1) for AgeTransGAN outputs, the default; (0, 1) for IMAGE-style tensors). They are resized to 112
with antialiasing, differentiably, without re-detection.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .encoder import AIFDEncoder, load_encoder
from .similarity import SIGNED, cosine, identity_embedding

REDUCTIONS = ("mean", "none")


class MILoss(nn.Module):
    def __init__(self, encoder: AIFDEncoder, value_range: tuple[float, float] = SIGNED, flip_average: bool = False, reduction: str = "mean"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        low, high = value_range
        if not high > low:
            raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
        self.encoder = encoder.eval().requires_grad_(False)
        self.value_range, self.flip_average, self.reduction = (float(low), float(high)), flip_average, reduction

    @classmethod
    def from_file(cls, path: str | Path, **options) -> "MILoss":
        return cls(load_encoder(path), **options)

    def train(self, mode: bool = True) -> "MILoss":
        super().train(mode)
        self.encoder.eval()
        return self

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        return identity_embedding(self.encoder, faces, self.value_range, self.flip_average)

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """source I_s and generated Î_t, [B, 3, H, H] each (sizes may differ) -> scalar loss in [0, 2] (or [B])."""
        if len(source) != len(target):
            raise ValueError(f"source and target batches differ in length: {len(source)} vs {len(target)}")
        # The source is a constant reference unless the caller asked for its gradient.
        with torch.set_grad_enabled(torch.is_grad_enabled() and source.requires_grad):
            reference = self.embed(source)
        loss = 1.0 - cosine(reference, self.embed(target))
        return loss.mean() if self.reduction == "mean" else loss
