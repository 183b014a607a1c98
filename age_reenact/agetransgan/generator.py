"""The AgeTransGAN generator (Hsu et al., ECCV 2022): an encoder, an identity and an age branch, and a
StyleGAN2 decoder that starts at 16x16 from the identity map. Module, parameter and buffer names match
the official release, so its `g_ema` state_dict loads strictly.

    image [-1, 1] (+ age code as G constant planes) -> convs_e -> 16x16 features
        -> convs_ei -> identity map (the decoder's input, in place of StyleGAN2's constant)
        -> convs_es -> final_conv -> 4x4 mean -> mapping `style` -> one w for every layer
    decoder: conv1 at 16x16, then (upsample conv, conv, ToRGB) per scale up to `size`.

`residual_output` (a training-config option of this pack; official checkpoints never have it) makes the
decoder's RGB a change added to the input under a soft mask read from the last features:
    output = image + sigmoid(to_mask(features)) * rgb
so a generator trained from scratch starts at the identity map instead of a blur, and keeps the face's
identity while it learns what ageing changes (the CPU-budget recipe: docs/results/agetransgan_training.md).
`detail_gain` (with `residual_output`; also this pack's own) adds a gain map on the input's fine detail:
    output = image + sigmoid(to_mask(features)) * rgb + to_gain(features) * (image - blur(image))
so the face's own texture (wrinkles, folds, pores) can be strengthened or weakened per pixel; through the
decoder's 16x16 bottleneck a change cannot copy the input's detail at 128 px.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..filters import gaussian_blur
from ..weights import register_architecture
from .layers import ConvLayer, EqualLinear, PixelNorm, ResBlock, StyledConv, ToRGB

SIZES = (64, 128, 256, 512, 1024)
DECODER_START = 16  # the identity map's resolution
DETAIL_SIGMA = 1.0  # px: `detail_gain` scales what a Gaussian of this sigma removes (the finest skin texture)


def fine_detail(images: torch.Tensor) -> torch.Tensor:
    """What a Gaussian blur of DETAIL_SIGMA px removes from the images (their high-pass part)."""
    return images - gaussian_blur(images, DETAIL_SIGMA)


def channel_widths(size: int, style_dim: int, channel_multiplier: float) -> dict[int, int]:
    """Width per resolution. The official table (style_dim 512) is 512 up to 32 px and 16384*m/res above;
    scaling both by style_dim/512 keeps the same code for tiny CPU models."""
    widths = {}
    for log in range(2, int(math.log2(size)) + 1):
        res = 2**log
        widths[res] = style_dim if res <= 32 else max(1, int(style_dim * 32 * channel_multiplier / res))
    return widths


@register_architecture("agetransgan_generator")
class AgeTransGANGenerator(nn.Module):
    def __init__(
        self, size: int = 1024, group: int = 10, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: float = 2, lr_mlp: float = 0.01,
        residual_output: bool = False, detail_gain: bool = False,
    ):
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"AgeTransGAN size must be one of {SIZES}, got {size}")
        if group < 2:
            raise ValueError(f"AgeTransGAN needs at least 2 age groups, got {group}")
        if detail_gain and not residual_output:
            raise ValueError("detail_gain scales the input's detail, so it needs residual_output")
        self.size, self.group, self.style_dim = size, group, style_dim
        self.log_size = int(math.log2(size))
        ch = self.channels = channel_widths(size, style_dim, channel_multiplier)

        self.style = nn.Sequential(PixelNorm(), *(EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True) for _ in range(n_mlp)))

        # Encoder: 1x1 stem on RGB + age planes, then stride-2 residual blocks down to 16x16.
        encoder: list[nn.Module] = [ConvLayer(3 + group, ch[size], 1)]
        for log in range(self.log_size, 4, -1):
            encoder.append(ResBlock(ch[2**log], ch[2 ** (log - 1)]))
        self.convs_e = nn.Sequential(*encoder)
        self.convs_ei = nn.Sequential(ResBlock(ch[16], ch[16], downsample=False), ResBlock(ch[16], ch[16], downsample=False))
        self.convs_es = nn.Sequential(ResBlock(ch[16], ch[8]), ResBlock(ch[8], ch[4]))
        self.final_conv = ConvLayer(ch[4], ch[4], 3)

        self.conv1 = StyledConv(ch[16], ch[16], 3, style_dim)
        self.to_rgb1 = ToRGB(ch[16], style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_channels = ch[16]
        for log in range(5, self.log_size + 1):
            out_channels = ch[2**log]
            self.convs.append(StyledConv(in_channels, out_channels, 3, style_dim, upsample=True))
            self.convs.append(StyledConv(out_channels, out_channels, 3, style_dim))
            self.to_rgbs.append(ToRGB(out_channels, style_dim))
            in_channels = out_channels
        self.residual_output = residual_output
        if residual_output:
            self.to_mask = ToRGB(in_channels, style_dim, upsample=False, channels=1)
            # Start with no change (the output is the input) and the mask half open everywhere: against a random
            # first change, training closes the mask, and through a saturated sigmoid nothing reopens it
            # (docs/results/agetransgan_training.md).
            for head in (self.to_rgb1, *self.to_rgbs, self.to_mask):
                nn.init.zeros_(head.conv.weight)
        self.detail_gain = detail_gain
        if detail_gain:
            self.to_gain = ToRGB(in_channels, style_dim, upsample=False, channels=1)
            nn.init.zeros_(self.to_gain.conv.weight)  # gain 0: a head added to a trained generator changes nothing at first

        # The official code registers StyleGAN2's fixed-noise buffers with 4x4-start shapes that do not fit
        # this 16x16-start decoder; they are never used, only kept so official files load strictly.
        self.noises = nn.Module()
        for i in range((self.log_size - 2) * 2 + 1):
            res = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.zeros(1, 1, res, res))

    @property
    def noise_sizes(self) -> list[int]:
        """Resolution of the noise each StyledConv adds, in call order."""
        return [DECODER_START] + [2**log for log in range(5, self.log_size + 1) for _ in range(2)]

    def make_noise(self, seeds: Sequence[int], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
        """Per-layer noise for a batch, one seed per item, drawn on the CPU: a seed gives the same noise on
        every device and whatever batch the item is in."""
        per_item = []
        for seed in seeds:
            rng = torch.Generator().manual_seed(int(seed))
            per_item.append([torch.randn(1, 1, r, r, generator=rng) for r in self.noise_sizes])
        return [torch.cat(layer).to(device=device, dtype=dtype) for layer in zip(*per_item)]

    def encode_style(self, features: torch.Tensor) -> torch.Tensor:
        """16x16 encoder features -> w (fp32: the mapping network is tiny and sensitive to rounding)."""
        pooled = self.final_conv(self.convs_es(features)).float().mean((2, 3))
        with torch.autocast(features.device.type, enabled=False):
            return self.style(pooled)

    def forward(self, image: torch.Tensor, code: torch.Tensor, noise: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """image [B, 3, size, size] in [-1, 1] (its dtype is the compute dtype), code [B, group] -> [B, 3, size, size].

        noise: one tensor per StyledConv (see `make_noise`); None draws it from the global RNG, as the
        official code does.
        """
        b, _, h, w = image.shape
        if code.shape != (b, self.group):
            raise ValueError(f"age code must be [{b}, {self.group}], got {tuple(code.shape)}")
        if noise is None:
            noise = [torch.randn(b, 1, r, r, device=image.device, dtype=image.dtype) for r in self.noise_sizes]
        planes = code.to(image)[:, :, None, None].expand(b, self.group, h, w)
        x = torch.cat([image, planes], 1)
        if image.is_contiguous(memory_format=torch.channels_last):  # cat drops the layout the caller chose
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.convs_e(x)
        w_latent = self.encode_style(features)

        out = self.conv1(self.convs_ei(features), w_latent, noise[0])
        skip = self.to_rgb1(out, w_latent)
        for i, to_rgb in enumerate(self.to_rgbs):
            out = self.convs[2 * i](out, w_latent, noise[1 + 2 * i])
            out = self.convs[2 * i + 1](out, w_latent, noise[2 + 2 * i])
            skip = to_rgb(out, w_latent, skip)
        if not self.residual_output:
            return skip
        output = image + torch.sigmoid(self.to_mask(out, w_latent)) * skip
        if self.detail_gain:
            output = output + self.to_gain(out, w_latent) * fine_detail(image)
        return output
