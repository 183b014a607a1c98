"""The three crop conventions of the published systems, as 5-point templates.

Points are (left eye centre, right eye centre, nose tip, left mouth corner, right mouth corner) in image
order (left = smaller x). Numbers are those of the official code (see docs/reference in the shared docs):
- AgeTransGAN: insightface's five multi-pose templates at 112 px; the best-fitting one is used, scaled to
  the output size (1024 for the official generators).
- ArcFace 112: the template MTLFace (and the AIFD encoder) expects.
- Dual-generator reenactor: the 96x112 SphereFace template x2, shifted +31.9721 px in x, at 256 px.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CropConvention:
    name: str
    reference_size: int  # the template's own pixel frame
    templates: tuple[np.ndarray, ...]  # each (5, 2), in reference_size pixels
    description: str

    def scaled(self, size: int) -> list[np.ndarray]:
        return [t * (size / self.reference_size) for t in self.templates]


def _points(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64)


AGETRANSGAN = CropConvention(
    name="agetransgan",
    reference_size=112,
    templates=(
        _points([[51.642, 50.115], [57.617, 49.990], [35.740, 69.007], [51.157, 89.050], [57.025, 89.702]]),
        _points([[45.031, 50.118], [65.568, 50.872], [39.677, 68.111], [45.177, 86.190], [64.246, 86.758]]),
        _points([[39.730, 51.138], [72.270, 51.138], [56.000, 68.493], [42.463, 87.010], [69.537, 87.010]]),
        _points([[46.845, 50.872], [67.382, 50.118], [72.737, 68.111], [48.167, 86.758], [67.236, 86.190]]),
        _points([[54.796, 49.990], [60.771, 50.115], [76.673, 69.007], [55.388, 89.702], [61.257, 89.050]]),
    ),
    description="AgeTransGAN: five multi-pose templates, best fit chosen",
)

ARCFACE = CropConvention(
    name="arcface",
    reference_size=112,
    templates=(
        _points([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]),
    ),
    description="ArcFace 112 (MTLFace / AIFD encoder input)",
)

_SPHEREFACE_96x112 = _points(
    [[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655], [62.7299, 92.2041]]
)
REENACTOR = CropConvention(
    name="reenactor",
    reference_size=256,
    templates=(_SPHEREFACE_96x112 * 2.0 + np.array([31.9721, 0.0]),),
    description="Dual-generator reenactor 256 crop",
)

CONVENTIONS: dict[str, CropConvention] = {c.name: c for c in (AGETRANSGAN, ARCFACE, REENACTOR)}


def get_convention(name: str) -> CropConvention:
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise ValueError(f"unknown crop convention {name!r}; choose one of {sorted(CONVENTIONS)}") from None


def five_points_from_68(landmarks: np.ndarray) -> np.ndarray:
    """Standard 5 points from iBUG 68 landmarks: eye centres (mean of six points each), nose tip, mouth corners.

    AgeTransGAN's code averages only five right-eye points (an off-by-one); the full six are used here,
    a sub-pixel difference that keeps one rule for every convention.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])
