"""Converters from the official dual-generator files to the pack's safetensors files.

- `dual_generator`: the two official `{iter}_nets_ema.ckpt` files, RFG (`expr/checkpoints/501500_...`,
  networks `generator`, `style_encoder`) and IDSG (`expr_lm/checkpoints/30000_...`, networks
  `lm_linear_encoder`, `linear_decoder`, `linear_discriminator`, `linear_classfier`), into one
  "dual_generator_reenactor" file. As it needs two inputs, run it as
      python -m age_reenact.reenact RFG.ckpt IDSG.ckpt reenactor.safetensors
  (the registered converter takes the stage dicts already merged, or a list of them).
- `vggface_dag`: Oxford's VGG-Face `vgg_face_dag.pth` (keys conv1_1 ... fc8, or torchvision's VGG16
  names) into a "vggface_fc7" file, the official identity code; put it in the reenactor model folder.

The config is read off the tensor shapes, so official models of other sizes convert too.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import torch

from ..weights import WeightsError, load_checkpoint, register_converter, save_weights
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


def _networks(checkpoints: Any) -> dict[str, dict[str, torch.Tensor]]:
    """Merge official checkpoint dicts ({network name: state_dict}) into one dict of networks."""
    items = checkpoints if isinstance(checkpoints, (list, tuple)) else [checkpoints]
    networks: dict[str, dict[str, torch.Tensor]] = {}
    for item in items:
        if not isinstance(item, dict):
            raise WeightsError(f"expected an official *_nets_ema.ckpt dict of networks, got {type(item).__name__}.")
        networks.update({name: _strip_data_parallel(sd) for name, sd in item.items() if name in RFG_NETWORKS + IDSG_NETWORKS})
    missing = [n for n in RFG_NETWORKS + IDSG_NETWORKS if n not in networks]
    if missing:
        raise WeightsError(
            f"the dual-generator conversion needs both official files; missing networks {missing}. Run "
            "`python -m age_reenact.reenact expr/checkpoints/501500_nets_ema.ckpt "
            "expr_lm/checkpoints/30000_nets_ema.ckpt reenactor.safetensors`."
        )
    return networks


def dual_generator_config(networks: dict[str, dict[str, torch.Tensor]]) -> dict[str, Any]:
    """The model config implied by the official tensors."""
    generator = networks["generator"]
    levels = len({int(m.group(1)) for k in generator if (m := re.match(r"encode\.(\d+)\.", k))})
    size = 2 ** (levels + 4)  # the encoder stops at 16x16
    base = generator["from_rgb.weight"].shape[0]
    widths = [v.shape[0] for k, v in generator.items() if re.match(r"encode\.\d+\.conv2\.weight", k)]
    identity_dim = networks["linear_decoder"]["main.0.weight"].shape[1] - LANDMARK_DIM
    if identity_dim != OFFICIAL_IDENTITY_DIM:
        raise WeightsError(f"the official shape generator takes a {OFFICIAL_IDENTITY_DIM}-d VGG-Face code; this one takes {identity_dim}.")
    return {
        "size": size,
        "style_dim": generator["decode.0.norm1.fc.weight"].shape[1],
        "identity_dim": identity_dim,
        "identity_source": "vggface",
        "num_identities": networks["linear_classfier"]["main_3.0.weight"].shape[0],
        "base_channels": None if base == 2**14 // size else base,
        "max_conv_dim": max(widths),
    }


@register_converter("dual_generator", "Dual-Generator reenactor (CVPR 2022): official RFG + IDSG *_nets_ema.ckpt, merged")
def convert_dual_generator(checkpoints: Any) -> tuple[dict[str, torch.Tensor], str, dict, dict]:
    networks = _networks(checkpoints)
    config = dual_generator_config(networks)
    state_dict = {}
    for stage, names in (("rfg", RFG_NETWORKS), ("idsg", IDSG_NETWORKS)):
        for name in names:
            state_dict.update({f"{stage}.{name}.{k}": v for k, v in networks[name].items()})
    preprocessing = dict(PREPROCESSING, size=config["size"], identity="VGG-Face fc7 of the source crop (vggface_fc7 file)")
    return state_dict, "dual_generator_reenactor", config, preprocessing


@register_converter("vggface_dag", "Oxford VGG-Face vgg_face_dag.pth -> fc7 identity encoder for the official shape generator")
def convert_vggface(checkpoint: Any) -> tuple[dict[str, torch.Tensor], str, dict, dict]:
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"expected the vgg_face_dag.pth state dict, got {type(checkpoint).__name__}.")
    if "features.0.weight" in checkpoint:  # already in torchvision's layout
        names = {k: k for k in checkpoint if k.startswith("features.")}
        names.update({f"classifier.{i}.{p}": f"classifier.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")})
    else:
        dag = [f"conv{block}_{i}" for block, count in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, count + 1)]
        names = {f"{d}.{p}": f"features.{i}.{p}" for d, i in zip(dag, vgg16_conv_indices()) for p in ("weight", "bias")}
        names.update({f"fc6.{p}": f"classifier.0.{p}" for p in ("weight", "bias")})
        names.update({f"fc7.{p}": f"classifier.3.{p}" for p in ("weight", "bias")})
    missing = sorted(k for k in names if k not in checkpoint)
    if missing:
        raise WeightsError(f"not a VGG-Face (VGG16) state dict: missing {missing[:4]}{' ...' if len(missing) > 4 else ''}.")
    state_dict = {new: checkpoint[old] for old, new in names.items()}
    # The dag file may store fc6 as a 7x7 convolution; as a Linear it is the same numbers flattened.
    for key in ("classifier.0.weight", "classifier.3.weight"):
        state_dict[key] = state_dict[key].reshape(state_dict[key].shape[0], -1)
    config = {"fc_dim": state_dict["classifier.3.weight"].shape[0]}
    preprocessing = {"image_range": "RGB 0..1, ImageNet mean/std inside the model", "input": "the reenactor crop of the source"}
    return state_dict, "vggface_fc7", config, preprocessing


def convert_official_files(rfg: str | Path, idsg: str | Path, destination: str | Path) -> Path:
    """Convert the official RFG and IDSG checkpoint files into one reenactor file."""
    state_dict, architecture, config, preprocessing = convert_dual_generator([load_checkpoint(rfg), load_checkpoint(idsg)])
    provenance = {"converted_from": [Path(rfg).name, Path(idsg).name], "converter": "dual_generator"}
    return save_weights(destination, state_dict, architecture, config, preprocessing, provenance)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m age_reenact.reenact", description="Convert the official dual-generator checkpoints into one reenactor file (run from the pack folder).")
    parser.add_argument("rfg", help="RFG checkpoint, e.g. expr/checkpoints/501500_nets_ema.ckpt")
    parser.add_argument("idsg", help="IDSG checkpoint, e.g. expr_lm/checkpoints/30000_nets_ema.ckpt")
    parser.add_argument("destination", help="output .safetensors (put it in models/reenactor/)")
    args = parser.parse_args(argv)
    print(f"wrote {convert_official_files(args.rfg, args.idsg, args.destination)}")
