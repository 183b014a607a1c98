"""Face pose maps drawn from 68 iBUG landmarks in the formats the public face ControlNets were trained on.

All maps are RGB on black. Sizes are those of the annotators at their 512 px detect resolution and
scale with the map size (`unit` = longest side / 512):
- openpose_face (lllyasviel control_v11p_sd15_openpose, face part of "Openpose Full"): 70 white filled
  circles of radius 3 px, the 68 points plus the two pupils (here: the eye centroids).
- mediapipe_face (CrucibleAI ControlNetMediaPipeFace): contours of width 2 px in MediaPipe's colour code,
  pupils as 4x4 px squares. The face oval is the jaw closed by a half-ellipse over the forehead, and the
  contours follow 68 points rather than FaceMesh's 468, so this is an approximation of that annotator.
- dlib68 (Face-Landmark-ControlNet, control_sd15_landmarks): 68 white dots of radius 2.5 px.
"Right" in the colour names is the subject's right, which is the image's left (dlib 17-21 and 36-41).
Points outside the canvas are skipped, as the annotators do.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

STYLES = ("openpose_face", "mediapipe_face", "dlib68")

# RGB values of the MediaPipe-face annotator's output (it writes BGR colours, then flips the channels).
MEDIAPIPE_COLORS = {
    "face_oval": (10, 200, 10),
    "lips": (10, 180, 10),
    "right_eye": (180, 200, 10),
    "right_brow": (180, 220, 10),
    "right_pupil": (250, 200, 10),
    "left_eye": (10, 200, 180),
    "left_brow": (10, 220, 180),
    "left_pupil": (10, 200, 250),
}
WHITE = (255, 255, 255)

# (landmark indices, closed) per MediaPipe contour, in iBUG-68 numbering.
_CONTOURS = {
    "right_brow": (range(17, 22), False),
    "left_brow": (range(22, 27), False),
    "right_eye": (range(36, 42), True),
    "left_eye": (range(42, 48), True),
    "lips": (range(48, 60), True),
    "lips_inner": (range(60, 68), True),
}


def pupils(landmarks: np.ndarray) -> np.ndarray:
    """(2, 2): the subject's right then left pupil, placed at the eye contour centroids."""
    return np.stack([landmarks[36:42].mean(0), landmarks[42:48].mean(0)])


def face_oval(landmarks: np.ndarray, samples: int = 24) -> np.ndarray:
    """Closed face contour: the jaw (0..16) plus a half-ellipse over the forehead back to point 0.

    The ellipse's height reaches the brows plus the eyes-to-mouth distance, about where FaceMesh's
    oval meets the hairline; it follows the face's roll because its axes come from the jaw ends.
    """
    jaw = landmarks[:17]
    centre = (jaw[0] + jaw[16]) / 2
    half_width = (jaw[16] - jaw[0]) / 2
    eyes, mouth = pupils(landmarks).mean(0), landmarks[48:60].mean(0)
    up = np.array([half_width[1], -half_width[0]])
    up /= max(np.linalg.norm(up), 1e-6)
    if np.dot(up, eyes - mouth) < 0:
        up = -up
    brow_height = max(0.0, float(np.dot(landmarks[17:27].mean(0) - centre, up)))
    height = brow_height + np.linalg.norm(eyes - mouth)
    theta = np.linspace(0.0, np.pi, samples)[1:-1]  # from the left jaw end (16) over the top to 0
    arc = centre + np.outer(np.cos(theta), half_width) + np.outer(np.sin(theta), up * height)
    return np.concatenate([jaw, arc])


def _inside(point: np.ndarray, size: tuple[int, int]) -> bool:
    h, w = size
    return bool(np.isfinite(point).all() and 0 < point[0] < w and 0 < point[1] < h)


def _dots(draw: ImageDraw.ImageDraw, points: np.ndarray, radius: float, size: tuple[int, int], color=WHITE) -> None:
    for x, y in points:
        if _inside(np.array([x, y]), size):
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color)


def _polyline(draw: ImageDraw.ImageDraw, points: np.ndarray, closed: bool, width: int, color) -> None:
    if closed:
        points = np.vstack([points, points[:1]])
    draw.line([tuple(p) for p in points], fill=color, width=width, joint="curve")


def draw_pose_map(landmarks: np.ndarray, size: int | tuple[int, int], style: str = "openpose_face") -> np.ndarray:
    """One pose map [H, W, 3] uint8 from 68 landmarks in the map's pixel coordinates.

    NaN landmarks (a frame without a face) give an all-black map, which a ControlNet reads as "no face".
    """
    if style not in STYLES:
        raise ValueError(f"unknown pose map style {style!r}; choose one of {STYLES}")
    h, w = (size, size) if isinstance(size, int) else size
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (68, 2):
        raise ValueError(f"pose maps are drawn from 68 iBUG landmarks (68, 2), got shape {landmarks.shape}.")
    canvas = Image.new("RGB", (w, h), (0, 0, 0))
    if not np.isfinite(landmarks).all():
        return np.asarray(canvas)
    draw = ImageDraw.Draw(canvas)
    unit = max(h, w) / 512.0
    if style == "openpose_face":
        _dots(draw, np.vstack([landmarks, pupils(landmarks)]), max(1.0, 3.0 * unit), (h, w))
    elif style == "dlib68":
        _dots(draw, landmarks, max(1.0, 2.5 * unit), (h, w))
    else:
        width = max(1, round(2 * unit))
        _polyline(draw, face_oval(landmarks), True, width, MEDIAPIPE_COLORS["face_oval"])
        for name, (index, closed) in _CONTOURS.items():
            color = MEDIAPIPE_COLORS["lips" if name.startswith("lips") else name]
            _polyline(draw, landmarks[list(index)], closed, width, color)
        half = max(1.0, 2.0 * unit)
        for name, (x, y) in zip(("right_pupil", "left_pupil"), pupils(landmarks)):
            draw.rectangle([x - half, y - half, x + half - 1, y + half - 1], fill=MEDIAPIPE_COLORS[name])
    return np.asarray(canvas)


def draw_pose_maps(landmarks: np.ndarray | Sequence[np.ndarray], size: int | tuple[int, int], style: str = "openpose_face") -> torch.Tensor:
    """Pose maps for a batch of landmark sets (N, 68, 2): IMAGE [N, H, W, 3] float in 0..1."""
    maps = [draw_pose_map(points, size, style) for points in landmarks]
    return torch.from_numpy(np.stack(maps).astype(np.float32) / 255.0)
