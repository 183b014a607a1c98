"""Write tests/fixtures/sketches_cv2.npz: reference landmark sketches drawn by OpenCV itself.

Each case is Einstein's hand-labelled landmarks (tests/fixtures/einstein.pts) placed in a sketch frame and
posed, drawn the way the official reenactment demo draws them: `int(float(x))` on every coordinate, the
turned-face test on those whole pixels, then one `cv2.line(img, p, q, (255, 255, 255), thickness)` per
stroke segment on a float64 3-channel image. The cases cover the three stroke sets, truncation at the
30 px pose threshold and of negative coordinates, strokes leaving the frame, and thickness 1, 2 and 4.

Run it with OpenCV 4.7 (the version the official demo pins; it needs numpy < 2):
    pip install --target /tmp/cv47 opencv-python-headless==4.7.0.72 "numpy<2"
    PYTHONPATH=/tmp/cv47:. python tools/make_sketch_fixtures.py
"""
from pathlib import Path

import cv2
import numpy as np

from age_reenact.reenact.sketch import STROKES, line_width

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def official_variant(pixels: np.ndarray, size: int) -> str:
    """The demo's stroke choice, written out from its `show_map`, on truncated pixels (30 px at 256)."""
    x, threshold = pixels[:, 0], 30 * size / 256
    if x[42] - x[36] <= threshold and x[30] > x[42]:
        return "turned_right"
    if x[45] - x[39] <= threshold and x[30] < x[42]:
        return "turned_left"
    return "frontal"


def cv2_sketch(landmarks: np.ndarray, size: int) -> np.ndarray:
    pixels = np.array([[int(float(x)), int(float(y))] for x, y in landmarks])
    variant = official_variant(pixels, size)
    image = np.zeros((size, size, 3))
    for stroke in STROKES[variant]:
        for a, b in zip(stroke, stroke[1:]):
            cv2.line(image, tuple(map(int, pixels[a])), tuple(map(int, pixels[b])), (255, 255, 255), line_width(size))
    return image[..., 0] > 0


def cases() -> dict[str, tuple[np.ndarray, int]]:
    points = np.loadtxt(FIXTURES / "einstein.pts", skiprows=3, max_rows=68) - 1.0
    # Into a 256 frame: eyes about 75 px apart, centred a little above the middle (not a pack crop on purpose).
    eyes = points[36:48].mean(0)
    frontal = (points - eyes) * 75 / np.ptp(points[36:48, 0]) + np.array([128.3, 110.6])
    right = frontal.copy()
    right[42:48, 0] += right[36, 0] + 25.4 - right[42, 0]  # the far eye's inner corner 25 px from the near eye's outer one
    right[30, 0] = right[42, 0] + 5.2  # and the nose tip beyond it
    left = frontal.copy()
    left[36:42, 0] += left[45, 0] - 25.6 - left[39, 0]
    left[30, 0] = left[42, 0] - 5.3
    threshold = right.copy()  # float gap 30.7 px, truncated gap exactly 30: turned, as the demo decides
    threshold[36, 0], threshold[42, 0], threshold[30, 0] = 100.2, 130.9, 136.4
    closeup = (frontal - 128) * 1.9 + np.array([128, 150])  # jaw and chin far outside the frame
    edge = frontal - frontal[:, 0].min() - 0.6  # the jaw at x in (-1, 0): int() truncates it to 0
    return {
        "frontal_256": (frontal, 256),
        "turned_right_256": (right, 256),
        "turned_left_256": (left, 256),
        "threshold_256": (threshold, 256),
        "closeup_256": (closeup, 256),
        "edge_256": (edge, 256),
        "frontal_512": (frontal * 2, 512),
        "frontal_128": (frontal / 2, 128),
    }


def main() -> None:
    arrays = {}
    for name, (landmarks, size) in cases().items():
        arrays[f"{name}_landmarks"] = landmarks
        arrays[f"{name}_sketch"] = np.packbits(cv2_sketch(landmarks, size), axis=-1)
    np.savez_compressed(FIXTURES / "sketches_cv2.npz", opencv=cv2.__version__, **arrays)
    print(f"wrote {FIXTURES / 'sketches_cv2.npz'} with OpenCV {cv2.__version__}: {', '.join(cases())}")


if __name__ == "__main__":
    main()
