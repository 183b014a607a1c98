"""AgeTransGAN generator speed: milliseconds per face and peak memory, by size, precision and batch.

Runs the official architecture (style_dim 512, channel multiplier 2, 10 groups) with random weights:
speed does not depend on the values. Every row runs in a fresh process, so its peak memory is its own
(peak resident set of the whole process on a CPU, torch included; peak allocated memory on CUDA). A row
times `AgeTransGAN.generate` end to end (crop -> [-1, 1], noise, forward, back to 0..1) after one
warm-up run. CPU time (all threads) is printed next to wall time because on a shared machine wall time
mostly measures the other processes. The last column compares the output (0..1 images) with the fp32
row of the same size and batch: same weights, input and seeds.

    nice -n 10 python benchmarks/bench_agetransgan.py --threads 1     # 256 and 1024, fp32/bf16, batch 1 and 4
    python benchmarks/bench_agetransgan.py --sizes 256 --batches 1
    python benchmarks/bench_agetransgan.py --device cuda --precisions fp32 fp16
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from age_reenact.agetransgan import AgeTransGAN, AgeTransGANGenerator  # noqa: E402


def run_row(size: int, precision: str, batch: int, repeats: int, device: torch.device, save: Path) -> dict:
    torch.manual_seed(0)
    model = AgeTransGANGenerator(size=size, group=10)
    with torch.no_grad():  # trained models add noise; fresh ones have zero noise weights
        for name, p in model.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.1)
    crops, codes, seeds = torch.rand(batch, size, size, 3), torch.eye(10)[torch.arange(batch) % 10], list(range(batch))
    runner = AgeTransGAN.create(model, device, precision)
    runner.generate(crops, codes, seeds, chunk=batch)  # warm-up: oneDNN/cuDNN kernels, weight caches
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        out = runner.generate(crops, codes, seeds, chunk=batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    torch.save(out, save)
    return {
        "wall_ms": (time.perf_counter() - start) / repeats / batch * 1000,
        "cpu_ms": (time.process_time() - cpu_start) / repeats / batch * 1000,
        "peak_mib": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per row (after one warm-up)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--row", nargs=3, metavar=("SIZE", "PRECISION", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.row:  # child process: one row, result as JSON
        size, precision, batch = int(args.row[0]), args.row[1], int(args.row[2])
        print(json.dumps(run_row(size, precision, batch, args.repeats, torch.device(args.device), args.save)))
        return

    memory = "peak CUDA memory (MiB)" if args.device.startswith("cuda") else "peak process RSS (MiB)"
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} thread(s)")
    print(f"| size | precision | batch | ms / face (wall) | CPU ms / face | {memory} | vs fp32: max / mean abs diff |")
    print("|---:|---|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for precision in args.precisions:
                for batch in args.batches:
                    save = Path(tmp) / f"{size}_{precision}_{batch}.pt"
                    command = [sys.executable, __file__, "--row", str(size), precision, str(batch), "--save", str(save),
                               "--repeats", str(args.repeats), "--threads", str(args.threads), "--device", args.device]
                    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
                    reference = Path(tmp) / f"{size}_fp32_{batch}.pt"
                    accuracy = "(no fp32 row)"
                    if reference.exists():
                        diff = (torch.load(save, weights_only=True) - torch.load(reference, weights_only=True)).abs()
                        accuracy = f"{diff.max():.4f} / {diff.mean():.4f}"
                    print(f"| {size} | {precision} | {batch} | {result['wall_ms']:.0f} | {result['cpu_ms']:.0f} | "
                          f"{result['peak_mib']:.0f} | {accuracy} |", flush=True)


if __name__ == "__main__":
    main()
