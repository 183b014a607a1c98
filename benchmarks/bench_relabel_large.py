"""Time and peak memory of `age-reenact relabel` on one large photo (6000x4000 JPEG by default).

The photo is synthetic: tests/fixtures/einstein.jpg scaled to the photo's height and centred on a grey
canvas, saved as a JPEG in a temporary folder. The bundled estimator is loaded first, outside the measured
span; the span is one `relabel_folder` call on that folder (read, detect, crop, estimate, write the row).

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


def make_photo(path: Path, width: int, height: int) -> None:
    with Image.open(FIXTURE) as portrait:
        portrait = portrait.convert("RGB")
        portrait = portrait.resize((round(portrait.width * height / portrait.height), height), Image.BICUBIC)
    canvas = Image.new("RGB", (width, height), (128, 128, 128))
    canvas.paste(portrait, ((width - portrait.width) // 2, 0))
    canvas.save(path, quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=[6000, 4000], metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--repeats", type=int, default=3, help="relabel runs (each on a fresh CSV); the median time is reported")
    parser.add_argument("--upsample", type=int, default=1)
    parser.add_argument("--detector", choices=DETECTORS, default=DETECTORS[0])
    args = parser.parse_args()

    estimator = AgeEstimator.load(resolve_model("age_estimator", BUNDLED["age_estimator"]))
    detector = FaceDetector(upsample=args.upsample, detector=args.detector)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        make_photo(folder / "large.jpg", *args.size)
        times, peaks, added = [], [], []
        for run in range(args.repeats):
            out = Path(tmp) / f"ages_{run}.csv"
            with PeakMemory(torch.device("cpu")) as memory:
                start = time.perf_counter()
                relabel_folder(estimator, folder, out, detector)
                times.append(time.perf_counter() - start)
            peaks.append(memory.peak)
            added.append(memory.added)
        row = out.read_text().splitlines()[1]
    print(f"{describe_device()}; photo {args.size[0]}x{args.size[1]} JPEG, {args.detector} detector, upsample {args.upsample}, {args.repeats} runs")
    print(f"row: {row}")
    print(f"seconds per photo: {statistics.median(times):.2f} (median; min {min(times):.2f}, max {max(times):.2f})")
    print(f"peak resident MiB: {max(peaks):.0f} (process, model loaded); added by the photo: {max(added):.0f}")


if __name__ == "__main__":
    main()
