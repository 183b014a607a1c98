"""Official AgeTransGAN checkpoints -> this pack's safetensors, and `load_generator` for either kind of file.

The official files (`ffhq_10group_*.pt`, `ffhq_4group_750k.pt`) are `torch.save` dicts whose generator is
under 'g_ema'. Its config is read back from the tensor shapes, so one converter serves every release.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from ..age_groups import groups_for
from ..weights import Weights, WeightsError, build_model, load_checkpoint, read_weights, register_converter
from .generator import AgeTransGANGenerator

ARCHITECTURE = "agetransgan_generator"
OFFICIAL_SUFFIXES = (".pt", ".pth", ".ckpt")
log = logging.getLogger(__name__)


def _generator_state_dict(checkpoint: Any) -> dict[str, torch.Tensor]:
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"an AgeTransGAN checkpoint is a dict holding 'g_ema'; got {type(checkpoint).__name__}.")
    state = checkpoint.get("g_ema", checkpoint)  # also accept a bare generator state_dict
    if not isinstance(state, dict) or "convs_e.0.0.weight" not in {k.removeprefix("module.") for k in state}:
        raise WeightsError(
            "no AgeTransGAN generator found: expected the official dict with a 'g_ema' state_dict "
            f"(top-level keys: {sorted(map(str, checkpoint))[:8]})."
        )
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def infer_config(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Generator config from tensor shapes: groups from the stem's input planes, size from the number of
    decoder scales, widths from the stem (lr_mlp cannot be seen in the weights: the official 0.01)."""
    stem = state_dict["convs_e.0.0.weight"]
    style_dim = int(state_dict["style.1.weight"].shape[0])
    n_mlp = len({m.group(1) for k in state_dict if (m := re.match(r"style\.(\d+)\.weight$", k))})
    scales = len({m.group(1) for k in state_dict if (m := re.match(r"to_rgbs\.(\d+)\.bias$", k))})
    size = 2 ** (scales + 4)
    multiplier = stem.shape[0] * size / (style_dim * 32)
    config = {
        "size": size,
        "group": int(stem.shape[1]) - 3,
        "style_dim": style_dim,
        "n_mlp": n_mlp,
        "channel_multiplier": int(multiplier) if float(multiplier).is_integer() else multiplier,
        "lr_mlp": 0.01,
    }
    if "to_mask.bias" in state_dict:  # this pack's residual training option; official files never have it
        config["residual_output"] = True
    if "to_gain.bias" in state_dict:
        config["detail_gain"] = True
    return config


def preprocessing_for(config: dict[str, Any]) -> dict[str, Any]:
    groups = groups_for(config["group"])
    return {
        "crop_convention": "agetransgan",
        "size": config["size"],
        "input_range": [-1.0, 1.0],
        "age_groups": groups.name,
        "group_names": list(groups.names),
    }


def official_weights(checkpoint: Any, path: Path | None = None) -> Weights:
    state_dict = {k: v.float().contiguous() for k, v in _generator_state_dict(checkpoint).items()}
    try:
        config = infer_config(state_dict)
    except (KeyError, IndexError) as exc:
        raise WeightsError(f"{path or 'checkpoint'}: an incomplete AgeTransGAN generator (no {exc}).") from exc
    return Weights(state_dict, ARCHITECTURE, config, preprocessing_for(config), path=path)


@register_converter("agetransgan", "official AgeTransGAN generator (.pt dict with 'g_ema', 10 or 4 groups)")
def convert_official(checkpoint: Any) -> tuple[dict[str, torch.Tensor], str, dict, dict, list[str]]:
    weights = official_weights(checkpoint)
    # The trainer's other entries (g, d, their optimisers, args) are not needed to age a face.
    left_out = sorted(str(k) for k in checkpoint if k != "g_ema") if "g_ema" in checkpoint else []
    return weights.state_dict, weights.architecture, weights.config, weights.preprocessing, left_out


def load_generator(path: str | Path) -> AgeTransGANGenerator:
    """A ready (eval) generator from a converted .safetensors file or, converted in memory, an official .pt."""
    path = Path(path)
    if path.suffix.lower() in OFFICIAL_SUFFIXES:
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path}")
        log.warning(
            "%s is an official checkpoint, converted in memory on every load; convert it once with "
            "`age-reenact convert agetransgan %s %s` and load the .safetensors instead.",
            path.name, path.name, path.with_suffix(".safetensors").name,
        )
        return build_model(official_weights(load_checkpoint(path), path))
    return build_model(read_weights(path, ARCHITECTURE))
