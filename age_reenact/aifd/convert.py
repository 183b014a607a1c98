"""Converters from MTLFace's checkpoints to AIFD encoder files.

- `mtlface_tpami`: the released TPAMI checkpoint (`mtlface_checkpoints.tar`), a plain state_dict of the
  whole MTLFace model (encoder, StyleGAN2 decoder, aging modules, age estimator). E_A needs only the
  identity encoder (`encoder.input_layer`, `block1..4`, `fsm`, `output_layer`) and the age head
  (`age_estimator.*`); the synthesis parts are dropped.
  `age-reenact convert mtlface_tpami mtlface_checkpoints.tar weights/aifd/mtlface_tpami.safetensors`
- `mtlface_cvpr`: a CVPR-code training run's files (`LoggerX` saves each network as `{name}-{iter}`,
  DDP-wrapped so keys start with `module.`): the backbone (AIResNet with the CVPR `fsm`) and the
  estimation network (the age head, without the TPAMI `expectation` buffer, which is added).
  `age-reenact convert mtlface_cvpr backbone-36000 estimation_network-36000 weights/aifd/mtlface_cvpr.safetensors`
- `aifd_identity`: this pack's full AIFD encoder file (a training export or either conversion above) ->
  the same encoder without its age head (config `"age_head": false`), for shipping what the identity
  embedding needs: the age head's first linear reads the whole flattened maps (3.2 M of IR-small's 8.9 M
  parameters). Tensors, dtype and preprocessing are kept; the source's provenance is kept beside the conversion's.
  `age-reenact convert aifd_identity runs/aifd/aifd_encoder.safetensors weights/aifd/agereenact_aifd_lfw.safetensors`
"""
from __future__ import annotations

from functools import partial
from typing import Any, Mapping

import torch

from ..weights import Weights, WeightsError, load_state_dict_strict, read_weights, register_converter
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


def _config(state: Mapping[str, torch.Tensor], afd_variant: str) -> dict[str, Any]:
    """Read the layout off the tensor shapes, so IR variants other than IR-50 convert too."""
    try:
        return _layout(state, afd_variant)
    except (KeyError, ValueError) as exc:
        raise WeightsError(f"cannot read the network's layout off its tensors: {exc} is missing or malformed.") from exc


def _layout(state: Mapping[str, torch.Tensor], afd_variant: str) -> dict[str, Any]:
    depth = [1 + max(int(k.split(".")[1]) for k in state if k.startswith(f"block{i}.")) for i in range(1, STAGES + 1)]
    widths = [int(state[f"block{i}.0.res_layer.1.weight"].shape[0]) for i in range(1, STAGES + 1)]
    embedding_dim, flat = state["output_layer.3.weight"].shape
    spatial = round((flat / widths[-1]) ** 0.5)
    return {
        "depth": depth,
        "widths": widths,
        "embedding_dim": int(embedding_dim),
        "afd_variant": afd_variant,
        "input_size": 16 * spatial,
        "num_age_classes": int(state["age_estimator.age_output_layer.4.weight"].shape[0]),
        "num_age_groups": int(state["age_estimator.group_output_layer.weight"].shape[0]),
    }


@register_converter("mtlface_tpami", "MTLFace TPAMI release (mtlface_checkpoints.tar) -> AIFD identity encoder + age head")
def convert_mtlface_tpami(checkpoint: Any) -> tuple[dict[str, torch.Tensor], str, dict, dict, list[str]]:
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
    config = _config(state, "tpami")
    # The synthesis parts (StyleGAN2 decoder, aging modules, style blocks), by module.
    left_out = sorted({".".join(key.split(".")[:2]) for key in checkpoint if _encoder_key(key) is None})
    return state, ARCHITECTURE, config, PREPROCESSING, left_out


def _unwrapped(checkpoint: Any, role: str, first_key: str) -> dict[str, torch.Tensor]:
    """A CVPR file's state_dict without DDP's `module.` prefix; refused unless it holds `first_key`."""
    state = {k.removeprefix("module."): v for k, v in checkpoint.items()} if isinstance(checkpoint, Mapping) else {}
    if first_key not in state:
        found = list(state)[:5] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise WeightsError(
            f"the {role} file is not an MTLFace CVPR {role} state_dict: expected '{first_key}' (with or without 'module.'), got {found}. "
            "Give the backbone file first, then the estimation_network file, both of the same iteration."
        )
    return state


@register_converter(
    "mtlface_cvpr",
    "MTLFace CVPR training files (backbone-ITER, estimation_network-ITER; module. keys) -> AIFD identity encoder + age head",
    inputs=("backbone", "estimation_network"),
)
def convert_mtlface_cvpr(backbone: Any, estimation_network: Any) -> tuple[dict[str, torch.Tensor], str, dict, dict]:
    head = {f"age_estimator.{k}": v for k, v in _unwrapped(estimation_network, "estimation_network", "group_output_layer.weight").items()}
    classes = int(head["age_estimator.group_output_layer.weight"].shape[1])
    head["age_estimator.expectation"] = torch.arange(classes, dtype=torch.float32)  # CVPR computes it in get_dex_age
    state = {**_unwrapped(backbone, "backbone", "input_layer.0.weight"), **head}
    if "output_layer.3.weight" not in state or "age_estimator.age_output_layer.4.weight" not in state:
        raise WeightsError("the backbone file lacks output_layer.3.weight or the estimation_network file lacks age_output_layer.4.weight; a file is incomplete.")
    config = _config(state, "cvpr")
    model = AIFDEncoder(**config)
    # The head first, on its own, so that every remaining mismatch is the backbone file's.
    load_state_dict_strict(model.age_estimator, {k.removeprefix("age_estimator."): v for k, v in head.items()}, source="the estimation_network file")
    load_state_dict_strict(model, state, source="the backbone file")
    return state, ARCHITECTURE, config, PREPROCESSING


@register_converter(
    "aifd_identity",
    "this pack's AIFD encoder file -> the same without its age head (identity embeddings only; a smaller file)",
    inputs=("encoder",),
    load=partial(read_weights, architecture=ARCHITECTURE),
)
def convert_aifd_identity(encoder: Weights) -> tuple[dict[str, torch.Tensor], str, dict, dict, list[str]]:
    if not encoder.config.get("age_head", True):
        raise WeightsError("the encoder file is identity-only already (config age_head: false); give the full file.")
    state = {k: v for k, v in encoder.state_dict.items() if not k.startswith("age_estimator.")}
    config = {**encoder.config, "age_head": False}
    return state, ARCHITECTURE, config, encoder.preprocessing, ["age_estimator (the age head; ages need the full file)"]
