"""Converters from the official dual-generator files to the pack's safetensors files.

- `dual_generator`: the two official StarGAN v2 `CheckpointIO` files ({network name: state_dict}), as
  they are: RFG (`expr/checkpoints/501500_nets_ema.ckpt`: `generator`, `style_encoder`) then IDSG
  (`expr_lm/checkpoints/30000_nets_ema.ckpt`: `lm_linear_encoder`, `linear_decoder`,
  `linear_discriminator`, `linear_classfier`), into one "dual_generator_reenactor" file:
      age-reenact convert dual_generator 501500_nets_ema.ckpt 30000_nets_ema.ckpt dual_generator.safetensors
  Other networks in the files (the id-embedding variant's `mlp`, `fan`, ...) are left out and listed.
- `vggface_dag`: Oxford's VGG-Face `vgg_face_dag.pth` (keys conv1_1 ... fc8, or torchvision's VGG16
  names) into a "vggface_fc7" file, the official identity code; put it in the reenactor model folder.
  The 2622-way face classifier (fc8) is left out.

The config is read off the tensor shapes, so official models of other sizes convert too.
"""
from __future__ import annotations

import re
from typing import Any

import torch

from ..weights import WeightsError, register_converter
from .shape_generator import LANDMARK_DIM
from .vggface import vgg16_conv_indices

RFG_NETWORKS = ("generator", "style_encoder")
IDSG_NETWORKS = ("lm_linear_encoder", "linear_decoder", "linear_discriminator", "linear_classfier")
OFFICIAL_IDENTITY_DIM = 4096
PREPROCESSING = {
    "crop_convention": "reenactor",
    "image_range": "RGB 0..1",
    "landmarks": "iBUG 68 in crop pixels / size, flattened x0, y0, x1, y1, ...",
    "sketch": "white lines on black (sketch.py)",
}


def _strip_data_parallel(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def _networks(checkpoint: Any, role: str, expected: tuple[str, ...]) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """One official CheckpointIO file: its `expected` networks, and the names of the others (left out)."""
    found = sorted(map(str, checkpoint)) if isinstance(checkpoint, dict) else type(checkpoint).__name__
    missing = [n for n in expected if not isinstance(checkpoint, dict) or n not in checkpoint]
    if missing:
        raise WeightsError(
            f"the {role} file lacks the networks {missing} (it holds {found}). Give the RFG checkpoint "
            "(expr/checkpoints/501500_nets_ema.ckpt) first, then the IDSG one (expr_lm/checkpoints/30000_nets_ema.ckpt)."
        )
    networks = {name: _strip_data_parallel(checkpoint[name]) for name in expected}
    return networks, [f"{role} {name}" for name in found if name not in expected]


def dual_generator_config(networks: dict[str, dict[str, torch.Tensor]]) -> dict[str, Any]:
    """The model config implied by the official tensors."""
    try:
        generator = networks["generator"]
        levels = len({int(m.group(1)) for k in generator if (m := re.match(r"encode\.(\d+)\.", k))})
        size = 2 ** (levels + 4)  # the encoder stops at 16x16
        base = generator["from_rgb.weight"].shape[0]
        widths = [v.shape[0] for k, v in generator.items() if re.match(r"encode\.\d+\.conv2\.weight", k)]
        identity_dim = networks["linear_decoder"]["main.0.weight"].shape[1] - LANDMARK_DIM
        style_dim = generator["decode.0.norm1.fc.weight"].shape[1]
        num_identities = networks["linear_classfier"]["main_3.0.weight"].shape[0]
    except (KeyError, IndexError) as exc:
        raise WeightsError(f"cannot read the model's size off the official tensors: {exc} is missing or malformed.") from exc
    if identity_dim != OFFICIAL_IDENTITY_DIM:
        raise WeightsError(f"the official shape generator takes a {OFFICIAL_IDENTITY_DIM}-d VGG-Face code; this one takes {identity_dim}.")
    return {
        "size": size,
        "style_dim": style_dim,
        "identity_dim": identity_dim,
        "identity_source": "vggface",
        "num_identities": num_identities,
        "base_channels": None if base == 2**14 // size else base,
        "max_conv_dim": max(widths, default=0),
    }


@register_converter(
    "dual_generator",
    "Dual-Generator reenactor (CVPR 2022): the official RFG and IDSG *_nets_ema.ckpt files",
    inputs=("rfg", "idsg"),
)
def convert_dual_generator(rfg: Any, idsg: Any) -> tuple[dict[str, torch.Tensor], str, dict, dict, list[str]]:
    rfg_networks, rfg_left_out = _networks(rfg, "rfg", RFG_NETWORKS)
    idsg_networks, idsg_left_out = _networks(idsg, "idsg", IDSG_NETWORKS)
    config = dual_generator_config(rfg_networks | idsg_networks)
    # Keys are the official ones under "rfg." / "idsg.": a refusal's key names the file it came from.
    state_dict = {}
    for stage, networks in (("rfg", rfg_networks), ("idsg", idsg_networks)):
        for name, network in networks.items():
            state_dict.update({f"{stage}.{name}.{k}": v for k, v in network.items()})
    preprocessing = dict(PREPROCESSING, size=config["size"], identity="VGG-Face fc7 of the source crop (vggface_fc7 file)")
    return state_dict, "dual_generator_reenactor", config, preprocessing, rfg_left_out + idsg_left_out


def _vggface_names(checkpoint: dict[str, Any]) -> tuple[dict[str, str], tuple[str, ...]]:
    """Official key -> torchvision VGG16 key for the layers up to fc7, and the prefixes of fc8 (left out)."""
    if "features.0.weight" in checkpoint:  # already in torchvision's layout
        names = {k: k for k in checkpoint if k.startswith("features.")}
        names.update({f"classifier.{i}.{p}": f"classifier.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")})
        return names, ("classifier.6.",)
    dag = [f"conv{block}_{i}" for block, count in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, count + 1)]
    names = {f"{d}.{p}": f"features.{i}.{p}" for d, i in zip(dag, vgg16_conv_indices()) for p in ("weight", "bias")}
    names.update({f"fc6.{p}": f"classifier.0.{p}" for p in ("weight", "bias")})
    names.update({f"fc7.{p}": f"classifier.3.{p}" for p in ("weight", "bias")})
    return names, ("fc8.",)


@register_converter("vggface_dag", "Oxford VGG-Face vgg_face_dag.pth -> fc7 identity encoder for the official shape generator")
def convert_vggface(checkpoint: Any) -> tuple[dict[str, torch.Tensor], str, dict, dict, list[str]]:
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"expected the vgg_face_dag.pth state dict, got {type(checkpoint).__name__}.")
    names, classifier = _vggface_names(checkpoint)
    missing = sorted(k for k in names if k not in checkpoint)
    if missing:
        raise WeightsError(f"not a VGG-Face (VGG16) state dict: missing {missing[:4]}{' ...' if len(missing) > 4 else ''}.")
    # Unknown keys keep their names, so the strict check refuses them by name.
    state_dict = {names.get(k, k): v for k, v in checkpoint.items() if not k.startswith(classifier)}
    # The dag file may store fc6 as a 7x7 convolution; as a Linear it is the same numbers flattened.
    for key in ("classifier.0.weight", "classifier.3.weight"):
        state_dict[key] = state_dict[key].reshape(state_dict[key].shape[0], -1)
    config = {"fc_dim": state_dict["classifier.3.weight"].shape[0]}
    preprocessing = {"image_range": "RGB 0..1, ImageNet mean/std inside the model", "input": "the reenactor crop of the source"}
    left_out = sorted({k.rsplit(".", 1)[0] for k in checkpoint if k.startswith(classifier)})
    return state_dict, "vggface_fc7", config, preprocessing, [f"{k} (the 2622-way face classifier)" for k in left_out]
