"""Face datasets for training: faces aligned once and cached.

Each image is detected and aligned with a crop convention of the face package, and stored as a uint8
"canvas": the aligned crop of `size` px with a margin around it, so training can jitter the alignment
(rotation, scale, shift) by warping inside the canvas instead of re-reading files. The detected 68
landmarks are stored with the canvases (canvas pixels; NaN where no face was found) and follow every
jitter and flip of `crops_with_landmarks`, and of its optional smooth elastic warp (`elastic` in the
jitter dict). Caches written before landmarks were stored still load; a task that asks for landmarks
rebuilds such a cache once.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from age_reenact.face.align import transform_points, warp_affine
from age_reenact.face.crop import crops_from_points, extract_crops
from age_reenact.face.dataset import detect_dataset_faces
from age_reenact.face.detect import FaceDetector
from age_reenact.images import load_image, to_uint8
from age_reenact.labels import LabelledImage

from .photo_degrade import degrade

# iBUG-68 index of each point's mirror image: a flipped face's point i is the original's FLIP_68[i].
FLIP_68 = np.array(
    [*range(16, -1, -1), *range(26, 16, -1), 27, 28, 29, 30, 35, 34, 33, 32, 31, 45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,
     54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65]
)


ELASTIC_KNOTS = 4  # elastic warp: knots across the crop (a displacement per face region: eyes, nose, mouth)


def _canvas_size(size: int, margin: float) -> int:
    return size + 2 * int(math.ceil(size * margin / 2))


def elastic_field(batch: int, size: int, amplitude: float, spacing: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Smooth random displacements [B, 2, size, size] (x, y in px) of about `amplitude` px at most: uniform
    values on a grid of knots `spacing` px apart, bicubic-interpolated (smooth, so features bend, not tear)."""
    knots = int(math.ceil(size / spacing)) + 1
    coarse = (torch.rand(batch, 2, knots, knots, generator=generator, dtype=torch.float64) * 2 - 1) * amplitude
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)


def _grid(points: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel coordinates (pixel centres at integers) -> grid_sample's [-1, 1] with align_corners=True."""
    return points * (2 / (size - 1)) - 1


def elastic_warp(images: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """Output pixel x shows the input at x + field(x); images [B, C, S, S], field from `elastic_field`."""
    size = images.shape[-1]
    pixels = torch.stack(torch.meshgrid(torch.arange(size, dtype=field.dtype), torch.arange(size, dtype=field.dtype), indexing="xy"))
    grid = _grid(pixels + field, size).permute(0, 2, 3, 1).to(images.dtype)
    return F.grid_sample(images, grid, mode="bicubic", padding_mode="border", align_corners=True)


def elastic_points(points: np.ndarray, field: torch.Tensor, iterations: int = 6) -> np.ndarray:
    """Where `elastic_warp` moves points [B, N, 2] (px): the q with q + field(q) = p, by fixed-point
    iteration (a contraction: the field changes by well under 1 px per px)."""
    size = field.shape[-1]
    target = torch.from_numpy(np.asarray(points, dtype=np.float64))
    moved = target.clone()
    for _ in range(iterations):
        at = F.grid_sample(field, _grid(moved, size)[:, :, None], mode="bilinear", padding_mode="border", align_corners=True)
        moved = target - at[..., 0].permute(0, 2, 1)
    return moved.numpy()


class AlignedFaces:
    """Aligned canvases [N, C, C, 3] uint8 for a list of images, built once and cached on disk.

    Images where the detector finds no face take the median alignment of same-size images
    (`age_reenact.face.dataset`); their count is kept in `fallbacks`, and their `landmarks` are NaN.
    With `landmarks=True` a cache without stored landmarks is rebuilt. `detector` ("mtcnn" or "hog") finds the faces
    and is part of the cache key.
    """

    def __init__(
        self,
        items: list[LabelledImage],
        convention: str,
        size: int,
        margin: float = 0.25,
        cache_dir: str | Path | None = None,
        upsample: int = 1,
        landmarks: bool = False,
        detector: str = "mtcnn",
    ):
        self.items = items
        self.convention, self.size = convention, size
        self.canvas = _canvas_size(size, margin)
        # The detector is in the key: its landmarks place every crop, so caches of two detectors never mix.
        key = hashlib.sha1(json.dumps([convention, size, self.canvas, upsample, detector, [str(i.path) for i in items]]).encode()).hexdigest()[:16]
        cache = Path(cache_dir) / f"faces_{convention}_{size}_{key}.npz" if cache_dir else None
        data = np.load(cache) if cache is not None and cache.is_file() else None
        if data is not None and (not landmarks or "landmarks" in data):
            self.images, self.detected = data["images"], data["detected"]
            self.landmarks = data["landmarks"] if "landmarks" in data else None
        else:
            self.images, self.detected, self.landmarks = self._build(FaceDetector(upsample=upsample, detector=detector))
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(".tmp.npz")
                np.savez(tmp, images=self.images, detected=self.detected, landmarks=self.landmarks)
                tmp.replace(cache)
        self.fallbacks = int((~self.detected).sum())

    @classmethod
    def from_arrays(cls, items: list, convention: str, size: int, images: np.ndarray, landmarks: np.ndarray) -> "AlignedFaces":
        """Faces given as canvases [N, C, C, 3] uint8 and their landmarks [N, 68, 2] (canvas px, NaN: none), with
        no detection and no cache: synthetic faces for benchmarks and tests."""
        faces = cls.__new__(cls)
        faces.items, faces.convention, faces.size, faces.canvas = items, convention, size, images.shape[1]
        faces.images, faces.landmarks = images, landmarks.astype(np.float32)
        faces.detected = np.isfinite(faces.landmarks).all(axis=(1, 2))
        faces.fallbacks = int((~faces.detected).sum())
        return faces

    def _build(self, detector: FaceDetector) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from tqdm import tqdm

        found = detect_dataset_faces([i.path for i in self.items], detector)
        images = np.zeros((len(self.items), self.canvas, self.canvas, 3), dtype=np.uint8)
        detected = np.zeros(len(self.items), dtype=bool)
        landmarks = np.full((len(self.items), 68, 2), np.nan, dtype=np.float32)
        offset = (self.canvas - self.size) / 2
        for index, (item, entry) in enumerate(zip(tqdm(self.items, desc="aligning faces", dynamic_ncols=True), found)):
            if entry is None or entry.points5 is None:
                continue  # unreadable, or no face and no same-size face to borrow an alignment from
            detected[index] = entry.detected
            crops = crops_from_points(entry.frame_size, 1, [0], [np.zeros((5, 2))], [entry.points5], self.convention, self.size)
            crops.matrices[:, :, 2] += offset  # the canvas: the crop with a margin on every side
            crops.size = self.canvas
            images[index] = to_uint8(extract_crops(load_image(item.path), crops)[0])
            if entry.detected and len(entry.face.landmarks) == 68:
                landmarks[index] = transform_points(crops.matrices[0], entry.face.landmarks)
        return images, detected, landmarks

    def __len__(self) -> int:
        return len(self.items)

    def crops(self, indices: torch.Tensor | np.ndarray, generator: torch.Generator | None = None, jitter: dict | None = None) -> torch.Tensor:
        """Float crops [B, 3, size, size] in 0..1; with `jitter`, random similarity, smooth elastic warp (`elastic`:
        its amplitude as a share of `size`) and flip per crop, colour, grey,
        and the photo degradations of `photo_degrade.degrade` (downscale, blur, jpeg) where the dict asks for them."""
        return self._sample(indices, generator, jitter, with_landmarks=False)[0]

    def crops_with_landmarks(self, indices: torch.Tensor | np.ndarray, generator: torch.Generator | None = None, jitter: dict | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """`crops` plus their 68 landmarks [B, 68, 2] in crop pixels, moved (and mirrored) with each crop."""
        if self.landmarks is None:
            raise ValueError("these faces were cached without landmarks; build AlignedFaces with landmarks=True.")
        return self._sample(indices, generator, jitter, with_landmarks=True)

    def aligned_landmarks(self, indices: torch.Tensor | np.ndarray) -> np.ndarray:
        """The 68 landmarks [B, 68, 2] in pixels of the un-jittered crops (NaN where no face was detected)."""
        if self.landmarks is None:
            raise ValueError("these faces were cached without landmarks; build AlignedFaces with landmarks=True.")
        return self.landmarks[np.asarray(indices)].astype(np.float64) - (self.canvas - self.size) // 2

    def _sample(self, indices: torch.Tensor | np.ndarray, generator: torch.Generator | None, jitter: dict | None, with_landmarks: bool) -> tuple[torch.Tensor, np.ndarray | None]:
        indices = np.asarray(indices)
        canvas = torch.from_numpy(self.images[indices]).permute(0, 3, 1, 2).float() / 255.0
        points = self.landmarks[indices].astype(np.float64) if with_landmarks else None  # canvas px
        b = canvas.shape[0]
        offset = (self.canvas - self.size) / 2
        centre = self.size / 2 - 0.5
        angle = torch.zeros(b, dtype=torch.float64)
        scale = torch.ones(b, dtype=torch.float64)
        shift = torch.zeros(b, 2, dtype=torch.float64)
        if jitter:
            angle = (torch.rand(b, generator=generator, dtype=torch.float64) * 2 - 1) * math.radians(jitter.get("rotate", 0))
            scale = 1 + (torch.rand(b, generator=generator, dtype=torch.float64) * 2 - 1) * jitter.get("scale", 0)
            shift = (torch.rand(b, 2, generator=generator, dtype=torch.float64) * 2 - 1) * jitter.get("shift", 0) * self.size
        if not jitter:
            start = int(offset)
            return canvas[:, :, start : start + self.size, start : start + self.size].contiguous(), self.aligned_landmarks(indices) if with_landmarks else None
        if jitter.get("elastic", 0):
            # On the canvas, before the crop's similarity jitter: its margin fills what the warp pulls in.
            field = elastic_field(b, self.canvas, jitter["elastic"] * self.size, self.size / ELASTIC_KNOTS, generator)
            canvas = elastic_warp(canvas, field.float())
            points = elastic_points(points, field) if points is not None else None
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        # canvas px -> crop px: rotate/scale about the crop centre, then shift.
        matrices = torch.zeros(b, 2, 3, dtype=torch.float64)
        matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 1, 0], matrices[:, 1, 1] = cos, -sin, sin, cos
        source_centre = torch.tensor([centre + offset, centre + offset], dtype=torch.float64)
        matrices[:, :, 2] = centre + shift - (matrices[:, :, :2] @ source_centre)
        crops = warp_affine(canvas, matrices, (self.size, self.size)).clamp(0, 1)
        flip = torch.rand(b, generator=generator) < jitter.get("flip", 0.5)
        crops[flip] = crops[flip].flip(-1)
        if points is not None:
            points = np.stack([transform_points(m, p) for m, p in zip(matrices.numpy(), points)])
            mirrored = flip.numpy()
            points[mirrored, :, 0] = self.size - 1 - points[mirrored, :, 0]
            points[mirrored] = points[mirrored][:, FLIP_68]
        if jitter.get("color", 0):
            strength = jitter["color"]
            gain = 1 + (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * strength
            bias = (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * strength / 2
            channel = 1 + (torch.rand(b, 3, 1, 1, generator=generator) * 2 - 1) * strength / 3
            grey = torch.rand(b, generator=generator) < jitter.get("grey", 0.0)
            crops = (crops * gain * channel + bias).clamp(0, 1)
            crops[grey] = crops[grey].mean(1, keepdim=True).expand(-1, 3, -1, -1)
        if any(jitter.get(k, 0) for k in ("downscale", "blur", "jpeg")):
            crops = degrade(crops, generator, jitter)
        return crops, points
