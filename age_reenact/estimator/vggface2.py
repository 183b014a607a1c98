"""AgeTransGAN's own age estimator: VGGFace2 ResNet-50 "ft" in the Caffe-converted layout.

Layer names follow the converted Caffe model (`conv1_7x7_s2`, `conv2_1_1x1_reduce`, `..._bn`,
`conv5_3_1x1_increase_bn`), with the age head `classage` (1x1 conv 2048 -> 101, ages 0..100). The
identity classifier (`classifier`, 8631 classes) and the unused `classgage`/`fc` heads are dropped on
conversion. Input: BGR, raw 0..255 floats, 224x224 (the lab's test code does not subtract its mean).
"""
from __future__ import annotations

import torch
from torch import nn

from ..weights import WeightsError, register_architecture, register_converter

STAGES = ((2, 3, 64), (3, 4, 128), (4, 6, 256), (5, 3, 512))  # (stage, blocks, bottleneck width)
DROPPED_HEADS = ("classifier.", "classgage.", "fc.")


def _conv_bn(module: nn.Module, name: str, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
    setattr(module, name, nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False))
    setattr(module, f"{name}_bn", nn.BatchNorm2d(cout))


@register_architecture("vggface2_age_resnet50")
class VGGFace2AgeResNet50(nn.Module):
    def __init__(self, num_ages: int = 101):
        super().__init__()
        _conv_bn(self, "conv1_7x7_s2", 3, 64, 7, 2)
        self.pool = nn.MaxPool2d(3, 2, 0, ceil_mode=True)
        self.blocks = []
        cin = 64
        for stage, count, width in STAGES:
            for i in range(1, count + 1):
                prefix = f"conv{stage}_{i}"
                stride = 2 if (i == 1 and stage > 2) else 1  # Caffe strides in the 1x1 reduce
                _conv_bn(self, f"{prefix}_1x1_reduce", cin, width, 1, stride)
                _conv_bn(self, f"{prefix}_3x3", width, width, 3)
                _conv_bn(self, f"{prefix}_1x1_increase", width, width * 4, 1)
                if i == 1:
                    _conv_bn(self, f"{prefix}_1x1_proj", cin, width * 4, 1, stride)
                self.blocks.append(prefix)
                cin = width * 4
        self.classage = nn.Conv2d(2048, num_ages, 1)
        self.register_buffer("ages", torch.arange(num_ages, dtype=torch.float32), persistent=False)

    def _cbr(self, name: str, x: torch.Tensor, relu: bool = True) -> torch.Tensor:
        x = getattr(self, f"{name}_bn")(getattr(self, name)(x))
        return torch.relu(x) if relu else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self._cbr("conv1_7x7_s2", x))
        for prefix in self.blocks:
            out = self._cbr(f"{prefix}_1x1_reduce", x)
            out = self._cbr(f"{prefix}_3x3", out)
            out = self._cbr(f"{prefix}_1x1_increase", out, relu=False)
            skip = self._cbr(f"{prefix}_1x1_proj", x, relu=False) if hasattr(self, f"{prefix}_1x1_proj") else x
            x = torch.relu(out + skip)
        x = torch.nn.functional.adaptive_avg_pool2d(x, 1)  # pool5_7x7_s1 at 224 px
        return self.classage(x).flatten(1)


VGGFACE2_PREPROCESSING = {"convention": "agetransgan", "size": 224, "channels": "bgr", "scale": 255.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "readout": "expectation"}


@register_converter("agetransgan_age_estimator", "AgeTransGAN's VGGFace2 ResNet-50 age estimator (plain state_dict of Resnet50_ft)")
def convert_vggface2(checkpoint: dict) -> tuple[dict, str, dict, dict, list[str]]:
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"expected the estimator's state_dict, got {type(checkpoint).__name__}.")
    state_dict = checkpoint.get("state_dict", checkpoint)
    converted, left_out = {}, set()
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.startswith(DROPPED_HEADS):
            left_out.add(key.rsplit(".", 1)[0])
            continue
        converted[key] = value
    if "classage.weight" not in converted:
        raise WeightsError(f"no age head: expected 'classage.weight' (got {sorted(converted)[:5]} ...).")
    num_ages = converted["classage.weight"].shape[0]
    # Older checkpoints predate BatchNorm's step counter; it does not affect inference.
    for key in [k for k in converted if k.endswith("_bn.running_mean")]:
        converted.setdefault(key.replace("running_mean", "num_batches_tracked"), torch.tensor(0))
    return converted, "vggface2_age_resnet50", {"num_ages": num_ages}, VGGFACE2_PREPROCESSING, sorted(left_out)
