"""Face crops of a batch of frames, and the record (`FaceCrops`) that lets them be pasted back."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..images import to_image_batch, to_uint8
from .align import antialias_factor, fit_to_convention, invert_affine, transform_points, warp_affine
from .detect import Face, FaceDetector, largest
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
        return [largest(faces)]
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
    """A `FaceCrops` record from known face points (detected, hand-labelled, or from another tool).

    Rows with 68 landmarks are aligned on the five points the convention's official code takes from them
    (its own eye rule, `CropConvention.alignment_points`); other rows on `points5`. The record keeps the
    points each crop was fitted to.
    """
    conv = get_convention(convention)
    valid = np.ones(len(frame_index), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    matrices, templates, fitted = [], [], []
    for ok, lm, p5 in zip(valid, landmarks, points5):
        if ok:
            p5 = conv.alignment_points(lm, p5)
            matrix, template = fit_to_convention(p5, conv, size)
        else:
            matrix, template = _centre_square(*frame_size, size), -1
        matrices.append(matrix)
        templates.append(template)
        fitted.append(p5)
    k = max((len(lm) for lm in landmarks), default=5)
    return FaceCrops(
        convention=convention,
        size=size,
        frame_size=tuple(frame_size),
        num_frames=num_frames,
        frame_index=np.asarray(frame_index, dtype=np.int64),
        matrices=np.asarray(matrices, dtype=np.float64).reshape(-1, 2, 3),
        landmarks=np.asarray(landmarks, dtype=np.float64).reshape(-1, k, 2),
        points5=np.asarray(fitted, dtype=np.float64).reshape(-1, 5, 2),
        valid=valid,
        template_index=np.asarray(templates, dtype=np.int64),
    )


def detect_faces(frame: torch.Tensor, detector: FaceDetector) -> list[Face]:
    """Faces of one [H, W, 3] frame (uint8, or float in 0..1), in the frame's pixels.

    A frame larger than the detector's `detect_max_side` is detected, landmarks included, on a copy scaled
    down to it and the faces are scaled back: a 24 MP photo then costs no full-size copy, only the small one.
    """
    h, w = frame.shape[:2]
    scale = detector.detect_max_side / max(h, w)
    if scale >= 1.0:
        return detector.detect(to_uint8(frame))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    small = F.interpolate(frame.permute(2, 0, 1)[None], size=size, mode="bilinear", antialias=True)[0].permute(1, 2, 0)
    factor = np.array([w / size[1], h / size[0]])

    def to_frame(points: np.ndarray) -> np.ndarray:  # pixel centres sit at integer coordinates
        return ((points.reshape(-1, 2) + 0.5) * factor - 0.5).reshape(points.shape)

    faces = detector.detect(to_uint8(small))
    return [replace(f, box=to_frame(f.box), landmarks=to_frame(f.landmarks), points5=to_frame(f.points5)) for f in faces]


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
    images = to_image_batch(images, keep_uint8=True)
    b, h, w, _ = images.shape
    rows: dict[str, list] = {"frame_index": [], "landmarks": [], "points5": [], "valid": []}
    k = 68 if detector.landmarks == "68" else 5
    for frame in range(b):
        faces = choose_faces(detect_faces(images[frame], detector), choice, index, frame)
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


def _source_region(matrix: np.ndarray, size: int, frame_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """The frame pixels (x0, y0, x1, y1) a crop reads: its footprint plus the resampling margin, clipped.

    The origin sits on a multiple of the anti-alias factor so the box filter sees the same pixel blocks as on
    the whole frame: the crop comes out as it would from the whole frame.
    """
    factor = antialias_factor(matrix)
    edges = [-0.5, size - 0.5]
    corners = transform_points(invert_affine(matrix), [[x, y] for x in edges for y in edges])
    margin = 4 * factor + 2  # bicubic reads two (pooled) pixels past the footprint; a cut partial block lies beyond
    h, w = frame_hw
    x0 = max(0, math.floor(corners[:, 0].min()) - margin) // factor * factor
    y0 = max(0, math.floor(corners[:, 1].min()) - margin) // factor * factor
    x1 = min(w, math.ceil(corners[:, 0].max()) + margin + 1)
    y1 = min(h, math.ceil(corners[:, 1].max()) + margin + 1)
    return x0, y0, x1, y1


def extract_crops(images: torch.Tensor, crops: FaceCrops) -> torch.Tensor:
    """Warp every crop of `crops` out of its frame: IMAGE [N, size, size, 3].

    Each crop reads only the region of its frame it covers, so frames may be uint8 and are never converted
    to floats as a whole (a 24 MP photo would be 288 MB, a copy per step); a region that is shrunk is pooled
    from uint8 a band at a time, so even a face that fills the photo costs only its pooled copy as floats.
    """
    images = to_image_batch(images, keep_uint8=True)
    if images.shape[0] != crops.num_frames or tuple(images.shape[1:3]) != crops.frame_size:
        raise ValueError(
            f"these crops were made from {crops.num_frames} frame(s) of {crops.frame_size[1]}x{crops.frame_size[0]} px; "
            f"got {images.shape[0]} of {images.shape[2]}x{images.shape[1]} px. Connect the same images the crops came from."
        )
    out = torch.zeros(len(crops), crops.size, crops.size, 3, device=images.device)
    for row, (frame, matrix) in enumerate(zip(crops.frame_index, crops.matrices)):
        x0, y0, x1, y1 = _source_region(matrix, crops.size, crops.frame_size)
        if x1 <= x0 or y1 <= y0:
            continue  # the crop lies wholly outside its frame: black, as warping pads
        region = images[frame, y0:y1, x0:x1]  # a view: uint8 stays uint8, warp_affine pools it band by band
        shifted = matrix.copy()
        shifted[:, 2] += matrix[:, :2] @ [x0, y0]  # region pixels -> frame pixels -> crop pixels
        crop = warp_affine(region.permute(2, 0, 1)[None], shifted[None], (crops.size, crops.size))
        out[row] = crop[0].clamp(0, 1).permute(1, 2, 0)
    return out
