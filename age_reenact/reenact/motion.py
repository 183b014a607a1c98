"""Motion transfer from the driving frames to the source face, and landmark smoothing across frames.

Both work on a video one chunk at a time and keep their state between chunks.

- absolute (the paper's method): the driver's landmarks go through the shape generator (IDSG) with the
  source's identity code, which redraws the driver's pose and expression on the source's face shape;
  then the demo's eyelid rebuild.
- relative: the driver's motion since its first face frame is added to the source's own landmarks
  (target = source + driver_t - driver_first). It needs no identity code and keeps the source's shape
  exactly; it assumes the first driving frame shows a neutral pose similar to the source's. Landmarks
  are in the aligned reenactor crop, so head size, position and roll are already normalised away.

Smoothing: a one-euro filter (Casiez et al., CHI 2012) on the driver's landmarks in frame pixels, before
the crop is fitted, so both the sketch and the paste-back position stop jittering. Cut-offs are in
cycles per frame; speed is measured in inter-ocular distances per frame, so it does not depend on the
frame size.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .sketch import rebuild_eyelids

MODES = ("absolute", "relative")


class OneEuroFilter:
    """Adaptive low-pass filter over a stream of point sets [K, 2]: smooth when still, quick when moving."""

    def __init__(self, min_cutoff: float, beta: float = 2.0, d_cutoff: float = 0.1):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.reset()

    @staticmethod
    def _alpha(cutoff: np.ndarray | float) -> np.ndarray | float:
        tau = 2.0 * math.pi * cutoff  # one sample per frame
        return tau / (tau + 1.0)

    def reset(self) -> None:
        self.value: np.ndarray | None = None
        self.speed: np.ndarray | None = None

    def __call__(self, points: np.ndarray, scale: float = 1.0) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64)
        if self.value is None:
            self.value, self.speed = points.copy(), np.zeros(len(points))
            return points.copy()
        raw_speed = np.linalg.norm(points - self.value, axis=-1) / max(scale, 1e-6)
        a = self._alpha(self.d_cutoff)
        self.speed = a * raw_speed + (1 - a) * self.speed
        alpha = self._alpha(self.min_cutoff + self.beta * self.speed)[:, None]
        self.value = self.value + alpha * (points - self.value)
        return self.value.copy()


def smoothing_filter(strength: float) -> OneEuroFilter | None:
    """Filter for a user-facing strength in 0..1 (0 = off): the rest cut-off falls from 0.4 to 0.012
    cycles per frame, log-linearly."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"smoothing must be within 0..1, got {strength}")
    return OneEuroFilter(min_cutoff=0.4 * 0.03**strength) if strength > 0 else None


def relative_landmarks(source: np.ndarray, driving: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """source [68, 2] + (driving [N, 68, 2] - reference [68, 2])."""
    return np.asarray(source)[None] + (np.asarray(driving) - np.asarray(reference)[None])


class MotionTransfer:
    """Target landmarks for successive chunks of driver landmarks (normalised crop coordinates, 0..1).

    shape_fn: driver landmarks [N, 68, 2] -> IDSG output [N, 68, 2]; needed for the absolute mode.
    """

    def __init__(self, mode: str, source: np.ndarray, shape_fn: Callable[[np.ndarray], np.ndarray] | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "absolute" and shape_fn is None:
            raise ValueError("the absolute mode needs the shape generator and the source's identity code.")
        self.mode = mode
        self.source = np.asarray(source, dtype=np.float64)
        self.shape_fn = shape_fn
        self.reference: np.ndarray | None = None  # the driver's first face frame

    def __call__(self, driving: np.ndarray) -> np.ndarray:
        driving = np.asarray(driving, dtype=np.float64).reshape(-1, 68, 2)
        if len(driving) == 0:
            return driving.copy()
        if self.mode == "relative":
            if self.reference is None:
                self.reference = driving[0].copy()
            return relative_landmarks(self.source, driving, self.reference)
        return rebuild_eyelids(self.shape_fn(driving), driving)
