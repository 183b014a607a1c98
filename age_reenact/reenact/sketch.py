"""Landmark sketches, the RFG's input: white (1.0) lines on black at the model size.

Pixel for pixel the official demo's renderer: landmarks truncated to whole pixels (`int()`), each stroke
segment drawn by `cv2.line` at thickness 2 at 256 px (scaled with the size; `cv_line` reimplements it),
and a pose-dependent choice of strokes. When the face is turned so far that the eyes' horizontal extent on
one side is at most 30 px (at 256, on the truncated pixels) and the nose tip has crossed the inner eye
corner, only the visible half is drawn (its jaw line, brow, eye, nostril and mouth half), as the official
sketches do. Training sketches were 0/1 images, so lines are drawn without anti-aliasing.

Also here: the demo's eyelid rebuild, applied to the shape generator's output before drawing.
"""
from __future__ import annotations

import numpy as np
import torch

from .cv_line import draw_line

REFERENCE_SIZE = 256  # the official renderer's pixel frame: line width 2, pose threshold 30 px
LINE_WIDTH = 2
POSE_THRESHOLD = 30.0


def _chain(first: int, last: int) -> list[int]:
    return list(range(first, last + 1))


# Strokes as polylines of iBUG-68 indices.
FRONTAL = (
    _chain(0, 16),  # jaw
    _chain(17, 21),  # brows
    _chain(22, 26),
    _chain(27, 30),  # nose bridge
    _chain(31, 35),  # nostrils
    _chain(36, 41) + [36],  # eyes (closed)
    _chain(42, 47) + [42],
    _chain(48, 59) + [48],  # outer lips
    _chain(60, 67) + [60],  # inner lips
)
# Nose tip right of the right eye's inner corner: the image-left half of the face is the visible one.
TURNED_RIGHT = (
    _chain(0, 12),
    _chain(17, 21),
    _chain(27, 30),
    _chain(31, 33),
    _chain(36, 41) + [36],
    [59, 48, 49, 50, 51, 62, 61, 60, 67, 66, 57, 58, 59],  # the left half of the mouth
)
TURNED_LEFT = (
    _chain(4, 16),
    _chain(22, 26),
    _chain(27, 30),
    _chain(33, 35),
    _chain(42, 47) + [42],
    _chain(51, 57) + [66, 65, 64, 63, 62, 51],  # the right half of the mouth
)
STROKES = {"frontal": FRONTAL, "turned_right": TURNED_RIGHT, "turned_left": TURNED_LEFT}


def line_width(size: int) -> int:
    return max(1, round(LINE_WIDTH * size / REFERENCE_SIZE))


def _whole_pixels(landmarks: np.ndarray) -> np.ndarray:
    """Landmarks truncated towards zero, as the demo's `int(float(x))` does before testing and drawing."""
    return np.trunc(np.asarray(landmarks, dtype=np.float64)).astype(np.int64)


def pose_variant(landmarks: np.ndarray, size: int) -> str:
    """Which strokes the official renderer draws for these landmarks (pixels at `size`)."""
    x = _whole_pixels(landmarks)[:, 0]
    threshold = POSE_THRESHOLD * size / REFERENCE_SIZE
    if x[42] - x[36] <= threshold and x[30] > x[42]:
        return "turned_right"
    if x[45] - x[39] <= threshold and x[30] < x[42]:
        return "turned_left"
    return "frontal"


def draw_sketch(landmarks: np.ndarray, size: int) -> np.ndarray:
    """One sketch: (68, 2) landmarks in pixels at `size` -> uint8 [size, size], 255 on the strokes."""
    canvas = np.zeros((size, size), dtype=np.uint8)
    width = line_width(size)
    pixels = _whole_pixels(landmarks).tolist()
    for stroke in STROKES[pose_variant(landmarks, size)]:
        for a, b in zip(stroke, stroke[1:]):  # segment by segment, as the demo calls cv2.line
            draw_line(canvas, pixels[a], pixels[b], 255, width)
    return canvas


def render_sketches(landmarks: np.ndarray, size: int) -> torch.Tensor:
    """Sketches of a batch: landmarks [N, 68, 2] in pixels at `size` -> float [N, 3, size, size] in {0, 1}.

    Rows with non-finite landmarks (frames without a face) give black sketches.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(-1, 68, 2)
    out = torch.zeros(len(landmarks), 3, size, size)
    for row, points in enumerate(landmarks):
        if np.isfinite(points).all():
            out[row] = torch.from_numpy(draw_sketch(points, size) > 0).float()
    return out


def rebuild_eyelids(target: np.ndarray, driver: np.ndarray) -> np.ndarray:
    """The demo's eyelid fix for shape-generator output (both [N, 68, 2], same units).

    The upper-lid points (37, 38, 43, 44) are rebuilt from the target's lower-lid points plus the driver's
    lid-opening vectors, scaled by the ratio of the target's to the driver's eye width (measured on the
    image-left eye, used for both, as the demo does), so blinks of the driver survive the shape generator.
    """
    target = np.array(target, dtype=np.float64, copy=True)
    driver = np.asarray(driver, dtype=np.float64)
    target_width = np.linalg.norm(target[:, 36] - target[:, 39], axis=-1)
    driver_width = np.linalg.norm(driver[:, 36] - driver[:, 39], axis=-1)
    ratio = (target_width / np.maximum(driver_width, 1e-12))[:, None]
    for upper, lower in ((37, 41), (38, 40), (43, 47), (44, 46)):
        target[:, upper] = target[:, lower] + (driver[:, upper] - driver[:, lower]) * ratio
    return target
