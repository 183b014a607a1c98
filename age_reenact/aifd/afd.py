"""Attention-based feature decomposition (MTLFace's `fsm`): split backbone maps into identity and age parts.

One attention σ(X) = ½(channel attention + spatial attention) multiplies the maps; the two published
versions differ in what that attended part means (paper-systems.md §3.3):

- "cvpr" (CVPR 2021 code, and the target paper's eq. 1): X_age = X∘σ(X), X_id = X − X_age; the
  channel attention reads the *sum* of average- and max-pooled spatial pyramids.
- "tpami" (the TPAMI package, whose weights are released): X_id = X∘σ(X), X_age = X − X_id; the
  channel attention reads their *concatenation* (twice the input width of its first 1x1 conv).

Either way X_id + X_age = X exactly. `fold_for_inference()` serves loaders (training keeps the layers as they are).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

AFD_VARIANTS = ("cvpr", "tpami")


def pyramid_pool(x: torch.Tensor, bins: Sequence[int], pool) -> torch.Tensor:
    """[B, C, H, W] -> [B, C * Σ bins², 1, 1]: each bin grid pooled and flattened channel-major, in order."""
    return torch.cat([pool(x, size).flatten(1) for size in bins], 1)[..., None, None]


class AttentionDecomposition(nn.Module):
    """`spatial` (7x7 conv over [max, mean] across channels) and `channel` (pyramid-pooled MLP) attention."""

    def __init__(self, channels: int = 512, variant: str = "cvpr", bins: Sequence[int] = (1, 2, 3), reduction: int = 16):
        super().__init__()
        if variant not in AFD_VARIANTS:
            raise ValueError(f"AFD variant must be one of {AFD_VARIANTS}, got {variant!r}")
        self.variant, self.bins = variant, tuple(bins)
        pooled = channels * sum(b * b for b in bins) * (2 if variant == "tpami" else 1)
        # momentum 0.01: both official versions average the attention BNs' statistics slowly.
        self.spatial = nn.Sequential(nn.Conv2d(2, 1, 7, 1, 3, bias=False), nn.BatchNorm2d(1, momentum=0.01), nn.Sigmoid())
        self.channel = nn.Sequential(
            nn.Conv2d(pooled, pooled // reduction, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(pooled // reduction, channels, 1, bias=False),
            nn.BatchNorm2d(channels, momentum=0.01),
            nn.Sigmoid(),
        )

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """σ(X) in (0, 1), broadcastable to x: [B, C, H, W]."""
        average, maximum = pyramid_pool(x, self.bins, F.adaptive_avg_pool2d), pyramid_pool(x, self.bins, F.adaptive_max_pool2d)
        pooled = torch.cat([average, maximum], 1) if self.variant == "tpami" else average + maximum
        spatial = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)
        return 0.5 * (self.channel(pooled) + self.spatial(spatial))

    def fold_for_inference(self) -> AttentionDecomposition:
        """The inference form, in place (needs eval mode): each BN folded into the convolution before it, and the
        channel MLP's 1x1 convolutions, which see a 1x1 map, run as linear layers (in bf16 oneDNN runs that 1x1
        convolution 7x slower than the same linear: 20 of 127 ms at batch 1). Returns self."""
        squeeze, relu, excite, bn, sigmoid = self.channel
        self.channel = nn.Sequential(nn.Flatten(), _as_linear(squeeze), relu, _as_linear(fuse_conv_bn_eval(excite, bn)), sigmoid, nn.Unflatten(1, (-1, 1, 1)))
        conv, bn, sigmoid = self.spatial
        self.spatial = nn.Sequential(fuse_conv_bn_eval(conv, bn), sigmoid)
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone maps -> (x_id, x_age), which sum to x."""
        attended = x * self.attention(x)
        if self.variant == "tpami":
            return attended, x - attended
        return x - attended, attended


def _as_linear(conv: nn.Conv2d) -> nn.Linear:
    """A 1x1 convolution's weights as a linear layer on the flattened [B, C] vector."""
    linear = nn.Linear(conv.in_channels, conv.out_channels, bias=conv.bias is not None, device=conv.weight.device)
    linear.weight.data = conv.weight.detach().flatten(1).clone()
    if conv.bias is not None:
        linear.bias.data = conv.bias.detach().clone()
    return linear
