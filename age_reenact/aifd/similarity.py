"""Identity embeddings and face verification with the AIFD encoder.

`encoder_input` is the one place that turns face tensors into what E_A takes (any square size, any
stated value range -> 112x112 in [-1, 1]); the MI loss and `FaceSimilarity` both use it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..devices import autocast
from ..face.crop import detect_crops, extract_crops
from ..face.detect import FaceDetector
from ..images import to_image_batch
from .encoder import AIFDEncoder

SIGNED = (-1.0, 1.0)  # AgeTransGAN outputs and E_A's own input
UNIT = (0.0, 1.0)  # ComfyUI IMAGE values
Progress = Callable[[int, int], None]
DEFAULT_THRESHOLD = 0.27  # the bundled encoder's best on LFW train pairs (its card); calibrate other models (see FaceSimilarity)


def encoder_input(faces: torch.Tensor, value_range: tuple[float, float] = SIGNED, size: int = 112) -> torch.Tensor:
    """Square aligned faces [B, 3, H, H] with values in `value_range` -> [B, 3, size, size] in [-1, 1].

    Differentiable. Downscaling is antialiased (a 1024 AgeTransGAN output keeps no aliasing at 112);
    no re-detection: an AgeTransGAN crop shrunk to 112 is within a few pixels of the ArcFace crop.
    """
    if faces.ndim != 4 or faces.shape[1] != 3:
        raise ValueError(f"expected faces as [B, 3, H, W], got shape {tuple(faces.shape)}")
    if faces.shape[2] != faces.shape[3]:
        raise ValueError(f"expected square aligned face crops, got {faces.shape[3]}x{faces.shape[2]} px; crop the faces first.")
    low, high = value_range
    # fp32: the antialiased resize has no bf16 kernel on CPUs.
    faces = (faces.float() - low) * (2.0 / (high - low)) - 1.0
    if faces.shape[-1] != size:
        faces = F.interpolate(faces, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return faces


def identity_embedding(
    encoder: AIFDEncoder,
    faces: torch.Tensor,
    value_range: tuple[float, float] = SIGNED,
    flip_average: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """L2-normalised fp32 identity embeddings [B, D] of aligned faces, the encoder running at `dtype` (bf16
    under autocast); with `flip_average`, of the face and its mirror image averaged and re-normalised
    (MTLFace's `encode`), which steadies the score under pose."""
    faces = encoder_input(faces, value_range, encoder.input_size)
    with autocast(faces.device, dtype):
        if not flip_average:
            return encoder(faces)
        direct, mirrored = encoder(torch.cat([faces, faces.flip(3)])).chunk(2)
    return F.normalize(direct + mirrored, dim=1)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of paired L2-normalised embeddings [N, D] (either side may have N = 1) -> [N]."""
    return (a.float() * b.float()).sum(1)


@dataclass
class SimilarityResult:
    cosine: torch.Tensor  # [N] in [-1, 1]
    threshold: float

    @property
    def same(self) -> list[bool]:
        return [bool(c >= self.threshold) for c in self.cosine]

    def report(self) -> str:
        lines = [f"pair {i}: cosine {c:.4f} -> {'same' if s else 'different'}" for i, (c, s) in enumerate(zip(self.cosine.tolist(), self.same))]
        return "\n".join([f"identity similarity (threshold {self.threshold:.3f}):", *lines])


class FaceSimilarity:
    """Cosine similarity of the identities in two IMAGE batches, pair by pair.

    With a `detector`, whole frames are searched for their largest face, which is warped to the
    ArcFace 112 crop; without one, the inputs must already be aligned square face crops. The
    default threshold is the bundled encoder's (most accurate on LFW train pairs); for another encoder,
    or another false-accept rate, measure it on pairs of different people.
    """

    def __init__(
        self, encoder: AIFDEncoder, detector: FaceDetector | None = None, flip_average: bool = True, chunk: int = 16, dtype: torch.dtype = torch.float32
    ):
        self.encoder, self.detector, self.flip_average, self.chunk, self.dtype = encoder, detector, flip_average, chunk, dtype

    def faces(self, images: torch.Tensor, name: str = "image", progress: Progress | None = None) -> torch.Tensor:
        """IMAGE batch -> aligned faces [N, 3, S, S] in 0..1 (detected and cropped when a detector is set)."""
        images = to_image_batch(images, name)
        if self.detector is not None:
            crops = detect_crops(images, self.detector, "arcface", self.encoder.input_size, "largest", progress=progress)
            images = extract_crops(images, crops)
        return images.permute(0, 3, 1, 2)

    @torch.no_grad()
    def embed(self, images: torch.Tensor, name: str = "image", progress: Progress | None = None) -> torch.Tensor:
        """IMAGE batch -> embeddings [N, D] on the CPU; `progress(done, total)` per detected frame, then per chunk."""
        faces = self.faces(images, name, progress)
        device = next(self.encoder.parameters()).device
        out = []
        for start in range(0, len(faces), self.chunk):
            batch = faces[start : start + self.chunk].to(device)
            out.append(identity_embedding(self.encoder, batch, UNIT, self.flip_average, self.dtype).cpu())
            if progress is not None:
                progress(min(start + self.chunk, len(faces)), len(faces))
        return torch.cat(out)

    def __call__(
        self, images_a: torch.Tensor, images_b: torch.Tensor, threshold: float = DEFAULT_THRESHOLD, progress: Progress | None = None
    ) -> SimilarityResult:
        if len(images_a) != len(images_b) and 1 not in (len(images_a), len(images_b)):
            raise ValueError(
                f"image_a has {len(images_a)} image(s) and image_b {len(images_b)}: give batches of the same length, "
                "or one image to compare with every image of the other batch."
            )
        embeddings = [self.embed(images, name, progress) for images, name in ((images_a, "image_a"), (images_b, "image_b"))]
        return SimilarityResult(cosine(*embeddings), threshold)
