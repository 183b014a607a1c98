"""Encoder time of `evaluate identity`: the verification paths need only the flip-averaged embedding, the
decomposition probe also the parts (a third pass of the backbone).

Usage: python benchmarks/bench_identity_eval.py [--faces 256] [--threads 2] [--repeats 2]
Random 112 px crops and a random small-preset encoder (cost does not depend on the values).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the repository root first
from age_reenact.bundled import TRAINED_CONFIGS  # noqa: E402
from age_reenact.devices import describe_device  # noqa: E402
from age_reenact.aifd.encoder import AIFDEncoder  # noqa: E402
from age_reenact.evaluation.identity_eval import encoder_outputs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    encoder = AIFDEncoder(**TRAINED_CONFIGS["aifd"]).eval()
    crops = torch.randint(0, 256, (args.faces, 112, 112, 3), dtype=torch.uint8)
    print(describe_device(torch.device("cpu")))
    for parts in (True, False):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            encoder_outputs(encoder, crops, parts=parts)
            times.append(time.perf_counter() - start)
        label = "embedding + parts (decomposition probe)" if parts else "embedding only (verification)"
        print(f"{label}: {1000 * min(times) / args.faces:.1f} ms a face")


if __name__ == "__main__":
    main()
