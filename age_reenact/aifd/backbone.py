"""The IR ("improved residual") face-recognition backbone of insightface/TreB1eN, with MTLFace's names.

Attribute names and Sequential indices follow the official layout (`input_layer.0/1/2`,
`blockN.M.res_layer.0..5`, `blockN.M.shortcut_layer.0/1`, `output_layer.0/3/4`) so converted
checkpoints load strictly. The stem keeps full resolution; each of the four stages halves it, so a
112 input leaves 7x7 maps. `fold_for_inference()` folds the BNs that follow convolutions into them (loaders
only; training keeps the BNs).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

STAGES = 4
IR_UNITS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}


class BottleneckIR(nn.Module):
    """Pre-activation residual unit: BN-conv-BN-PReLU-conv(stride)-BN plus a (projected) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if in_channels == out_channels:
            # A 1x1 max-pool is a parameter-free strided subsample (official layout: no keys here).
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.PReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class FoldedBottleneckIR(nn.Module):
    """A BottleneckIR's inference form: the BNs after its convolutions folded into them, the identity
    shortcut a strided view (the 1x1 max-pool copied the maps), the sum added into conv2's output in place.
    The BN before conv1 stays: folded into a padded convolution it would change the border."""

    def __init__(self, unit: BottleneckIR):
        super().__init__()
        bn0, conv1, bn1, prelu, conv2, bn2 = unit.res_layer
        self.res_layer = nn.Sequential(bn0, fuse_conv_bn_eval(conv1, bn1), prelu, fuse_conv_bn_eval(conv2, bn2))
        self.stride = conv2.stride[0]
        projected = isinstance(unit.shortcut_layer, nn.Sequential)
        self.shortcut_layer = fuse_conv_bn_eval(*unit.shortcut_layer) if projected else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x[:, :, :: self.stride, :: self.stride] if self.shortcut_layer is None else self.shortcut_layer(x)
        return self.res_layer(x).add_(shortcut)


def ir_stage(in_channels: int, out_channels: int, units: int) -> nn.Sequential:
    """One stage: the first unit halves the resolution, the rest keep it."""
    return nn.Sequential(
        BottleneckIR(in_channels, out_channels, 2), *(BottleneckIR(out_channels, out_channels, 1) for _ in range(units - 1))
    )


def embedding_head(channels: int, spatial: int, dim: int, dropout: float) -> nn.Sequential:
    """BN2d -> flatten -> dropout -> linear -> BN1d (keys `.0`, `.3`, `.4`)."""
    head = nn.Sequential(
        nn.BatchNorm2d(channels),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(channels * spatial * spatial, dim),
        nn.BatchNorm1d(dim),
    )
    # arcface_torch (and the released TPAMI model) keep the embedding BN's scale fixed at 1.
    head[4].weight.requires_grad_(False)
    return head


def stage_units(depth: int | Sequence[int]) -> tuple[int, ...]:
    """Units per stage: a named depth (18, 34, 50, 100) or an explicit list of four counts."""
    if isinstance(depth, int):
        if depth not in IR_UNITS:
            raise ValueError(f"IR depth {depth} is not one of {sorted(IR_UNITS)}; give four unit counts instead, e.g. [1, 1, 1, 1].")
        return IR_UNITS[depth]
    return tuple(int(n) for n in depth)


class IRBackbone(nn.Module):
    """`input_layer` then `block1..4`; `depth` gives each stage's unit count and `widths` its channels."""

    def __init__(self, depth: int | Sequence[int] = 50, widths: Sequence[int] = (64, 128, 256, 512)):
        super().__init__()
        units = stage_units(depth)
        if len(units) != STAGES or len(widths) != STAGES or min(units) < 1:
            raise ValueError(f"an IR backbone has {STAGES} stages of at least one unit; got units={list(units)}, widths={list(widths)}")
        self.input_layer = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.PReLU(widths[0]))
        channels = widths[0]
        for index, (count, width) in enumerate(zip(units, widths), start=1):
            setattr(self, f"block{index}", ir_stage(channels, width, count))
            channels = width

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> the last stage's maps [B, widths[-1], S/16, S/16] (channels_last in memory)."""
        x = self.input_layer(x.contiguous(memory_format=torch.channels_last))
        for index in range(1, STAGES + 1):
            x = getattr(self, f"block{index}")(x)
        return x

    def fold_for_inference(self) -> IRBackbone:
        """This backbone's inference form, in place (FoldedBottleneckIR; the stem's BN folded too), in eval
        mode, channels_last; returns it. For loaders only: the folded tensors no longer match the state_dict."""
        self.eval()
        conv, bn, prelu = self.input_layer
        self.input_layer = nn.Sequential(fuse_conv_bn_eval(conv, bn), prelu)
        for index in range(1, STAGES + 1):
            setattr(self, f"block{index}", nn.Sequential(*map(FoldedBottleneckIR, getattr(self, f"block{index}"))))
        return self.requires_grad_(False).to(memory_format=torch.channels_last)

    def init_weights(self) -> None:
        """He init (fan-out) for convolutions and linears, identity BNs: the insightface recipe."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
