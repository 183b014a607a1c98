"""Video behaviour on a synthetic driver (the astronaut moved in a head motion, true landmarks known):
flat memory and progress over 300 frames in the Reenact and Reenact and Age nodes, smoothing against
detector jitter, and landmarks tracked between keyframes as accurately as detected on every frame."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from age_reenact.face.detect import FaceDetector
from age_reenact.face.track import LandmarkTracker
from benchmarks.bench_chain import BUNDLED, write_models
from benchmarks.bench_video import DEGRADE, driver, jitter, landmark_error, smooth, track, working_memory

SIZE = 128  # frame side: eyes 26 px apart, found by the default detector in every frame


@pytest.fixture(scope="module")
def detector():
    return FaceDetector(landmarks="68")


@pytest.fixture(scope="module")
def calm():
    """60 frames of calm head motion with camera noise and JPEG: (uint8 video, true landmarks)."""
    return driver(60, SIZE, period=60, **DEGRADE)


@pytest.fixture(scope="module")
def detected(calm, detector):
    return track(calm[0], 1, detector)


@pytest.fixture
def nodes(pack, tmp_path, monkeypatch):
    """(reenactor, agetransgan, node classes, progress calls): tiny random models through the loaders, and
    the nodes' progress bars recorded."""
    monkeypatch.setenv("AGE_REENACT_MODELS", str(write_models(tmp_path / "models")))
    classes = pack.NODE_CLASS_MAPPINGS
    (reenactor,) = classes["AgeReenactReenactorLoader"]().load(BUNDLED["reenactor"], "none", "fp32", "cpu")
    (ager,) = classes["AgeReenactAgeTransGANLoader"]().load(BUNDLED["agetransgan"], "cpu", "fp32")
    calls = []

    class Progress:
        def __init__(self, total):
            pass

        def __call__(self, done, total=None):
            calls.append((done, total))

    for module in (pack.nodes.reenact_nodes, pack.nodes.chain_nodes):
        monkeypatch.setattr(module, "Progress", Progress)
    return reenactor, ager, classes, calls


@pytest.mark.parametrize("node", ["AgeReenactReenact", "AgeReenactReenactAndAge"])
def test_300_frame_driver_keeps_memory_flat_and_shows_progress(pack, nodes, node, monkeypatch):
    reenactor, ager, classes, calls = nodes
    detections = []
    detect = pack.age_reenact.face.detect.FaceDetector.detect
    monkeypatch.setattr(pack.age_reenact.face.detect.FaceDetector, "detect", lambda self, image: detections.append(1) or detect(self, image))
    video = driver(300, SIZE)[0].float() / 255  # what ComfyUI passes: a float IMAGE batch
    source = video[:1]

    def run(frames: int):
        calls.clear()
        detections.clear()
        if node == "AgeReenactReenact":
            return classes[node]().reenact(reenactor, source, video[:frames], "relative", 0.3, "paste", 16, "error", 1, 0.06, "none")
        out = classes[node]().run(reenactor, ager, source, video[:frames], "reenact_then_age", "70+", "relative", 0.3, 0, 16, "error", 1, 0.06, "none")
        return out["result"][:2]

    run(30)  # warm-up: the allocator's first pools, lazy imports
    working = {}
    for frames in (30, 300):
        peak, outputs = working_memory(lambda: run(frames))
        working[frames] = peak - outputs
        assert calls == [(min(stop, frames), frames) for stop in range(16, frames + 16, 16)]  # per chunk, to the end
        assert len(detections) == 1 + frames // 10  # the source, then the driver's keyframes: tracked in between
    # The outputs grow by 67-80 MiB over 270 more frames; the work besides them stays within the allocator's
    # warm-up over the first chunks (+5-16 MiB measured alone, +30 once inside the whole suite). Keeping one
    # 128 px float frame per frame would add 270 x 0.19 = 53 MiB more.
    assert working[300] - working[30] < 40, working


def test_smoothing_lowers_jitter_and_follows_motion(calm, detected, detector):
    video, truth = calm
    raw = detected[0]
    smoothed = smooth(raw, 0.3)
    assert jitter(smoothed, truth) < 0.65 * jitter(raw, truth)
    assert landmark_error(smoothed, truth) < landmark_error(raw, truth) + 0.3  # calm motion: no visible lag
    fast_video, fast_truth = driver(40, SIZE, period=20, **DEGRADE)  # 8 degrees of roll in 5 frames
    fast = track(fast_video, 1, detector)[0]
    assert jitter(smooth(fast, 0.3), fast_truth) < jitter(fast, fast_truth)
    assert landmark_error(smooth(fast, 0.3), fast_truth) < landmark_error(fast, fast_truth) + 1.0  # lag under 1 % of the eye distance


def test_tracking_is_as_accurate_as_detection_and_faster(calm, detected, detector):
    video, truth = calm
    detected_landmarks, detect_ms, detections = detected
    tracked, track_ms, keyframes = track(video, 10, detector)
    assert detections == 60 and keyframes == 6
    assert landmark_error(tracked, truth) < landmark_error(detected_landmarks, truth) + 0.3
    assert jitter(tracked, truth) < jitter(detected_landmarks, truth) + 0.3
    assert track_ms < 0.7 * detect_ms  # CPU time: about a third on this machine


def test_tracking_detects_again_when_the_face_is_lost(calm, detector):
    video, _ = calm
    cut = torch.cat([video[:5], torch.zeros_like(video[:2]), video[5:8].flip(2)])  # the face leaves, then comes back mirrored
    tracker = LandmarkTracker(detector, detect_every=100)
    found = [tracker(frame.numpy()) for frame in cut]
    assert tracker.detections == 1 + 2 + 1  # the first frame, each black frame, the mirrored face
    assert found[5] is None and found[6] is None
    expected = detector.detect(cut[7].numpy())[0].landmarks
    assert np.abs(found[7] - expected).max() < 1e-9  # re-detected, not tracked from the old place
    with pytest.raises(ValueError, match="at least 1"):
        LandmarkTracker(detector, 0)
