"""RFG, the reenacted face generator of the dual-generator reenactor (a modified StarGAN v2).

`generator` draws a face from a landmark sketch and a style code; `style_encoder` computes that style
code from the source face. Attribute names and shapes match the official `generator` / `style_encoder`
entries of `*_nets_ema.ckpt`, so official weights load unchanged (see convert.py). At the official
256 px the channel widths are 2**14 // size = 64 at full resolution, doubling per level up to 512, and
the generator works down to 16x16; `base_channels` / `max_conv_dim` shrink it for CPU-sized models.

`fold_for_inference()` rewrites a loaded RFG into an inference form that computes the same function (within
fp32 rounding) in two thirds of the multiply-adds, channels_last throughout: 1.8-2.2x faster on the
development CPU (docs/results/speed_official_cpu.md). Loaders call it once; training never does.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn


WARP_LOGIT_EPS = 1e-3  # the warped face's values are clamped into [eps, 1 - eps] before the logit
SQRT_HALF = math.sqrt(0.5)  # both residual blocks scale their sum by it (unit variance)
# Per axis, a 3-tap kernel becomes 4 taps (rows) from the 3 old ones (columns) for (a) the convolution then the
# 2x average pool, run as one convolution at stride 2, and (b) 2x nearest upsampling then the convolution, run
# as one transposed convolution at stride 2 (taps in transposed-convolution order).
_POOLED_TAPS = torch.tensor([[1.0, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 1]]) / 2
_UPSAMPLED_TAPS = torch.tensor([[0.0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]])


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

    `source_warp` (a project option; official checkpoints never have it): the generator also takes the source
    face warped to the sketch's landmarks (warp.py) as three more input channels, and its output is a
    correction of that face in logit space, sigmoid(to_rgb(x) + logit(warped)). `to_rgb` starts at zero, so
    a new generator returns the warped source: the source's identity is there from the first step.
    """

    def __init__(self, size: int = 256, style_dim: int = 128, base_channels: int | None = None, max_conv_dim: int = 512, source_warp: bool = False):
        super().__init__()
        dim_in = base_channels or 2**14 // size
        self.source_warp = source_warp
        self.from_rgb = nn.Conv2d(6 if source_warp else 3, dim_in, 3, 1, 1)
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
        if source_warp:
            nn.init.zeros_(self.to_rgb[2].weight)
            nn.init.zeros_(self.to_rgb[2].bias)

    def forward(self, sketch: torch.Tensor, style: torch.Tensor, warped: torch.Tensor | None = None) -> torch.Tensor:
        """warped: the source face warped to the sketch's landmarks [B, 3, S, S], for `source_warp` generators only."""
        if self.source_warp != (warped is not None):
            raise ValueError("a source_warp generator needs the warped source face, and only it takes one.")
        # In the weights' dtype: a folded generator may hold bf16 weights (fp32 ones make these no-ops).
        dtype = self.from_rgb.weight.dtype
        x = self.from_rgb(torch.cat([sketch, warped], 1).to(dtype) if self.source_warp else sketch.to(dtype))
        style = style.to(x.dtype)
        for block in self.encode:
            x = block(x)
        for block in self.decode:
            x = block(x, style)
        x = self.to_rgb(x)
        if self.source_warp:  # in fp32: in bf16, 1 - eps rounds to 1 and the logit of bright pixels to infinity
            x = x.float() + torch.logit(warped.float(), eps=WARP_LOGIT_EPS)
        return torch.sigmoid(x)

    def fold_for_inference(self) -> Generator:
        """This generator's inference form, in place (see _FoldedResBlk, _FoldedAdainResBlk); returns it.

        For loaders only: the folded tensors are no longer the parameters the state_dict names, so the result
        neither trains nor saves as a generator.
        """
        self.encode = nn.ModuleList(_FoldedResBlk(block) for block in self.encode)
        self.decode = nn.ModuleList(_FoldedAdainResBlk(block) for block in self.decode)
        norm, _, conv = self.to_rgb
        self.to_rgb = _FoldedToRgb(norm, conv)
        del self.to_rgb_lm  # forward never reads it
        return self.requires_grad_(False).to(memory_format=torch.channels_last)


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
        return self.fc(self.shared(image.to(self.fc.weight.dtype)).flatten(1))

    def fold_for_inference(self) -> StyleEncoder:
        """This encoder's inference form, in place (its ResBlks folded as the generator's); returns it. Loaders only."""
        self.shared = nn.Sequential(*(_FoldedResBlk(m) if isinstance(m, ResBlk) else m for m in self.shared))
        return self.requires_grad_(False).to(memory_format=torch.channels_last)


class ReenactedFaceGenerator(nn.Module):
    """The RFG stage: `generator` and `style_encoder`, named as in the official checkpoint."""

    def __init__(self, size: int = 256, style_dim: int = 128, base_channels: int | None = None, max_conv_dim: int = 512, source_warp: bool = False):
        super().__init__()
        self.generator = Generator(size, style_dim, base_channels, max_conv_dim, source_warp)
        self.style_encoder = StyleEncoder(size, style_dim, base_channels, max_conv_dim)

    def fold_for_inference(self) -> ReenactedFaceGenerator:
        """Both networks' inference forms, in place (module docstring); returns self. Loaders only."""
        self.generator.fold_for_inference()
        self.style_encoder.fold_for_inference()
        return self.eval()


# Inference forms (fold_for_inference). They run on whatever memory layout they get; the folds make them
# channels_last, where oneDNN convolutions skip a reorder per call and the per-sample norms read maps in place.


def _instance_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Instance norm of x [B, C, H, W] with an affine weight and bias of [C] or, per sample, [B, C].

    Per sample it is a training-mode batch norm, whose CPU kernel reads channels_last maps as they are
    (F.instance_norm copies them to NCHW and back: 2x slower here). Its statistics sum in another order than
    instance norm's: up to 2e-5 apart on 256x256 maps, still fp32 rounding.
    """
    weight, bias = weight.expand(len(x), -1), bias.expand(len(x), -1)
    out = [F.batch_norm(x[i : i + 1], None, None, weight[i], bias[i], True, 0.0, eps) for i in range(len(x))]
    return out[0] if len(out) == 1 else torch.cat(out)


def _folded_conv(conv: nn.Conv2d, taps: torch.Tensor, transposed: bool) -> nn.Module:
    """A 3x3 convolution (padding 1) merged with a 2x resampling into one 4x4 (transposed) convolution at stride 2."""
    taps = taps.to(conv.weight)
    weight = torch.einsum("ya,xb,oiab->oiyx", taps, taps, conv.weight.detach())
    folded = (nn.ConvTranspose2d if transposed else nn.Conv2d)(conv.in_channels, conv.out_channels, 4, 2, 1, device=conv.weight.device)
    folded.weight.data = weight.transpose(0, 1).contiguous() if transposed else weight  # transposed: [in, out, 4, 4]
    folded.bias.data = conv.bias.detach().clone()
    return folded


def _scaled(conv: nn.Conv2d) -> nn.Conv2d:
    """A copy of conv whose output is SQRT_HALF times the original's."""
    scaled = copy.deepcopy(conv)
    scaled.weight.data.mul_(SQRT_HALF)
    if scaled.bias is not None:
        scaled.bias.data.mul_(SQRT_HALF)
    return scaled


class _FoldedResBlk(nn.Module):
    """A ResBlk's inference form: conv1 and the average pool after it are one 4x4 convolution at stride 2
    (16 instead of 36 multiply-adds an output pixel), the shortcut pools before its 1x1 convolution instead of
    after it, and the sum's 1/sqrt(2) sits in conv2 and conv1x1."""

    def __init__(self, block: ResBlk):
        super().__init__()
        self.downsample = block.downsample
        self.norm1 = block.norm1 if block.normalize else None
        self.norm2 = block.norm2 if block.normalize else None
        self.conv1 = _folded_conv(block.conv1, _POOLED_TAPS, transposed=False) if block.downsample else block.conv1
        self.conv2 = _scaled(block.conv2)
        self.conv1x1 = _scaled(block.conv1x1) if hasattr(block, "conv1x1") else None

    def _norm(self, x: torch.Tensor, norm: nn.InstanceNorm2d | None) -> torch.Tensor:
        return x if norm is None else _instance_norm(x, norm.weight, norm.bias, norm.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._norm(x, self.norm1)
        h = self.conv1(F.leaky_relu(x, 0.2) if h is x else F.leaky_relu_(h, 0.2))  # never in place on x: the shortcut reads it
        h = self.conv2(F.leaky_relu_(self._norm(h, self.norm2), 0.2))
        shortcut = F.avg_pool2d(x, 2) if self.downsample else x
        if self.conv1x1 is None:
            return h.add_(shortcut, alpha=SQRT_HALF)
        return h.add_(self.conv1x1(shortcut))


class _FoldedAdainResBlk(nn.Module):
    """An AdainResBlk's inference form: the 2x nearest upsampling and conv1 are one 4x4 transposed convolution
    at stride 2 (16 instead of 36 multiply-adds an output pixel), the shortcut's 1x1 convolution runs before
    its upsampling, which becomes a broadcast add, and the sum's 1/sqrt(2) sits in conv2 and conv1x1."""

    def __init__(self, block: AdainResBlk):
        super().__init__()
        self.upsample = block.upsample
        self.norm1, self.norm2 = block.norm1, block.norm2
        self.conv1 = _folded_conv(block.conv1, _UPSAMPLED_TAPS, transposed=True) if block.upsample else block.conv1
        self.conv2 = _scaled(block.conv2)
        self.conv1x1 = _scaled(block.conv1x1) if hasattr(block, "conv1x1") else None

    @staticmethod
    def _adain(x: torch.Tensor, adain: AdaIN, s: torch.Tensor) -> torch.Tensor:
        gamma, beta = adain.fc(s).chunk(2, dim=1)
        return F.leaky_relu_(_instance_norm(x, 1 + gamma, beta, adain.norm.eps), 0.2)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        h = self.conv2(self._adain(self.conv1(self._adain(x, self.norm1, s)), self.norm2, s))
        shortcut, alpha = (x, SQRT_HALF) if self.conv1x1 is None else (self.conv1x1(x), 1.0)
        if not self.upsample:
            return h.add_(shortcut, alpha=alpha)
        # Nearest upsampling as a view of h in 2x2 blocks, each taking its shortcut pixel: never materialised.
        height, width = shortcut.shape[-2:]
        h.unflatten(3, (width, 2)).unflatten(2, (height, 2)).add_(shortcut[:, :, :, None, :, None], alpha=alpha)
        return h


class _FoldedToRgb(nn.Module):
    """to_rgb's inference form: instance norm, leaky ReLU, 1x1 convolution."""

    def __init__(self, norm: nn.InstanceNorm2d, conv: nn.Conv2d):
        super().__init__()
        self.norm, self.conv = norm, conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.leaky_relu_(_instance_norm(x, self.norm.weight, self.norm.bias, self.norm.eps), 0.2))
