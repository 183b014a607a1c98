"""Face datasets for training: faces aligned once and cached.

Each image is detected and aligned with a crop convention of the face package, and stored as a uint8
"canvas": the aligned crop of `size` px with a margin around it, so training can jitter the alignment
(rotation, scale, shift) by warping inside the canvas instead of re-reading files.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch

from age_reenact.face.align import warp_affine
from age_reenact.face.crop import crops_from_points, extract_crops
from age_reenact.face.dataset import detect_dataset_faces
from age_reenact.face.detect import FaceDetector
from age_reenact.images import load_image, to_uint8
from age_reenact.labels import LabelledImage

def _canvas_size(size: int, margin: float) -> int:
    return size + 2 * int(math.ceil(size * margin / 2))


class AlignedFaces:
    """Aligned canvases [N, C, C, 3] uint8 for a list of images, built once and cached on disk.

    Images where the detector finds no face take the median alignment of same-size images
    (`age_reenact.face.dataset`); their count is kept in `fallbacks`.
    """

    def __init__(self, items: list[LabelledImage], convention: str, size: int, margin: float = 0.25, cache_dir: str | Path | None = None, upsample: int = 1):
        self.items = items
        self.convention, self.size = convention, size
        self.canvas = _canvas_size(size, margin)
        key = hashlib.sha1(json.dumps([convention, size, self.canvas, upsample, [str(i.path) for i in items]]).encode()).hexdigest()[:16]
        cache = Path(cache_dir) / f"faces_{convention}_{size}_{key}.npz" if cache_dir else None
        if cache is not None and cache.is_file():
            data = np.load(cache)
            self.images, self.detected = data["images"], data["detected"]
        else:
            self.images, self.detected = self._build(upsample)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(".tmp.npz")
                np.savez(tmp, images=self.images, detected=self.detected)
                tmp.replace(cache)
        self.fallbacks = int((~self.detected).sum())

    def _build(self, upsample: int) -> tuple[np.ndarray, np.ndarray]:
        from tqdm import tqdm

        found = detect_dataset_faces([i.path for i in self.items], FaceDetector(upsample=upsample))
        images = np.zeros((len(self.items), self.canvas, self.canvas, 3), dtype=np.uint8)
        detected = np.zeros(len(self.items), dtype=bool)
        offset = (self.canvas - self.size) / 2
        for index, (item, entry) in enumerate(zip(tqdm(self.items, desc="aligning faces", dynamic_ncols=True), found)):
            if entry is None or entry.points5 is None:
                continue  # unreadable, or no face and no same-size face to borrow an alignment from
            detected[index] = entry.detected
            crops = crops_from_points(entry.frame_size, 1, [0], [np.zeros((5, 2))], [entry.points5], self.convention, self.size)
            crops.matrices[:, :, 2] += offset  # the canvas: the crop with a margin on every side
            crops.size = self.canvas
            images[index] = to_uint8(extract_crops(load_image(item.path), crops)[0])
        return images, detected

    def __len__(self) -> int:
        return len(self.items)

    def crops(self, indices: torch.Tensor | np.ndarray, generator: torch.Generator | None = None, jitter: dict | None = None) -> torch.Tensor:
        """Float crops [B, 3, size, size] in 0..1; with `jitter`, random similarity and flip per crop."""
        canvas = torch.from_numpy(self.images[np.asarray(indices)]).permute(0, 3, 1, 2).float() / 255.0
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
            return canvas[:, :, int(offset) : int(offset) + self.size, int(offset) : int(offset) + self.size].contiguous()
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        # canvas px -> crop px: rotate/scale about the crop centre, then shift.
        matrices = torch.zeros(b, 2, 3, dtype=torch.float64)
        matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 1, 0], matrices[:, 1, 1] = cos, -sin, sin, cos
        source_centre = torch.tensor([centre + offset, centre + offset], dtype=torch.float64)
        matrices[:, :, 2] = centre + shift - (matrices[:, :, :2] @ source_centre)
        crops = warp_affine(canvas, matrices, (self.size, self.size)).clamp(0, 1)
        flip = torch.rand(b, generator=generator) < jitter.get("flip", 0.5)
        crops[flip] = crops[flip].flip(-1)
        if jitter.get("color", 0):
            strength = jitter["color"]
            gain = 1 + (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * strength
            bias = (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * strength / 2
            channel = 1 + (torch.rand(b, 3, 1, 1, generator=generator) * 2 - 1) * strength / 3
            grey = torch.rand(b, generator=generator) < jitter.get("grey", 0.0)
            crops = (crops * gain * channel + bias).clamp(0, 1)
            crops[grey] = crops[grey].mean(1, keepdim=True).expand(-1, 3, -1, -1)
        return crops
