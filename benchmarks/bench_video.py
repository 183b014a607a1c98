"""Video behaviour of the reenactment nodes: driver landmarks (detection vs tracking, jitter with and without
smoothing) and memory over long drivers. The chain's frames/s are benchmarks/bench_chain.py's.

Memory (--memory): reenact() and reenact_and_age(), what the Reenact and Reenact and Age nodes run, on
30 and 300 frames of a 128 px driver with tiny random models: how far the resident memory peaks above
its start, less the output tensors (which must grow with the video). Equal "working" figures mean the
work itself does not grow with the video.

Driver: the astronaut photo moved in a synthetic head motion (bench_reenactor.synthetic_video) with
per-frame camera noise and JPEG, so the true landmarks of every frame are known: the detector's
landmarks on the photo, moved. All measures are in % of the inter-ocular distance (eye centres):
- error: mean distance of the found landmarks to the true ones;
- jitter: mean frame-to-frame displacement beyond the true motion, |(L_t - L_t-1) - (G_t - G_t-1)|.
Times are CPU seconds of this process (steady on a shared machine).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_video.py
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_video.py --memory
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from age_reenact.agetransgan import AgeTransGAN  # noqa: E402
from age_reenact.benchmark import PeakMemory  # noqa: E402
from age_reenact.chain import ChainSettings, reenact_and_age  # noqa: E402
from age_reenact.face.detect import FaceDetector  # noqa: E402
from age_reenact.face.track import LandmarkTracker  # noqa: E402
from age_reenact.reenact.motion import smoothing_filter  # noqa: E402
from age_reenact.reenact import DualGeneratorReenactor, Reenactor, reenact  # noqa: E402
from age_reenact.reenact.pipeline import _driver_landmarks  # noqa: E402
from benchmarks.bench_chain import TINY, _random_agetransgan  # noqa: E402
from benchmarks.bench_reenactor import astronaut, synthetic_video  # noqa: E402

DEGRADE = dict(noise=3.0, jpeg=80)  # camera noise (grey levels) and codec of the driver's frames


def _inter_ocular(landmarks: np.ndarray) -> np.ndarray:
    return np.linalg.norm(landmarks[:, 42:48].mean(1) - landmarks[:, 36:42].mean(1), axis=1)


def landmark_error(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean landmark distance to the truth, % of the inter-ocular distance ([T, 68, 2] each)."""
    return float((np.linalg.norm(found - truth, axis=2).mean(1) / _inter_ocular(truth)).mean() * 100)


def jitter(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean frame-to-frame landmark displacement beyond the true motion, % of the inter-ocular distance."""
    excess = np.linalg.norm(np.diff(found, axis=0) - np.diff(truth, axis=0), axis=2).mean(1)
    return float((excess / _inter_ocular(truth)[1:]).mean() * 100)


def driver(frames: int, size: int, period: float = 60, **degrade) -> tuple[torch.Tensor, np.ndarray]:
    """The astronaut swaying (eyes a fifth of the frame apart): uint8 frames [T, size, size, 3], true landmarks."""
    image, landmarks = astronaut()
    return synthetic_video(image, landmarks, frames, size=size, period=period, **degrade)


def track(video: torch.Tensor, detect_every: int, detector: FaceDetector | None = None) -> tuple[np.ndarray, float, int]:
    """The pipeline's driver landmarks (no smoothing), CPU ms per frame, and the full detections run."""
    tracker = LandmarkTracker(detector or FaceDetector(landmarks="68"), detect_every)
    start = time.process_time()
    found = _driver_landmarks(video, 0, None, tracker, None, "error")
    return found, (time.process_time() - start) / len(video) * 1000, tracker.detections


def smooth(landmarks: np.ndarray, strength: float) -> np.ndarray:
    """Landmarks [T, 68, 2] through the pipeline's smoothing (given landmarks: the frames are not read)."""
    return _driver_landmarks(landmarks, 0, landmarks, None, smoothing_filter(strength), "error")


def working_memory(run: Callable[[], Iterable[object]]) -> tuple[float, float]:
    """(MiB the run's resident memory peaked above its start, MiB of the tensors among what it returned)."""
    gc.collect()
    try:  # glibc keeps freed memory for reuse: the run would then start with room for its outputs already resident
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # another C library: figures may come out lower, never higher
    with PeakMemory(torch.device("cpu")) as memory:
        outputs = run()
    return memory.added, sum(t.numel() * t.element_size() for t in outputs if isinstance(t, torch.Tensor)) / 2**20


def landmark_rows(frames: int, size: int, period: float, smoothing: tuple[float, ...]) -> list[dict]:
    video, truth = driver(frames, size, period, **DEGRADE)
    detector, rows = FaceDetector(landmarks="68"), []
    track(video[:2], 1, detector)  # warm-up
    for every in (1, 10, frames):
        found, ms, detections = track(video, every, detector)
        for strength in smoothing:
            smoothed = smooth(found, strength) if strength else found
            rows.append(dict(size=size, period=period, detect_every=every, detections=detections, ms=ms, smoothing=strength,
                             error=landmark_error(smoothed, truth), jitter=jitter(smoothed, truth)))
    return rows


def memory_rows(counts: tuple[int, ...] = (30, 300), size: int = 128) -> list[dict]:
    torch.manual_seed(0)
    reenactor = Reenactor(DualGeneratorReenactor(**TINY["reenactor"]))
    ager = AgeTransGAN.create(_random_agetransgan(TINY["agetransgan"]), "cpu", "fp32")
    video = driver(max(counts), size)[0].float() / 255  # a float IMAGE batch, as ComfyUI passes it
    runs = {
        "Reenact": lambda n: vars(reenact(reenactor, video[:1], video[:n], mode="relative", smoothing=0.3)).values(),
        "Reenact and Age": lambda n: vars(reenact_and_age(reenactor, ager, video[:1], video[:n], "70+", ChainSettings(smoothing=0.3))).values(),
    }
    rows = []
    for node, run in runs.items():
        run(counts[0])  # warm-up: the allocator's first pools, lazy imports
        for count in counts:
            peak, outputs = working_memory(lambda: run(count))
            rows.append(dict(node=node, frames=count, peak=peak, outputs=outputs, working=peak - outputs))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--smoothing", type=float, nargs="+", default=[0.0, 0.3, 0.5])
    parser.add_argument("--memory", action="store_true", help="memory over 30 and 300 frames instead")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.memory:
        print("| node | frames | peak growth MiB | outputs MiB | working MiB |\n|---|---|---|---|---|")
        for r in memory_rows():
            print(f"| {r['node']} | {r['frames']} | {r['peak']:.1f} | {r['outputs']:.1f} | {r['working']:.1f} |")
        return
    print(f"driver landmarks: {args.frames} frames, astronaut swaying, noise {DEGRADE['noise']} + JPEG {DEGRADE['jpeg']}; "
          "period = frames per sway (60: calm head motion, 20: fast); error and jitter in % of the inter-ocular distance")
    print(f"\n| frame | period | detect every | full detections | CPU ms/frame | smoothing | error % | jitter % |\n|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for period in (60, 20):
            for r in landmark_rows(args.frames, size, period, tuple(args.smoothing)):
                every = "first frame only" if r["detect_every"] == args.frames else r["detect_every"]
                print(f"| {r['size']} | {r['period']:.0f} | {every} | {r['detections']} | {r['ms']:.1f} | {r['smoothing']} | {r['error']:.2f} | {r['jitter']:.2f} |")


if __name__ == "__main__":
    main()
