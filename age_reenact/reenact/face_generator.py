"""RFG, the reenacted face generator of the dual-generator reenactor (a modified StarGAN v2).

`generator` draws a face from a landmark sketch and a style code; `style_encoder` computes that style
code from the source face. Attribute names and shapes match the official `generator` / `style_encoder`
entries of `*_nets_ema.ckpt`, so official weights load unchanged (see convert.py). At the official
256 px the channel widths are 2**14 // size = 64 at full resolution, doubling per level up to 512, and
the generator works down to 16x16; `base_channels` / `max_conv_dim` shrink it for CPU-sized models.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _levels(size: int, stop: int) -> int:
    """Number of 2x resolution steps from `size` down to `stop` px."""
    if size < stop or size & (size - 1):
        raise ValueError(f"reenactor size must be a power of two of at least {stop} px, got {size}.")
    return int(math.log2(size // stop))


class ResBlk(nn.Module):
    """Pre-activation residual block with optional instance norm and 2x average-pool downsampling."""

    def __init__(self, dim_in: int, dim_out: int, normalize: bool = False, downsample: bool = False):
        super().__init__()
        self.normalize = normalize
        self.downsample = downsample
        self.conv1 = nn.Conv2d(dim_in, dim_in, 3, 1, 1)
        self.conv2 = nn.Conv2d(dim_in, dim_out, 3, 1, 1)
        if normalize:
            self.norm1 = nn.InstanceNorm2d(dim_in, affine=True)
            self.norm2 = nn.InstanceNorm2d(dim_in, affine=True)
        if dim_in != dim_out:
            self.conv1x1 = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=False)

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "conv1x1"):
            x = self.conv1x1(x)
        return F.avg_pool2d(x, 2) if self.downsample else x

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = self.norm1(x)
        x = self.conv1(F.leaky_relu(x, 0.2))
        if self.downsample:
            x = F.avg_pool2d(x, 2)
        if self.normalize:
            x = self.norm2(x)
        return self.conv2(F.leaky_relu(x, 0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self._shortcut(x) + self._residual(x)) / math.sqrt(2)  # keeps unit variance


class AdaIN(nn.Module):
    """Instance norm whose scale and shift come from the style code: (1 + gamma) * IN(x) + beta."""

    def __init__(self, style_dim: int, num_features: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(num_features, affine=False)
        self.fc = nn.Linear(style_dim, num_features * 2)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.fc(s)[:, :, None, None].chunk(2, dim=1)
        return (1 + gamma) * self.norm(x) + beta


class AdainResBlk(nn.Module):
    """Residual block modulated by AdaIN, with optional nearest-neighbour 2x upsampling."""

    def __init__(self, dim_in: int, dim_out: int, style_dim: int, upsample: bool = False):
        super().__init__()
        self.upsample = upsample
        self.conv1 = nn.Conv2d(dim_in, dim_out, 3, 1, 1)
        self.conv2 = nn.Conv2d(dim_out, dim_out, 3, 1, 1)
        self.norm1 = AdaIN(style_dim, dim_in)
        self.norm2 = AdaIN(style_dim, dim_out)
        if dim_in != dim_out:
            self.conv1x1 = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=False)

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv1x1(x) if hasattr(self, "conv1x1") else x

    def _residual(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.norm1(x, s), 0.2)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = F.leaky_relu(self.norm2(self.conv1(x), s), 0.2)
        return self.conv2(x)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return (self._residual(x, s) + self._shortcut(x)) / math.sqrt(2)


def _to_rgb(channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.InstanceNorm2d(channels, affine=True), nn.LeakyReLU(0.2), nn.Conv2d(channels, out_channels, 1, 1, 0))


class Generator(nn.Module):
    """Sketch [B, 3, S, S] in 0..1 + style [B, style_dim] -> face [B, 3, S, S] in 0..1.

    Encoder: ResBlks with instance norm, each halving the resolution down to 16x16. Decoder: four AdaIN
    blocks at 16x16, then one upsampling AdaIN block per encoder level (mirrored widths).
    """

    def __init__(self, size: int = 256, style_dim: int = 128, base_channels: int | None = None, max_conv_dim: int = 512):
        super().__init__()
        dim_in = base_channels or 2**14 // size
        self.from_rgb = nn.Conv2d(3, dim_in, 3, 1, 1)
        self.encode = nn.ModuleList()
        self.decode = nn.ModuleList()
        self.to_rgb = _to_rgb(dim_in, 3)
        # Present (and trained on nothing) in the official generator; kept so its weights load strictly.
        self.to_rgb_lm = _to_rgb(dim_in, 4)
        for _ in range(_levels(size, 16)):
            dim_out = min(dim_in * 2, max_conv_dim)
            self.encode.append(ResBlk(dim_in, dim_out, normalize=True, downsample=True))
            self.decode.insert(0, AdainResBlk(dim_out, dim_in, style_dim, upsample=True))
            dim_in = dim_out
        for _ in range(4):
            self.decode.insert(0, AdainResBlk(dim_in, dim_in, style_dim))

    def forward(self, sketch: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        x = self.from_rgb(sketch)
        for block in self.encode:
            x = block(x)
        for block in self.decode:
            x = block(x, style)
        return torch.sigmoid(self.to_rgb(x))


class StyleEncoder(nn.Module):
    """Source face [B, 3, S, S] in 0..1 -> style code [B, style_dim] (one head; StarGAN v2 had one per domain)."""

    def __init__(self, size: int = 256, style_dim: int = 128, base_channels: int | None = None, max_conv_dim: int = 512):
        super().__init__()
        dim_in = base_channels or 2**14 // size
        blocks: list[nn.Module] = [nn.Conv2d(3, dim_in, 3, 1, 1)]
        for _ in range(_levels(size, 4)):
            dim_out = min(dim_in * 2, max_conv_dim)
            blocks.append(ResBlk(dim_in, dim_out, downsample=True))
            dim_in = dim_out
        blocks += [nn.LeakyReLU(0.2), nn.Conv2d(dim_in, dim_in, 4, 1, 0), nn.LeakyReLU(0.2)]
        self.shared = nn.Sequential(*blocks)
        self.fc = nn.Linear(dim_in, style_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(self.shared(image).flatten(1))


class ReenactedFaceGenerator(nn.Module):
    """The RFG stage: `generator` and `style_encoder`, named as in the official checkpoint."""

    def __init__(self, size: int = 256, style_dim: int = 128, base_channels: int | None = None, max_conv_dim: int = 512):
        super().__init__()
        self.generator = Generator(size, style_dim, base_channels, max_conv_dim)
        self.style_encoder = StyleEncoder(size, style_dim, base_channels, max_conv_dim)
