"""StyleGAN2 building blocks in plain PyTorch, with the parameter and buffer names of the official code.

Every module computes in the dtype of its input activations (fp32, bf16 or fp16): weights are cast on
the fly (and cached while gradients are off), while style vectors and demodulation factors stay fp32.
The resampling filter (`upfirdn2d`) and the fused leaky ReLU are exact pure-torch equivalents of the
official CUDA ops, so no extension is needed.

Speed: at 1024 px most of the time goes to element-wise passes over large activations, not to convs.
So each conv layer takes an output `gain` and folds it, its bias and the activation's sqrt(2) into the
conv (leaky ReLU is positively homogeneous: leaky(g * y) = g * leaky(y)), leaving one in-place leaky
ReLU (and, in styled convs, one in-place noise add) per layer. The results equal the official
formulas up to float rounding.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

BLUR_KERNEL = (1, 3, 3, 1)
LEAKY_SLOPE = 0.2
LEAKY_GAIN = math.sqrt(2.0)


def make_kernel(taps: Sequence[float]) -> torch.Tensor:
    """Separable FIR taps -> normalised 2D kernel (outer product, sums to 1)."""
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


def cached(module: nn.Module, name: str, source: torch.Tensor, key: tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`make()` memoised on `module` while gradients are off (inference), keyed on the source tensor's
    identity, version and device plus `key`, so loading new weights or moving the model invalidates it.
    Saves re-casting and re-scaling every weight on every forward (a third of a bf16 run at 256 px)."""
    if torch.is_grad_enabled():
        return make()
    # Tensors made under inference_mode (ComfyUI runs prompts in it) have no version counter.
    version = -1 if source.is_inference() else source._version
    full_key = (source.data_ptr(), version, source.device, *key)
    hit = module.__dict__.get(name)  # a plain attribute: never part of the state_dict
    if hit is None or hit[0] != full_key:
        hit = (full_key, make())
        module.__dict__[name] = hit
    return hit[1]


def upfirdn2d(
    x: torch.Tensor,
    kernel: torch.Tensor,
    up: int = 1,
    down: int = 1,
    pad: tuple[int, int] = (0, 0),
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Zero-insert upsample by `up`, pad (before, after) on both axes, convolve with `kernel`, keep every
    `down`-th pixel: StyleGAN2's upfirdn2d, as one depthwise convolution (plus an optional per-channel
    bias added by the same call)."""
    b, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(b, c, h, 1, w, 1), (0, up - 1, 0, 0, 0, up - 1)).reshape(b, c, h * up, w * up)
    padding = pad[0]
    if pad[0] != pad[1]:  # the conv pads symmetric cases itself, without an extra copy
        x, padding = F.pad(x, (pad[0], pad[1], pad[0], pad[1])), 0
    weight = torch.flip(kernel, (0, 1)).to(x.dtype)[None, None].expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, bias, stride=down, padding=padding, groups=c)


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-channel bias, leaky ReLU 0.2, gain sqrt(2) (the official fused op)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return F.leaky_relu(x + bias.to(x.dtype).view(shape), LEAKY_SLOPE) * LEAKY_GAIN


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class FusedLeakyReLU(nn.Module):
    """Holds the bias of a biased leaky ReLU; conv layers fold it into their conv call."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias)


class Blur(nn.Module):
    def __init__(self, pad: tuple[int, int], upsample_factor: int = 1, taps: Sequence[float] = BLUR_KERNEL):
        super().__init__()
        # After a stride-2 transposed conv the kernel is scaled by factor^2 to keep the signal's gain.
        self.register_buffer("kernel", make_kernel(taps) * upsample_factor**2)
        self.pad = pad

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None, stride: int = 1) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, down=stride, pad=self.pad, bias=bias)


class Upsample(nn.Module):
    def __init__(self, factor: int = 2, taps: Sequence[float] = BLUR_KERNEL):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(taps) * factor**2)
        p = len(taps) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class EqualConv2d(nn.Module):
    """Conv with the equalised learning rate: the stored weight is scaled by 1/sqrt(fan_in) at run time."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None, gain: float = 1.0, stride: int | None = None) -> torch.Tensor:
        """gain * conv(x) (+ gain * bias: this conv's own, or `bias` given by a following activation)."""
        weight = cached(self, "_weight", self.weight, (x.dtype, gain), lambda: (self.weight * (self.scale * gain)).to(x.dtype))
        bias = self.bias if bias is None else bias
        bias = None if bias is None else (bias * gain).to(x.dtype)
        return F.conv2d(x, weight, bias, stride=self.stride if stride is None else stride, padding=self.padding)


class EqualLinear(nn.Module):
    """Linear with the equalised learning rate; `lr_mul` scales weight and bias (the mapping network's 0.01)."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class ConvLayer(nn.Sequential):
    """[Blur], EqualConv2d, [FusedLeakyReLU]: Sequential indices give the official key names
    (`.0.kernel/.1.weight/.2.bias` when downsampling, `.0.weight/.1.bias` otherwise)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, downsample: bool = False, activate: bool = True):
        layers: list[nn.Module] = []
        if downsample:
            p = len(BLUR_KERNEL) - 2 + kernel_size - 1
            layers.append(Blur(pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        # With an activation the bias lives in FusedLeakyReLU; the skip branch (no activation) has none.
        layers.append(EqualConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False))
        if activate:
            layers.append(FusedLeakyReLU(out_channels))
        super().__init__(*layers)
        self.downsample, self.activate = downsample, activate

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        conv = self[1] if self.downsample else self[0]
        stride = None
        if self.downsample:
            # Before a 1x1 stride-2 conv only every other blurred pixel is used: blur with stride 2 instead.
            pointwise = conv.weight.shape[-1] == 1
            x = self[0](x, stride=2 if pointwise else 1)
            stride = 1 if pointwise else None
        if not self.activate:
            return conv(x, gain=gain, stride=stride)
        return F.leaky_relu_(conv(x, self[-1].bias, gain * LEAKY_GAIN, stride), LEAKY_SLOPE)


class ResBlock(nn.Module):
    """Residual block (conv3x3, conv3x3 [stride 2], 1x1 skip without bias), output scaled by 1/sqrt(2).

    downsample=True is the official `ResBlock` (encoder and age branch), False its `ResBlockS` (identity branch).
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: bool = True):
        super().__init__()
        self.conv1 = ConvLayer(in_channels, in_channels, 3)
        self.conv2 = ConvLayer(in_channels, out_channels, 3, downsample=downsample)
        self.skip = ConvLayer(in_channels, out_channels, 1, downsample=downsample, activate=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = 1.0 / math.sqrt(2.0)
        # Added into the skip's raw conv output: autograd keeps the leaky ReLU's result, not the conv's.
        return self.skip(x, gain=half).add_(self.conv2(self.conv1(x), gain=half))


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution: per-sample weights w * s, demodulated by d = rsqrt(sum (w * s)^2).

    Two exact forms of the same result, chosen by size: where one sample's activations outnumber the
    weights (the large, high-resolution maps), the weights are modulated per sample, as in the official
    code, and the conv runs sample by sample, so no pass over the activations is added; elsewhere the
    activations are scaled instead, conv(x * s, w) * d, one batched conv with the shared weight.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int, demodulate: bool = True, upsample: bool = False):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.upsample, self.demodulate = upsample, demodulate
        if upsample:
            p = len(BLUR_KERNEL) - 2 - (kernel_size - 1)
            self.blur = Blur(pad=((p + 1) // 2 + 1, p // 2 + 1), upsample_factor=2)
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.upsample:  # transposed conv wants [in, out, k, k]; the blur adds the bias
            return self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2), bias)
        return F.conv2d(x, weight, bias, padding=self.padding)

    def _energy(self) -> torch.Tensor:
        """sum over the kernel window of the scaled weight squared, [out, in]: d = rsqrt(s^2 @ energy^T)."""
        return (self.weight[0].float() * self.scale).pow(2).sum((2, 3))

    def forward(self, x: torch.Tensor, style: torch.Tensor, bias: torch.Tensor | None = None, gain: float = 1.0) -> torch.Tensor:
        """gain * (modulated conv(x) + bias)."""
        with torch.autocast(x.device.type, enabled=False):  # style and demodulation stay fp32
            s = self.modulation(style.float())  # [B, in]
            d = torch.full((len(x), self.out_channels), gain, device=x.device)
            if self.demodulate:
                energy = cached(self, "_energy_cache", self.weight, (), self._energy)
                d = d * torch.rsqrt(s.pow(2) @ energy.t() + 1e-8)  # [B, out]
        bias = None if bias is None else (bias * gain).to(x.dtype)
        # fp16 always takes the weight form: x * s before demodulation could overflow its range.
        if self.weight[0].numel() < x[0].numel() or x.dtype == torch.float16:
            weights = self.weight[0].float() * self.scale * s[:, None, :, None, None] * d[:, :, None, None, None]
            weights = weights.to(x.dtype)
            outs = [self._conv(x[i : i + 1], weights[i], bias) for i in range(len(x))]
            return outs[0] if len(outs) == 1 else torch.cat(outs)
        weight = cached(self, "_weight", self.weight, (x.dtype,), lambda: (self.weight[0] * self.scale).to(x.dtype))
        out = self._conv(x * s.to(x.dtype)[:, :, None, None], weight, None).mul_(d.to(x.dtype)[:, :, None, None])
        return out if bias is None else out.add_(bias[:, None, None])


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        """Adds gain * weight * noise to x in place (x is the fresh output of the conv before it)."""
        return x.add_(noise.to(x.dtype) * (self.weight * gain).to(x.dtype))


class StyledConv(nn.Module):
    """Modulated conv, noise, biased leaky ReLU (the official order), with bias and sqrt(2) folded into the conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int, upsample: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, kernel_size, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        out = self.conv(x, style, self.activate.bias, LEAKY_GAIN)
        return F.leaky_relu_(self.noise(out, noise, LEAKY_GAIN), LEAKY_SLOPE)


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB (no demodulation), added to the upsampled RGB skip of the previous scale.
    `channels` 1 makes the residual generator's mask and detail-gain heads (see AgeTransGANGenerator)."""

    def __init__(self, in_channels: int, style_dim: int, upsample: bool = True, channels: int = 3):
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ModulatedConv2d(in_channels, channels, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style, self.bias.view(-1))
        return out if skip is None else out.add_(self.upsample(skip))
