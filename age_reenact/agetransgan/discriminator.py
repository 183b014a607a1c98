"""The AgeTransGAN discriminator for training: a conditional multitask projection (CMP) discriminator.

The official release has no discriminator; the paper describes one with four sub-networks for multi-layer
feature extraction, an embedded age classifier C_a, and the target label fused by projection. This is
that design built from the generator's StyleGAN2 blocks, with the same size / width config:

    image [-1, 1] -> from_rgb -> stages[0..3] (stride-2 residual blocks, size -> 4x4)
    each stage -> a feature vector (mean-pooled and projected; the last one through minibatch stddev,
    a 3x3 conv and a linear layer, as StyleGAN2's head) -> phi = concatenation of the four
    score = adversarial(phi) + <phi, code @ embed> / sqrt(dim)   (projection of the age code)
    logits = classifier(phi)                                     (C_a over the age groups)

Age codes may be soft (between groups): the projection is linear in the code.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..weights import register_architecture
from .generator import SIZES, channel_widths
from .layers import ConvLayer, EqualLinear, ResBlock

STAGES = 4


def minibatch_stddev(x: torch.Tensor, group: int) -> torch.Tensor:
    """StyleGAN2's extra feature plane: the std of each feature over a group of samples, averaged.

    The group is the largest divisor of the batch not above `group`, so any batch size works."""
    b, c, h, w = x.shape
    g = max(d for d in range(1, min(group, b) + 1) if b % d == 0)
    y = x.float().view(g, -1, c, h, w)
    std = (y.var(0, unbiased=False) + 1e-8).sqrt().mean((1, 2, 3))  # [B / g]
    plane = std.repeat(g)[:, None, None, None].expand(b, 1, h, w)
    return torch.cat([x, plane.to(x.dtype)], 1)


@register_architecture("agetransgan_discriminator")
class AgeTransGANDiscriminator(nn.Module):
    """Config: size (64..1024), group (age groups), width (channels at <= 32 px; the official generator's
    512), channel_multiplier (widths above 32 px, as the generator), feature_dim (per stage; default
    width), stddev_group (minibatch-stddev group)."""

    def __init__(self, size: int = 1024, group: int = 10, width: int = 512, channel_multiplier: float = 2, feature_dim: int | None = None, stddev_group: int = 4):
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"discriminator size must be one of {SIZES}, got {size}")
        if group < 2:
            raise ValueError(f"the discriminator needs at least 2 age groups, got {group}")
        self.size, self.group, self.stddev_group = size, group, stddev_group
        self.feature_dim = feature_dim = feature_dim or width
        ch = channel_widths(size, width, channel_multiplier)
        self.from_rgb = ConvLayer(3, ch[size], 1)

        # size -> 4 px in stride-2 blocks, shared out over the four stages (extra blocks go to the first ones).
        resolutions = [2**log for log in range(int(math.log2(size)), 2, -1)]
        self.stages = nn.ModuleList()
        self.taps = nn.ModuleList()
        for part in np.array_split(np.array(resolutions), STAGES):
            self.stages.append(nn.Sequential(*(ResBlock(ch[int(r)], ch[int(r) // 2]) for r in part)))
        for part in np.array_split(np.array(resolutions), STAGES)[:-1]:
            self.taps.append(EqualLinear(ch[int(part[-1]) // 2], feature_dim, activation=True))
        self.final_conv = ConvLayer(ch[4] + 1, ch[4], 3)
        self.final_linear = EqualLinear(ch[4] * 4 * 4, feature_dim, activation=True)

        joint = STAGES * feature_dim
        self.adversarial = EqualLinear(joint, 1)
        self.classifier = EqualLinear(joint, group)
        self.embed = nn.Parameter(torch.randn(group, joint))

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Multi-layer features phi [B, 4 * feature_dim] (fp32)."""
        x = self.from_rgb(image)
        pooled = []
        for stage, tap in zip(self.stages, self.taps):
            x = stage(x)
            pooled.append(tap(x.float().mean((2, 3))))
        x = self.final_conv(minibatch_stddev(self.stages[-1](x), self.stddev_group))
        pooled.append(self.final_linear(x.float().flatten(1)))
        return torch.cat(pooled, 1)

    def forward(self, image: torch.Tensor, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image [B, 3, size, size] in [-1, 1], age code [B, group] -> (realness score [B], age logits [B, group])."""
        if code.shape != (len(image), self.group):
            raise ValueError(f"age code must be [{len(image)}, {self.group}], got {tuple(code.shape)}")
        phi = self.features(image)
        with torch.autocast(image.device.type, enabled=False):  # the heads are tiny; keep their sums exact
            phi = phi.float()
            projection = (phi * (code.float() @ self.embed)).sum(1) / math.sqrt(phi.shape[1])
            return self.adversarial(phi)[:, 0] + projection, self.classifier(phi)
