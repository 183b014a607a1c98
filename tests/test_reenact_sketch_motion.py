"""Landmark sketches (official strokes, widths and pose variants), eyelid rebuild, motion transfer, smoothing."""
from __future__ import annotations

import numpy as np
import pytest

from age_reenact.face.crop import crops_from_points
from age_reenact.face.templates import five_points_from_68
from age_reenact.reenact.cv_line import draw_line
from age_reenact.reenact.motion import MotionTransfer, OneEuroFilter, smoothing_filter
from age_reenact.reenact.sketch import STROKES, draw_sketch, line_width, pose_variant, rebuild_eyelids, render_sketches

from conftest import FIXTURES

# Sketches drawn by OpenCV 4.7 itself, as the official demo draws them (tools/make_sketch_fixtures.py).
CV2_SKETCHES = np.load(FIXTURES / "sketches_cv2.npz")
CV2_CASES = sorted(k.removesuffix("_landmarks") for k in CV2_SKETCHES.files if k.endswith("_landmarks"))


@pytest.fixture(scope="module")
def einstein_crop(einstein):
    """Einstein's hand-labelled landmarks in the reenactor's 256 px crop."""
    image, points = einstein
    crops = crops_from_points(tuple(image.shape[1:3]), 1, [0], [points], [five_points_from_68(points)], "reenactor", 256)
    return crops.crop_landmarks()[0]


def _segments(landmarks: np.ndarray, strokes) -> np.ndarray:
    """Stroke segments between the landmarks truncated to whole pixels, as the official renderer draws them."""
    pixels = np.trunc(landmarks)
    return np.array([(pixels[a], pixels[b]) for stroke in strokes for a, b in zip(stroke, stroke[1:])])


def _distance_to_segments(points: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Distance of each point [P, 2] to the nearest segment [S, 2, 2]."""
    a, b = segments[None, :, 0], segments[None, :, 1]
    ab, ap = b - a, points[:, None] - a
    t = np.clip((ap * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0, 1)
    return np.linalg.norm(ap - t[..., None] * ab, axis=-1).min(1)


def _check_strokes(sketch: np.ndarray, landmarks: np.ndarray, strokes, width: int) -> None:
    """White pixels lie on the strokes; the strokes are covered; their ink matches length x width."""
    segments = _segments(landmarks, strokes)
    ys, xs = np.nonzero(sketch)
    assert _distance_to_segments(np.stack([xs, ys], 1).astype(float), segments).max() <= width / 2 + 1.0
    samples = np.concatenate([a + np.linspace(0, 1, 9)[:, None] * (b - a) for a, b in segments])
    inside = (samples >= 0).all(1) & (samples <= sketch.shape[0] - 1).all(1)
    rounded = np.round(samples[inside]).astype(int)
    padded = np.pad(sketch > 0, 1)
    near = np.zeros_like(sketch, dtype=bool)  # a white pixel within one pixel
    for dy in range(3):
        for dx in range(3):
            near |= padded[dy : dy + sketch.shape[0], dx : dx + sketch.shape[1]]
    assert near[rounded[:, 1], rounded[:, 0]].all()
    length = np.linalg.norm(segments[:, 1] - segments[:, 0], axis=1).sum()
    assert 0.6 < (sketch > 0).sum() / (length * width) < 1.6


def test_einstein_sketch(einstein_crop):
    sketch = render_sketches(einstein_crop[None], 256)
    assert sketch.shape == (1, 3, 256, 256)
    assert set(sketch.unique().tolist()) == {0.0, 1.0}
    assert (sketch[0, 0] == sketch[0, 1]).all() and (sketch[0, 0] == sketch[0, 2]).all()
    assert pose_variant(einstein_crop, 256) == "frontal" and line_width(256) == 2
    _check_strokes(sketch[0, 0].numpy(), einstein_crop, STROKES["frontal"], 2)
    assert len(_segments(einstein_crop, STROKES["frontal"])) == 63  # the official frontal strokes
    # Parts the official renderer does not join stay apart: jaw-brow, brow-brow, brow-nose, bridge-nostrils, ...
    segments = _segments(einstein_crop, STROKES["frontal"])
    for a, b in ((16, 26), (21, 22), (26, 27), (30, 31), (35, 36), (41, 42), (47, 48), (59, 60)):
        mid = (einstein_crop[a] + einstein_crop[b]) / 2
        if _distance_to_segments(mid[None], segments)[0] > 3:
            assert sketch[0, 0, int(round(mid[1])), int(round(mid[0]))] == 0, (a, b)


@pytest.mark.parametrize("size", [128, 512])
def test_line_width_scales_with_size(einstein_crop, size):
    landmarks = einstein_crop * size / 256
    sketch = draw_sketch(landmarks, size)
    assert line_width(size) == size // 128
    _check_strokes(sketch, landmarks, STROKES["frontal"], line_width(size))


def test_pose_dependent_strokes(einstein_crop):
    turned = einstein_crop.copy()
    turned[42:48, 0] += turned[36, 0] + 25 - turned[42, 0]  # the far eye's inner corner 25 px from the near eye's outer one
    turned[30, 0] = turned[42, 0] + 5  # the nose tip beyond it
    assert pose_variant(turned, 256) == "turned_right"
    _check_strokes(draw_sketch(turned, 256), turned, STROKES["turned_right"], 2)
    assert pose_variant(turned * 0.5, 128) == "turned_right"  # the 30 px threshold scales with the size

    other = einstein_crop.copy()
    other[36:42, 0] += other[45, 0] - 25 - other[39, 0]
    other[30, 0] = other[42, 0] - 5
    assert pose_variant(other, 256) == "turned_left"
    _check_strokes(draw_sketch(other, 256), other, STROKES["turned_left"], 2)


@pytest.mark.parametrize("case", CV2_CASES)
def test_sketches_equal_opencv_pixel_for_pixel(case):
    """Every stroke set, the truncated 30 px threshold, strokes far outside the frame, thickness 1, 2, 4."""
    size = int(case.rsplit("_", 1)[1])
    landmarks = CV2_SKETCHES[f"{case}_landmarks"]
    expected = np.unpackbits(CV2_SKETCHES[f"{case}_sketch"], axis=-1)[:, :size].astype(bool)
    assert np.array_equal(draw_sketch(landmarks, size) > 0, expected)
    assert np.array_equal(render_sketches(landmarks[None], size)[0, 0].numpy() == 1, expected)


def test_pose_threshold_on_truncated_pixels():
    """The demo tests int(x42) - int(x36) <= 30: a 30.7 px gap whose whole pixels are 30 apart is turned."""
    landmarks = CV2_SKETCHES["threshold_256_landmarks"]
    assert landmarks[42, 0] - landmarks[36, 0] > 30 and pose_variant(landmarks, 256) == "turned_right"


def test_cv_line_matches_installed_opencv():
    """Random segments (zero-length, negative and off-image end points, thickness 1-5) against cv2.line."""
    cv2 = pytest.importorskip("cv2", reason="cv2 (opencv-python-headless, requirements-dev.txt) draws the reference lines")
    rng = np.random.default_rng(0)
    for _ in range(2000):
        size, thickness = int(rng.choice([16, 33, 64])), int(rng.integers(1, 6))
        # End points within `thickness` of the frame: OpenCV after 4.7 first clips a thick segment to the
        # frame grown by its thickness, so further out the releases differ (the fixtures hold 4.7's rule).
        p = rng.integers(-thickness, size + thickness, 4)
        if rng.random() < 0.1:
            p[2:] = p[:2]
        expected = np.zeros((size, size), np.uint8)
        cv2.line(expected, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), 255, thickness)
        drawn = np.zeros((size, size), np.uint8)
        draw_line(drawn, (p[0], p[1]), (p[2], p[3]), 255, thickness)
        assert np.array_equal(drawn, expected), (size, thickness, p.tolist())


def test_non_finite_landmarks_give_black_sketches(einstein_crop):
    sketches = render_sketches(np.stack([einstein_crop / 4, np.full((68, 2), np.nan)]), 64)
    assert sketches[0].sum() > 0 and sketches[1].sum() == 0


def test_rebuild_eyelids(einstein_crop):
    driver = einstein_crop[None] / 256
    assert np.allclose(rebuild_eyelids(driver, driver), driver)
    scaled = driver * 1.5 + 0.1  # scaling and shifting the driver: the rebuilt lids follow exactly
    assert np.allclose(rebuild_eyelids(scaled, driver), scaled)
    closed = driver.copy()
    closed[0, [37, 38, 43, 44]] = closed[0, [41, 40, 47, 46]]  # a blink in the driver ...
    target = driver + 0.01
    rebuilt = rebuild_eyelids(target, closed)
    assert np.allclose(rebuilt[0, [37, 38, 43, 44]], target[0, [41, 40, 47, 46]])  # ... closes the target's eyes
    others = [i for i in range(68) if i not in (37, 38, 43, 44)]
    assert np.array_equal(rebuilt[0, others], target[0, others])


def test_relative_motion(einstein_crop):
    source = einstein_crop / 256
    driver = source + np.array([0.02, -0.01])  # the driver's own face, elsewhere and shaped differently
    driver[48:68] *= 1.01
    motion = MotionTransfer("relative", source)
    assert np.array_equal(motion(np.repeat(driver[None], 3, 0)), np.repeat(source[None], 3, 0))
    moved = driver.copy()
    moved[48:68, 1] += 0.03  # the driver opens its mouth, in a later chunk
    out = motion(moved[None])
    assert np.allclose(out[0] - source, moved - driver)
    assert np.array_equal(MotionTransfer("relative", source)(source[None])[0], source)


def test_absolute_motion_goes_through_the_shape_generator(einstein_crop):
    source, driver = einstein_crop / 256, einstein_crop[None] / 256 + 0.01
    seen = []

    def shape_fn(landmarks):
        seen.append(landmarks)
        return np.repeat(source[None], len(landmarks), 0)

    out = MotionTransfer("absolute", source, shape_fn)(driver)
    assert len(seen) == 1 and np.array_equal(seen[0], driver)
    assert np.allclose(out, rebuild_eyelids(source[None], driver))
    with pytest.raises(ValueError, match="shape generator"):
        MotionTransfer("absolute", source)
    with pytest.raises(ValueError, match="mode"):
        MotionTransfer("sideways", source)


def test_one_euro_smoothing():
    rng = np.random.default_rng(0)
    still = np.full((68, 2), 100.0)
    noisy = still + rng.normal(0, 1.0, (200, 68, 2))
    residual = {}
    for strength in (0.5, 1.0):
        smoother = smoothing_filter(strength)
        residual[strength] = np.std(np.stack([smoother(frame, 60.0) for frame in noisy])[50:] - still)
    assert residual[1.0] < residual[0.5] < np.std(noisy[50:] - still) / 1.6
    constant = smoothing_filter(1.0)
    assert all(np.array_equal(constant(still, 60.0), still) for _ in range(5))
    # A fast head turn (2 px/frame at 60 px between the eyes) is followed with little lag.
    ramp = OneEuroFilter(min_cutoff=0.4 * 0.03**0.5)
    track = [ramp(still + 2.0 * t, 60.0) for t in range(60)]
    assert np.abs(track[-1] - (still + 2.0 * 59)).max() < 3.0
    assert smoothing_filter(0.0) is None
    with pytest.raises(ValueError, match="0..1"):
        smoothing_filter(1.5)
