"""Face crops of a batch of frames, and the record (`FaceCrops`) that lets them be pasted back."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch

from ..images import to_image_batch, to_uint8
from .align import fit_to_convention, invert_affine, transform_points, warp_affine
from .detect import Face, FaceDetector
from .templates import get_convention

FACE_CHOICES = ("largest", "index", "all")
NO_FACE_ACTIONS = ("error", "passthrough")


class NoFaceError(ValueError):
    """A frame without a usable face; the message names the frame."""


@dataclass
class FaceCrops:
    """Where each crop came from: frame index, frame->crop matrix, landmarks; one row per crop.

    Rows with `valid` False are frames without a face that were passed through: their crop is the centre
    square of the frame and paste-back leaves the frame untouched.
    """

    convention: str
    size: int
    frame_size: tuple[int, int]  # (H, W) of the source frames
    num_frames: int
    frame_index: np.ndarray  # (N,) int
    matrices: np.ndarray  # (N, 2, 3) frame px -> crop px
    landmarks: np.ndarray  # (N, K, 2) frame px; K = 68, or 5 with the 5-point predictor; NaN where invalid
    points5: np.ndarray  # (N, 5, 2) frame px; NaN where invalid
    valid: np.ndarray  # (N,) bool
    template_index: np.ndarray  # (N,) the convention template used

    def __len__(self) -> int:
        return len(self.frame_index)

    @property
    def inverse_matrices(self) -> np.ndarray:
        return np.stack([invert_affine(m) for m in self.matrices]) if len(self) else np.zeros((0, 2, 3))

    def crop_landmarks(self, size: int | None = None) -> np.ndarray:
        """Landmarks in crop pixels (at `size`, default the crop size)."""
        scale = (size or self.size) / self.size
        return np.stack([transform_points(m, lm) * scale for m, lm in zip(self.matrices, self.landmarks)]) if len(self) else self.landmarks

    def select(self, rows: Sequence[int] | np.ndarray) -> "FaceCrops":
        rows = np.asarray(rows, dtype=np.int64)
        return replace(
            self,
            frame_index=self.frame_index[rows],
            matrices=self.matrices[rows],
            landmarks=self.landmarks[rows],
            points5=self.points5[rows],
            valid=self.valid[rows],
            template_index=self.template_index[rows],
        )


def choose_faces(faces: list[Face], choice: str, index: int, frame: int) -> list[Face]:
    if choice not in FACE_CHOICES:
        raise ValueError(f"face choice must be one of {FACE_CHOICES}, got {choice!r}")
    if choice == "all" or not faces:
        return faces
    if choice == "largest":
        return [max(faces, key=lambda f: f.area)]
    if not 0 <= index < len(faces):
        raise NoFaceError(f"frame {frame}: face index {index} asked for, but {len(faces)} face(s) found (0 = leftmost).")
    return [faces[index]]


def _centre_square(h: int, w: int, size: int) -> np.ndarray:
    side = min(h, w)
    scale = size / side
    return np.array([[scale, 0.0, -((w - side) / 2 - 0.5) * scale - 0.5], [0.0, scale, -((h - side) / 2 - 0.5) * scale - 0.5]])


def crops_from_points(
    frame_size: tuple[int, int],
    num_frames: int,
    frame_index: Sequence[int],
    landmarks: Sequence[np.ndarray],
    points5: Sequence[np.ndarray],
    convention: str,
    size: int,
    valid: Sequence[bool] | None = None,
) -> FaceCrops:
    """A `FaceCrops` record from known face points (detected, hand-labelled, or from another tool)."""
    conv = get_convention(convention)
    valid = np.ones(len(frame_index), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    matrices, templates = [], []
    for ok, p5 in zip(valid, points5):
        if ok:
            matrix, template = fit_to_convention(p5, conv, size)
        else:
            matrix, template = _centre_square(*frame_size, size), -1
        matrices.append(matrix)
        templates.append(template)
    k = max((len(lm) for lm in landmarks), default=5)
    return FaceCrops(
        convention=convention,
        size=size,
        frame_size=tuple(frame_size),
        num_frames=num_frames,
        frame_index=np.asarray(frame_index, dtype=np.int64),
        matrices=np.asarray(matrices, dtype=np.float64).reshape(-1, 2, 3),
        landmarks=np.asarray(landmarks, dtype=np.float64).reshape(-1, k, 2),
        points5=np.asarray(points5, dtype=np.float64).reshape(-1, 5, 2),
        valid=valid,
        template_index=np.asarray(templates, dtype=np.int64),
    )


def detect_crops(
    images: torch.Tensor,
    detector: FaceDetector,
    convention: str = "agetransgan",
    size: int = 256,
    choice: str = "largest",
    index: int = 0,
    on_no_face: str = "error",
    progress: Callable[[int, int], None] | None = None,
) -> FaceCrops:
    """Detect faces in every frame of an IMAGE batch and fit the crop convention to each chosen face."""
    if on_no_face not in NO_FACE_ACTIONS:
        raise ValueError(f"on_no_face must be one of {NO_FACE_ACTIONS}, got {on_no_face!r}")
    images = to_image_batch(images)
    b, h, w, _ = images.shape
    rows: dict[str, list] = {"frame_index": [], "landmarks": [], "points5": [], "valid": []}
    k = 68 if detector.landmarks == "68" else 5
    for frame in range(b):
        faces = choose_faces(detector.detect(to_uint8(images[frame])), choice, index, frame)
        if not faces:
            if on_no_face == "error":
                raise NoFaceError(
                    f"frame {frame}: no face found ({w}x{h} px). Try upsample 2 for small faces, the CNN fallback, "
                    "or set 'on no face' to passthrough to leave such frames unchanged."
                )
            rows["frame_index"].append(frame)
            rows["landmarks"].append(np.full((k, 2), np.nan))
            rows["points5"].append(np.full((5, 2), np.nan))
            rows["valid"].append(False)
        for face in faces:
            rows["frame_index"].append(frame)
            rows["landmarks"].append(face.landmarks)
            rows["points5"].append(face.points5)
            rows["valid"].append(True)
        if progress is not None:
            progress(frame + 1, b)
    return crops_from_points((h, w), b, convention=convention, size=size, **rows)


def extract_crops(images: torch.Tensor, crops: FaceCrops, chunk: int = 16) -> torch.Tensor:
    """Warp every crop of `crops` out of its frame: IMAGE [N, size, size, 3]."""
    images = to_image_batch(images)
    if images.shape[0] != crops.num_frames or tuple(images.shape[1:3]) != crops.frame_size:
        raise ValueError(
            f"these crops were made from {crops.num_frames} frame(s) of {crops.frame_size[1]}x{crops.frame_size[0]} px; "
            f"got {images.shape[0]} of {images.shape[2]}x{images.shape[1]} px. Connect the same images the crops came from."
        )
    out = []
    for start in range(0, len(crops), chunk):
        rows = crops.frame_index[start : start + chunk]
        frames = images[torch.as_tensor(rows)].permute(0, 3, 1, 2)
        out.append(warp_affine(frames, crops.matrices[start : start + chunk], (crops.size, crops.size)).clamp(0, 1).permute(0, 2, 3, 1))
    return torch.cat(out, 0) if out else images.new_zeros(0, crops.size, crops.size, 3)
