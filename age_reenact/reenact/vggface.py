"""VGG-Face fc7 identity code: the source identity input of the official shape generator (IDSG).

The official code runs Oxford's VGG-Face (a VGG16 with 2622 classes, from pytorch-mcn's
`vgg_face_dag.pth`) in torchvision's VGG16 layout on the 0..1 RGB source crop, ImageNet-normalised,
through the convolutions, a 7x7 adaptive average pool, fc6 + ReLU and fc7 + ReLU: a 4096-d code.
The weights are not distributed with the official release; users convert their own copy once with the
`vggface_dag` converter (convert.py). fc8 (the 2622 training identities) is not needed and is dropped.
Module names follow torchvision's VGG16 (`features.0` ... `features.28`, `classifier.0`, `classifier.3`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..weights import register_architecture

# VGG16 ("D"): conv widths, "M" = 2x2 max pool. Also the order of the dag file's conv1_1 ... conv5_3.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg16_conv_indices() -> list[int]:
    """Indices of the convolutions inside `features` (conv, ReLU pairs and pools): 0, 2, 5, 7, ..."""
    indices, position = [], 0
    for item in VGG16_LAYOUT:
        if item == "M":
            position += 1
        else:
            indices.append(position)
            position += 2
    return indices


@register_architecture("vggface_fc7")
class VGGFaceIdentity(nn.Module):
    """Face crops [B, 3, H, W] in 0..1 -> fc7 identity codes [B, fc_dim] (4096 for the official weights)."""

    def __init__(self, fc_dim: int = 4096):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)
        # Dropout at index 2 keeps torchvision's numbering (fc7 = classifier.3); it is inactive in eval.
        self.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, fc_dim), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(fc_dim, fc_dim), nn.ReLU(inplace=True))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def output_dim(self) -> int:
        return self.classifier[3].out_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.features((images - self.mean) / self.std)
        return self.classifier(F.adaptive_avg_pool2d(x, 7).flatten(1))
