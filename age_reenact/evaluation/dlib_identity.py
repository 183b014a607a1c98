"""dlib's public-domain face recognition network (ResNet-29, 128-d): the identity reference.

Two faces are the same person when their embeddings are closer than 0.6 (euclidean), dlib's threshold.
Used to measure identity kept by an edit, and as the teacher of the AIFD encoder's distillation.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..face.detect import Face, _import_dlib, dlib_model_path

SAME_PERSON_DISTANCE = 0.6


@lru_cache(maxsize=None)
def _recognition_model():
    return _import_dlib().face_recognition_model_v1(str(dlib_model_path("recognition")))


def dlib_embedding(image: np.ndarray, face: Face) -> np.ndarray:
    """128-d embedding of one detected face in a uint8 RGB frame (dlib aligns its own 150 px chip)."""
    dlib = _import_dlib()
    x0, y0, x1, y1 = (int(round(v)) for v in face.box)
    points = [dlib.point(int(round(x)), int(round(y))) for x, y in face.landmarks]
    shape = dlib.full_object_detection(dlib.rectangle(x0, y0, x1 - 1, y1 - 1), points)
    return np.asarray(_recognition_model().compute_face_descriptor(image, shape), dtype=np.float32)


def identity_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)))
