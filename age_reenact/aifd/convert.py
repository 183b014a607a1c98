"""Converter from MTLFace's released TPAMI checkpoint (`mtlface_checkpoints.tar`) to an AIFD encoder file.

The release is a plain state_dict of the whole MTLFace model (encoder, StyleGAN2 decoder, aging
modules, age estimator). E_A needs only the identity encoder (`encoder.input_layer`, `block1..4`,
`fsm`, `output_layer`) and the age head (`age_estimator.*`); the synthesis parts are dropped.
Usage: `age-reenact convert mtlface_tpami mtlface_checkpoints.tar weights/aifd/mtlface_tpami.safetensors`.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from ..weights import WeightsError, load_state_dict_strict, register_converter
from .backbone import STAGES
from .encoder import ARCHITECTURE, PREPROCESSING, AIFDEncoder

ENCODER_PARTS = ("input_layer", "fsm", "output_layer", *(f"block{i}" for i in range(1, STAGES + 1)))


def _encoder_key(key: str) -> str | None:
    """Official key -> our key, or None for the parts E_A does not use."""
    if key.startswith("age_estimator."):
        return key
    if key.startswith("encoder.") and key.split(".")[1] in ENCODER_PARTS:
        return key[len("encoder.") :]
    return None


def _config(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Read the layout off the tensor shapes, so IR variants other than IR-50 convert too."""
    depth = [1 + max(int(k.split(".")[1]) for k in state if k.startswith(f"block{i}.")) for i in range(1, STAGES + 1)]
    widths = [int(state[f"block{i}.0.res_layer.1.weight"].shape[0]) for i in range(1, STAGES + 1)]
    embedding_dim, flat = state["output_layer.3.weight"].shape
    spatial = round((flat / widths[-1]) ** 0.5)
    return {
        "depth": depth,
        "widths": widths,
        "embedding_dim": int(embedding_dim),
        "afd_variant": "tpami",
        "input_size": 16 * spatial,
        "num_age_classes": int(state["age_estimator.age_output_layer.4.weight"].shape[0]),
        "num_age_groups": int(state["age_estimator.group_output_layer.weight"].shape[0]),
    }


@register_converter("mtlface_tpami", "MTLFace TPAMI release (mtlface_checkpoints.tar) -> AIFD identity encoder + age head")
def convert_mtlface_tpami(checkpoint: Any) -> tuple[dict[str, torch.Tensor], str, dict, dict]:
    if not isinstance(checkpoint, Mapping) or "encoder.input_layer.0.weight" not in checkpoint:
        keys = list(checkpoint)[:5] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise WeightsError(
            f"not MTLFace's TPAMI checkpoint: expected a plain state_dict with 'encoder.input_layer.0.weight' (got {keys}). "
            "Use the released mtlface_checkpoints.tar."
        )
    state = {new: value for key, value in checkpoint.items() if (new := _encoder_key(key)) is not None}
    missing = [k for k in ("age_estimator.group_output_layer.weight", "output_layer.3.weight") if k not in state]
    if missing:
        raise WeightsError(f"the MTLFace checkpoint lacks {missing}; it is incomplete or not the TPAMI release.")
    config = _config(state)
    # Fail here, with the full list of mismatches, rather than when the converted file is first loaded.
    load_state_dict_strict(AIFDEncoder(**config), state, source="the MTLFace TPAMI checkpoint")
    return state, ARCHITECTURE, config, PREPROCESSING
