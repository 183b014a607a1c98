"""Time and peak memory of `age-reenact relabel` on one large photo (6000x4000 JPEG by default).

The photo is synthetic: tests/fixtures/einstein.jpg scaled to the photo's height and centred on a grey
canvas, saved as a JPEG in a temporary folder. The bundled estimator is loaded first, outside the measured
span; the span is one `relabel_folder` call on that folder (read, detect, crop, estimate, write the row).
The same photo made 500 px high (750x500 at the default size, the face still found) is relabelled first, in
a folder of its own: the large photo's peak minus the small one's is what the photo's size adds over the
same run (models, warm-up, the detector's work on a small frame).

Usage: python benchmarks/bench_relabel_large.py [--size 6000 4000] [--repeats 3] [--detector mtcnn|hog]
Target (issue 17): at most 3 s and 400 MB peak resident memory for a 6000x4000 photo.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the repository root first
from age_reenact.benchmark import PeakMemory  # noqa: E402
from age_reenact.bundled import BUNDLED  # noqa: E402
from age_reenact.devices import describe_device  # noqa: E402
from age_reenact.estimator.predict import AgeEstimator  # noqa: E402
from age_reenact.estimator.relabel import relabel_folder  # noqa: E402
from age_reenact.face.detect import DETECTORS, FaceDetector  # noqa: E402
from age_reenact.model_paths import resolve_model  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "einstein.jpg"
SMALL_HEIGHT = 500  # the small copy's height: Einstein's face is still found there (not at 333 px, 500x333)


def make_photo(path: Path, width: int, height: int) -> None:
    with Image.open(FIXTURE) as portrait:
        portrait = portrait.convert("RGB")
        portrait = portrait.resize((round(portrait.width * height / portrait.height), height), Image.BICUBIC)
    canvas = Image.new("RGB", (width, height), (128, 128, 128))
    canvas.paste(portrait, ((width - portrait.width) // 2, 0))
    canvas.save(path, quality=90)


def relabel(estimator: AgeEstimator, detector: FaceDetector, folder: Path, out: Path) -> tuple[float, float, float, str]:
    """One timed `relabel_folder` call: seconds, peak resident MiB, MiB above the resident set before, the row."""
    with PeakMemory(torch.device("cpu")) as memory:
        start = time.perf_counter()
        relabel_folder(estimator, folder, out, detector)
        seconds = time.perf_counter() - start
    return seconds, memory.peak, memory.added, out.read_text().splitlines()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=[6000, 4000], metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--repeats", type=int, default=3, help="large-photo runs (each on a fresh CSV); the median time and the highest peak are reported")
    parser.add_argument("--upsample", type=int, default=1)
    parser.add_argument("--detector", choices=DETECTORS, default=DETECTORS[0])
    args = parser.parse_args()

    estimator = AgeEstimator.load(resolve_model("age_estimator", BUNDLED["age_estimator"]))
    detector = FaceDetector(upsample=args.upsample, detector=args.detector)
    width, height = args.size
    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp) / "small", Path(tmp) / "large"
        small.mkdir()
        large.mkdir()
        make_photo(small / "small.jpg", round(width * SMALL_HEIGHT / height), SMALL_HEIGHT)
        make_photo(large / "large.jpg", width, height)
        _, small_peak, _, small_row = relabel(estimator, detector, small, Path(tmp) / "small.csv")
        runs = [relabel(estimator, detector, large, Path(tmp) / f"large_{run}.csv") for run in range(args.repeats)]
    times = [run[0] for run in runs]
    peak, added, row = max(run[1] for run in runs), max(run[2] for run in runs), runs[-1][3]
    print(f"{describe_device()}; photo {width}x{height} JPEG, {args.detector} detector, upsample {args.upsample}, {args.repeats} runs")
    print(f"row: {row} (the {SMALL_HEIGHT} px copy: {small_row})")
    print(f"seconds per photo: {statistics.median(times):.2f} (median; min {min(times):.2f}, max {max(times):.2f})")
    print(f"peak resident MiB: {peak:.0f} (process, models loaded); above the resident set before the call: {added:.0f}")
    print(f"the {SMALL_HEIGHT} px copy peaks at {small_peak:.0f} MiB: the photo's size adds {peak - small_peak:.0f} MiB")


if __name__ == "__main__":
    main()
