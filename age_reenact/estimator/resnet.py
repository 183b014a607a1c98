"""Configurable ResNet age estimator with an age-distribution head (torchvision's module names).

One class serves the project's small CPU estimator (basic blocks, narrow widths, 64-224 px input) and the
age-estimation benchmark's ResNet-50 layout (bottlenecks, `heads.age` of 102 classes), so both load into
the same code. The head scores ages 0..num_ages-1; see `predict.py` for the readouts.
"""
from __future__ import annotations

import torch
from torch import nn

from ..weights import register_architecture


def _norm(kind: str, channels: int) -> nn.Module:
    # GroupNorm makes outputs independent of how a batch is split across processes.
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(min(32, channels // 4), channels)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = _norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _norm(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), _norm(norm, planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, norm: str):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = _norm(norm, planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = _norm(norm, out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), _norm(norm, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNetBackbone(nn.Module):
    def __init__(self, block: str, layers: list[int], widths: list[int], stem_width: int, norm: str):
        super().__init__()
        block_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
        self.conv1 = nn.Conv2d(3, stem_width, 7, 2, 3, bias=False)
        self.bn1 = _norm(norm, stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = stem_width
        for index, (count, width) in enumerate(zip(layers, widths)):
            blocks = []
            for i in range(count):
                blocks.append(block_cls(inplanes, width, 2 if (i == 0 and index > 0) else 1, norm))
                inplanes = width * block_cls.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.out_features = inplanes
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for index in range(self.num_stages):
            x = getattr(self, f"layer{index + 1}")(x)
        return torch.flatten(self.avgpool(x), 1)


@register_architecture("age_resnet")
class AgeResNet(nn.Module):
    """ResNet backbone + linear head over ages 0..num_ages-1 (logits)."""

    def __init__(
        self,
        block: str = "basic",
        layers: tuple[int, ...] = (2, 2, 2, 2),
        widths: tuple[int, ...] = (32, 64, 128, 256),
        stem_width: int = 32,
        num_ages: int = 102,
        norm: str = "batch",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.backbone = ResNetBackbone(block, list(layers), list(widths), stem_width, norm)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.backbone.out_features, num_ages)
        self.register_buffer("ages", torch.arange(num_ages, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x)))
