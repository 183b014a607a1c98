"""The pack's AIFD identity embedding as the shape generator's identity code.

The reenactor works on its own crop (convention "reenactor"); the AIFD encoder takes the ArcFace 112
crop. Both are fixed similarity frames of the same 5 face points, so one fixed matrix per size maps a
reenactor crop to the encoder's input without re-detecting the face.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..aifd.encoder import AIFDEncoder
from ..aifd.similarity import UNIT, identity_embedding
from ..face.align import similarity_transform, warp_affine
from ..face.templates import get_convention


def reenactor_to_arcface(size: int, arcface_size: int = 112) -> np.ndarray:
    """2x3 matrix: reenactor crop pixels at `size` -> ArcFace crop pixels at `arcface_size`."""
    source = get_convention("reenactor").scaled(size)[0]
    target = get_convention("arcface").scaled(arcface_size)[0]
    return similarity_transform(source, target)


class AIFDIdentity(nn.Module):
    """Reenactor crops [B, 3, S, S] in 0..1 -> L2-normalised AIFD identity codes [B, embedding_dim] (frozen)."""

    def __init__(self, encoder: AIFDEncoder):
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.output_dim = encoder.output_layer[-1].num_features  # the embedding's BatchNorm1d

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        size = self.encoder.input_size
        matrices = np.repeat(reenactor_to_arcface(crops.shape[-1], size)[None], len(crops), axis=0)
        faces = warp_affine(crops.float(), matrices, (size, size)).clamp(0, 1)
        return identity_embedding(self.encoder, faces, UNIT)
