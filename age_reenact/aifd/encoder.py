"""E_A: the AIFD identity encoder (IR backbone + attention decomposition + identity embedding + age head).

Input: 112x112 ArcFace-aligned RGB faces in [-1, 1], [B, 3, 112, 112] (`PREPROCESSING`, stored in the
weights' metadata). Output: an L2-normalised identity embedding from the identity part of the maps;
the age head reads the age part. The state_dict uses MTLFace's names without the `encoder.` prefix:
`input_layer`, `block1..4`, `fsm`, `output_layer`, plus `age_estimator`.

An identity-only file (config `"age_head": false`, written by `age-reenact convert aifd_identity`) has no
`age_estimator` tensors: everything that reads the identity embedding loads it as usual, and asking it
for an age raises a `WeightsError` naming the full file it was made from.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..devices import autocast
from ..weights import Weights, WeightsError, build_model, read_weights, register_architecture
from .afd import AttentionDecomposition
from .backbone import IRBackbone, embedding_head

ARCHITECTURE = "aifd_encoder"
INPUT_SIZE = 112
PREPROCESSING = {
    "size": INPUT_SIZE,
    "channels": "RGB",
    "layout": "NCHW",
    "range": [-1.0, 1.0],
    "normalize": "x * 2 - 1 from RGB in 0..1 (mean 0.5, std 0.5)",
    "crop": "arcface",
}


class AgeHead(nn.Module):
    """MTLFace's age estimator on x_age: 0..100 age logits, their softmax expectation, and group logits."""

    def __init__(self, channels: int, spatial: int, hidden: int, num_age_classes: int = 101, num_age_groups: int = 7):
        super().__init__()
        self.age_output_layer = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.Flatten(),
            nn.Linear(channels * spatial * spatial, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_age_classes),
        )
        self.group_output_layer = nn.Linear(num_age_classes, num_age_groups)
        self.register_buffer("expectation", torch.arange(num_age_classes, dtype=torch.float32))

    def forward(self, x_age: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x_age maps -> (expected age in years [B], age logits [B, classes], group logits [B, groups])."""
        logits = self.age_output_layer(x_age)
        age = (logits.float().softmax(1) * self.expectation).sum(1)
        return age, logits, self.group_output_layer(logits)


class NoAgeHead(nn.Module):
    """The age head's place in an identity-only encoder: no tensors, and any call for an age says which
    file has the head instead of failing on a missing attribute. `encoder_from` fills in the file names."""

    def __init__(self) -> None:
        super().__init__()
        self.file, self.full_file = "this AIFD encoder", ""

    def error(self) -> WeightsError:
        full = f"the full file it was made from ({self.full_file})" if self.full_file else "the full encoder file it was made from"
        return WeightsError(
            f"{self.file} has no age head (an identity-only file, config age_head: false): it gives identity embeddings only. "
            f"For ages load {full}, or any AIFD encoder file with its age head (a training export, a converted MTLFace checkpoint)."
        )

    def forward(self, x_age: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise self.error()


@register_architecture(ARCHITECTURE)
class AIFDEncoder(IRBackbone):
    """Config: depth (18/34/50/100 or four unit counts), widths, embedding_dim, afd_variant ("cvpr" or
    "tpami"), input_size (a multiple of 16), num_age_classes, num_age_groups, dropout (training only),
    age_head (false: identity-only, without the age estimator; the age sizes are then unused)."""

    def __init__(
        self,
        depth: int | Sequence[int] = 50,
        widths: Sequence[int] = (64, 128, 256, 512),
        embedding_dim: int = 512,
        afd_variant: str = "cvpr",
        input_size: int = INPUT_SIZE,
        num_age_classes: int = 101,
        num_age_groups: int = 7,
        dropout: float = 0.4,
        age_head: bool = True,
    ):
        super().__init__(depth, widths)
        if input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16 (four stride-2 stages), got {input_size}")
        channels, spatial = widths[-1], input_size // 16
        self.input_size = input_size
        self.fsm = AttentionDecomposition(channels, afd_variant)
        self.output_layer = embedding_head(channels, spatial, embedding_dim, dropout)
        # The age MLP's hidden width is the embedding width (512 in MTLFace for both). Its first linear reads the
        # whole flattened maps, a third of an IR-small encoder's parameters that identity consumers never use.
        self.age_estimator: AgeHead | NoAgeHead = (
            AgeHead(channels, spatial, embedding_dim, num_age_classes, num_age_groups) if age_head else NoAgeHead()
        )
        self.init_weights()
        # oneDNN's convolutions skip a reorder per call with channels_last weights and maps (faster here:
        # docs/results/speed_official_cpu.md); loading a state_dict copies into this layout.
        self.to(memory_format=torch.channels_last)

    @property
    def has_age_head(self) -> bool:
        return isinstance(self.age_estimator, AgeHead)

    def fold_for_inference(self) -> AIFDEncoder:
        """The inference form, in place (backbone and attention BNs folded, see IRBackbone/AttentionDecomposition):
        the same embeddings within fp32 rounding, 1.06-1.08x faster in fp32 on the development CPU and 1.13-1.26x
        with bf16 weights (docs/results/speed_official_cpu.md). For loaders only (the Identity Encoder Loader node);
        training and load_encoder keep the trainable layers. Returns self."""
        self.eval().fsm.fold_for_inference()
        return super().fold_for_inference()  # the backbone's, then no gradients and channels_last for all

    def decompose(self, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Faces [B, 3, S, S] in [-1, 1] -> (x_id, x_age) maps, in the weights' dtype.

        An encoder cast with `.to(torch.bfloat16)` runs wholly in bf16 whatever the faces' dtype: the
        fastest bf16 path here, as autocast re-casts every weight on every call (docs/results/speed_official_cpu.md).
        """
        if faces.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"the identity encoder takes {self.input_size}x{self.input_size} faces, got {tuple(faces.shape[-2:])}; "
                "resize with aifd.similarity.encoder_input first."
            )
        return self.fsm(self.features(faces.to(self.input_layer[0].weight.dtype)))

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """Faces [B, 3, S, S] in [-1, 1] -> L2-normalised identity embeddings [B, embedding_dim]."""
        x_id, _ = self.decompose(faces)
        return F.normalize(self.output_layer(x_id).float(), dim=1)

    def estimate_age(
        self, faces: torch.Tensor, flip_average: bool = True, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Faces -> (expected age in years [B], age-group logits [B, num_age_groups]), at `dtype` (bf16
        under autocast). With `flip_average`, both are the mean of the face's and its mirror image's, as
        MTLFace's `encode` computes them (a single view can be most of a year off)."""
        if not self.has_age_head:
            raise self.age_estimator.error()  # before the backbone pass, not after it
        views = torch.cat([faces, faces.flip(3)]) if flip_average else faces
        with autocast(faces.device, dtype):
            _, x_age = self.decompose(views)
            age, _, groups = self.age_estimator(x_age)
        age, groups = age.float(), groups.float()
        if flip_average:
            return (age[: len(faces)] + age[len(faces) :]) * 0.5, (groups[: len(faces)] + groups[len(faces) :]) * 0.5
        return age, groups


def load_encoder(path: str | Path) -> AIFDEncoder:
    """An AIFD encoder from a safetensors file written by this pack, in eval mode."""
    return encoder_from(read_weights(path, ARCHITECTURE))


def encoder_from(weights: Weights) -> AIFDEncoder:
    """The encoder of read weights; an identity-only one names its file and, where its provenance says, the
    full file it was converted from, for the error a request for an age raises."""
    encoder = build_model(weights)
    if not encoder.has_age_head:
        if weights.path is not None:
            encoder.age_estimator.file = weights.path.name
        encoder.age_estimator.full_file = weights.provenance.get("converted_from", "")
    return encoder
