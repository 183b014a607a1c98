"""The three crop conventions of the published systems, as 5-point templates.

Points are (left eye centre, right eye centre, nose tip, left mouth corner, right mouth corner) in image
order (left = smaller x). Numbers are those of the official code (see docs/reference in the shared docs),
and so is each convention's rule for the eye points from 68 landmarks (`EYE_RULES`):
- AgeTransGAN: insightface's five multi-pose templates at 112 px; the best-fitting one is used, scaled to
  the output size (1024 for the official generators). Eyes: `img_process.five_point`'s means of points
  36-41 and 42-46 (its slice `lm[42:47]` leaves out the sixth right-eye point).
- ArcFace 112: the template MTLFace (and the AIFD encoder) expects; MTCNN's eye points are pupil
  estimates, which the six-point means approximate.
- Dual-generator reenactor: the 96x112 SphereFace template x2, shifted +31.9721 px in x, at 256 px.
  Eyes: `demo.get_arcface`'s eye-corner midpoints (36+39)/2 and (42+45)/2.
The official code's 200 px pad before `cv2.warpAffine` (AgeTransGAN) shifts both the landmarks and the
image, so it changes no crop: the frame->crop matrix here is the official one composed with that shift.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

# Eye points (left, right) from iBUG 68 landmarks, by the rule each official code uses.
EYE_RULES: dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "mean6": lambda lm: (lm[36:42].mean(0), lm[42:48].mean(0)),
    "agetransgan": lambda lm: (lm[36:42].mean(0), lm[42:47].mean(0)),
    "corners": lambda lm: ((lm[36] + lm[39]) / 2, (lm[42] + lm[45]) / 2),
}


@dataclass(frozen=True)
class CropConvention:
    name: str
    reference_size: int  # the template's own pixel frame
    templates: tuple[np.ndarray, ...]  # each (5, 2), in reference_size pixels
    description: str
    eyes: str = "mean6"  # the official eye rule (EYE_RULES)

    def scaled(self, size: int) -> list[np.ndarray]:
        return [t * (size / self.reference_size) for t in self.templates]

    def alignment_points(self, landmarks: np.ndarray, points5: np.ndarray) -> np.ndarray:
        """The five points the official code fits: from 68 landmarks by this convention's eye rule, else
        `points5` as given (the 5-point predictor's, or points from another tool)."""
        landmarks = np.asarray(landmarks, dtype=np.float64)
        if landmarks.shape == (68, 2) and np.isfinite(landmarks).all():
            return five_points_from_68(landmarks, self.eyes)
        return np.asarray(points5, dtype=np.float64)


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
    eyes="agetransgan",
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
    eyes="corners",
)

CONVENTIONS: dict[str, CropConvention] = {c.name: c for c in (AGETRANSGAN, ARCFACE, REENACTOR)}


def get_convention(name: str) -> CropConvention:
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise ValueError(f"unknown crop convention {name!r}; choose one of {sorted(CONVENTIONS)}") from None


def five_points_from_68(landmarks: np.ndarray, eyes: str = "mean6") -> np.ndarray:
    """5 points from iBUG 68 landmarks: the two eye points by `eyes` (an EYE_RULES name; by default the
    mean of six points each, the eye centres), nose tip 30, mouth corners 48 and 54."""
    lm = np.asarray(landmarks, dtype=np.float64)
    left, right = EYE_RULES[eyes](lm)
    return np.stack([left, right, lm[30], lm[48], lm[54]])
