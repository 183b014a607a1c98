"""Faces of a whole image dataset, detected once, with a fallback for pre-cropped sets.

Where the detector finds no face, the median 5 points of the faces found in images of the same size
stand in: right for datasets of pre-aligned chips (UTKFace, LFW deep-funneled), where HOG misses a few
percent of faces that are nonetheless in the usual place.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..images import ImageInputError, load_image, to_uint8
from .crop import choose_faces
from .detect import Face, FaceDetector


@dataclass
class DatasetFace:
    frame_size: tuple[int, int]
    face: Face | None  # the largest detected face, or None
    points5: np.ndarray | None  # detected, or the same-size median; None if there is nothing to borrow

    @property
    def detected(self) -> bool:
        return self.face is not None


def detect_dataset_faces(paths: Sequence[Path], detector: FaceDetector, desc: str = "detecting faces") -> list[DatasetFace | None]:
    """One entry per path (None for unreadable images), largest face per image, with the median fallback."""
    from tqdm import tqdm

    found: list[DatasetFace | None] = []
    for path in tqdm(paths, desc=desc, dynamic_ncols=True):
        try:
            image = load_image(path)
        except ImageInputError:
            found.append(None)
            continue
        faces = choose_faces(detector.detect(to_uint8(image[0])), "largest", 0, 0)
        face = faces[0] if faces else None
        found.append(DatasetFace(tuple(image.shape[1:3]), face, face.points5 if face else None))
    by_size: dict[tuple[int, int], list[np.ndarray]] = {}
    for entry in found:
        if entry is not None and entry.face is not None:
            by_size.setdefault(entry.frame_size, []).append(entry.points5)
    medians = {size: np.median(np.stack(points), axis=0) for size, points in by_size.items()}
    for entry in found:
        if entry is not None and entry.face is None:
            entry.points5 = medians.get(entry.frame_size)
    return found
