"""Converter from the age-estimation benchmark's checkpoints (Paplham & Franc) to `age_resnet`.

Their model keeps the torchvision backbone under `model.*` and the 102-class head under `heads.age`; the
training checkpoints wrap it in `model_state_dict`.
"""
from __future__ import annotations

from ..weights import WeightsError, register_converter

RESNET_LAYOUTS = {  # torchvision depth -> (block, layers)
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
BENCHMARK_PREPROCESSING = {"convention": "agetransgan", "size": 256, "channels": "rgb", "scale": 1.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "readout": "median"}


@register_converter("benchmark_age_resnet", "Facial-Age-Estimation-Benchmark ResNet checkpoint (model.* backbone, heads.age)")
def convert_benchmark(checkpoint: dict) -> tuple[dict, str, dict, dict, list[str]]:
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"expected the benchmark's checkpoint dict, got {type(checkpoint).__name__}.")
    state_dict = checkpoint.get("model_state_dict", checkpoint)
    # A training checkpoint's optimiser, scaler and history, and heads other than age, are not needed.
    left_out = sorted(str(k) for k in checkpoint if k != "model_state_dict") if state_dict is not checkpoint else []
    converted = {}
    for key, value in state_dict.items():
        if key.startswith("model.") and not key.startswith("model.fc."):
            converted["backbone." + key.removeprefix("model.")] = value
        elif key.startswith("heads.age."):
            converted["head." + key.removeprefix("heads.age.")] = value
        elif key.startswith(("heads.", "model.fc.")):
            left_out.append(key.rsplit(".", 1)[0])
        else:  # unknown: kept under its name, so the strict check refuses it by name
            converted[key] = value
    if "head.weight" not in converted:
        raise WeightsError(f"no age head: expected 'heads.age.weight' (got {sorted(state_dict)[:5]} ...).")
    counts = [len({k.split(".")[2] for k in converted if k.startswith(f"backbone.layer{i}.")}) for i in range(1, 5)]
    block = "bottleneck" if any(".conv3." in k for k in converted) else "basic"
    depth = next((d for d, layout in RESNET_LAYOUTS.items() if layout == (block, tuple(counts))), None)
    if depth is None:
        raise WeightsError(f"not a torchvision ResNet layout: {block} blocks {counts}")
    config = {
        "block": block,
        "layers": counts,
        "widths": [64, 128, 256, 512],
        "stem_width": 64,
        "num_ages": int(converted["head.weight"].shape[0]),
        "norm": "batch",
    }
    return converted, "age_resnet", config, BENCHMARK_PREPROCESSING, sorted(set(left_out))
