"""Age estimator throughput: faces per second at batch 1 and 32, fp32 and bf16, on aligned crops.

Usage: python benchmarks/bench_age_estimator.py [--model weights/age_estimator/agereenact_age_utkface.safetensors]
Without --model it times a randomly initialised network of the bundled model's architecture.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the repository root first
from age_reenact.devices import describe_device  # noqa: E402
from age_reenact.estimator.predict import AgeEstimator  # noqa: E402
from age_reenact.estimator.resnet import AgeResNet  # noqa: E402
from training.age_estimator import PRESETS, preprocessing  # noqa: E402


def faces_per_second(estimator: AgeEstimator, batch: int, dtype: torch.dtype, seconds: float) -> float:
    crops = torch.rand(batch, estimator.preprocessing["size"], estimator.preprocessing["size"], 3)
    estimator.estimate_crops(crops, batch_size=batch, flip=False, dtype=dtype)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        estimator.estimate_crops(crops, batch_size=batch, flip=False, dtype=dtype)
        done += batch
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    if args.model:
        estimator = AgeEstimator.load(args.model)
    else:
        config = argparse.Namespace(convention="agetransgan", size=args.size)
        estimator = AgeEstimator(AgeResNet(**PRESETS[args.preset]), preprocessing(config), f"random {args.preset}")
    print(f"# {estimator.name}, input {estimator.preprocessing['size']} px, {describe_device()}")
    print("| batch | fp32 faces/s | bf16 faces/s | bf16 speed-up |")
    print("|---|---|---|---|")
    for batch in (1, 32):
        fp32 = faces_per_second(estimator, batch, torch.float32, args.seconds)
        bf16 = faces_per_second(estimator, batch, torch.bfloat16, args.seconds)
        print(f"| {batch} | {fp32:.1f} | {bf16:.1f} | {bf16 / fp32:.2f}x |")


if __name__ == "__main__":
    main()
