"""The pack's bundled model files: their names, architectures, and the size each is trained at.

Benchmarks time the bundled models; before a family's file is trained and committed they time a
random-weight model of the size it will have (speed does not depend on the weight values).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import model_paths
from .model_paths import BUNDLED
from .weights import build_model, create_model, read_weights

ARCHITECTURES = {"agetransgan": "agetransgan_generator", "reenactor": "dual_generator_reenactor", "age_estimator": "age_resnet", "aifd": "aifd_encoder"}
# The default ('small') presets of the training tasks in training/, for a family whose bundled file is missing.
TRAINED_CONFIGS = {
    "agetransgan": dict(size=128, group=10, style_dim=128, n_mlp=4, channel_multiplier=1),
    "reenactor": dict(size=128, style_dim=64, identity_dim=64, identity_source="aifd", base_channels=32, max_conv_dim=128),
    "aifd": dict(depth=[1, 2, 2, 1], widths=[32, 64, 128, 256], embedding_dim=256, afd_variant="cvpr", input_size=112),
}


def bundled_path(family: str) -> Path | None:
    """The bundled file of a family where it can be found (pack weights/ or $AGE_REENACT_MODELS), else None."""
    try:
        return model_paths.resolve_model(family, BUNDLED[family])
    except FileNotFoundError:
        return None


def bundled_config(family: str) -> tuple[dict, str]:
    """The bundled file's config when it is there, else the size it is trained at; and where it came from."""
    path = bundled_path(family)
    if path is not None:
        return read_weights(path, ARCHITECTURES[family]).config, path.name
    return TRAINED_CONFIGS[family], "bundled file not found: random weights at the trained size"


def bundled_or_random(family: str, seed: int = 0) -> tuple[nn.Module, str]:
    """The bundled model in eval mode, or a random-weight one of its trained size; and where it came from."""
    path = bundled_path(family)
    if path is not None:
        return build_model(read_weights(path, ARCHITECTURES[family])).eval(), path.name
    config, origin = bundled_config(family)
    with torch.random.fork_rng():  # a fixed model without moving the caller's random state
        torch.manual_seed(seed)
        return create_model(ARCHITECTURES[family], config).eval(), origin
