"""The landmarks of one face through a video: full detection on keyframes, the landmark predictor alone between.

Detection (MTCNN's image pyramid, or HOG) takes 20-80 ms a frame on a CPU; dlib's 68-point predictor takes
1-3 ms. Between keyframes the predictor runs inside the box that the previous frame's landmarks give: the
detector's box as it lay relative to the landmarks at the last detection, so the predictor sees the
framing it was trained on. MTCNN's last stage (O-Net, 48 px) then checks that the landmarks still frame a
face; where they do not (a cut, the face left or was covered) the frame is detected in full. On the
synthetic drivers of benchmarks/bench_reenactor.py, tracked landmarks are as close to the true motion as
per-frame detection (docs/results/video_cpu.md).
"""
from __future__ import annotations

import numpy as np
import torch

from .detect import FaceDetector, largest, load_mtcnn
from .mtcnn import crop_windows, network_input


def _centre_and_scale(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """The landmarks' centre and RMS radius: a frame for the box that moves, scales with the face."""
    centre = landmarks.mean(0)
    return centre, float(np.sqrt(((landmarks - centre) ** 2).sum(1).mean()))


@torch.no_grad()
def face_score(image: np.ndarray, landmarks: np.ndarray) -> float:
    """MTCNN O-Net's probability that the square around the landmarks holds a face (uint8 RGB frame)."""
    low, high = landmarks.min(0), landmarks.max(0)
    half = (high - low).max() / 2
    box = np.concatenate([(low + high) / 2 - half, (low + high) / 2 + half])
    h, w = image.shape[:2]
    x0, y0 = (int(max(v, 0)) for v in np.floor(box[:2]))
    x1, y1 = int(min(np.ceil(box[2]) + 1, w)), int(min(np.ceil(box[3]) + 1, h))
    if x1 <= x0 or y1 <= y0:
        return 0.0
    region = network_input(image[y0:y1, x0:x1])  # only the box's region is converted
    return float(load_mtcnn().onet(crop_windows(region, box[None] - [x0, y0, x0, y0], 48))[2])


class LandmarkTracker:
    """The 68 landmarks of the largest face, frame after frame; call it on successive uint8 RGB frames.

    detect_every: a full detection at least every this many frames (1: every frame, no tracking); the
        keyframes pick up a larger face that came in and bound any drift.
    min_score: O-Net's face probability below which a tracked frame is detected in full (MTCNN's own
        last-stage threshold).
    """

    def __init__(self, detector: FaceDetector, detect_every: int = 10, min_score: float = 0.7):
        if detect_every < 1:
            raise ValueError(f"detect_every must be at least 1, got {detect_every}")
        if detector.landmarks != "68":
            raise ValueError("tracking checks the face square the 68 landmarks span; use a detector with landmarks='68'.")
        self.detector, self.detect_every, self.min_score = detector, detect_every, min_score
        self.detections = 0  # full detections run, for benchmarks and tests
        self.reset()

    def reset(self) -> None:
        self.previous: np.ndarray | None = None
        self.box_in_face = np.zeros(4)  # the detector's box in the landmarks' centre/scale frame
        self.since_detection = 0

    def _detect(self, image: np.ndarray) -> np.ndarray | None:
        self.detections += 1
        face = largest(self.detector.detect(image))
        if face is None:
            self.reset()
            return None
        centre, scale = _centre_and_scale(face.landmarks)
        self.previous, self.since_detection = face.landmarks, 1
        self.box_in_face = (face.box - np.tile(centre, 2)) / scale
        return face.landmarks

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        if self.previous is None or self.since_detection >= self.detect_every:
            return self._detect(image)
        centre, scale = _centre_and_scale(self.previous)
        landmarks = self.detector.landmarks_in(image, np.tile(centre, 2) + self.box_in_face * scale)
        if face_score(image, landmarks) < self.min_score:
            return self._detect(image)
        self.previous = landmarks
        self.since_detection += 1
        return landmarks
