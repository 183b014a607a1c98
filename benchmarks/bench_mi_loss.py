"""Cost of the MI loss per image: frozen E_A forward on source and target, backward into the target.

Usage: python benchmarks/bench_mi_loss.py [--batch 16] [--input-size 1024] [--configs ir50,small]
       [--dtypes fp32,bf16] [--repeats 3] [--device cpu|cuda]
Inputs are random AgeTransGAN-sized faces in [-1, 1] (the resize to 112 is part of the cost); bf16 is
autocast, as a training step would use it. Weights are random: cost does not depend on them.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the repository root first
from age_reenact.aifd import AIFDEncoder, MILoss  # noqa: E402
from age_reenact.devices import describe_device  # noqa: E402

CONFIGS = {
    "ir50": {"depth": 50, "widths": [64, 128, 256, 512], "embedding_dim": 512, "afd_variant": "tpami"},
    "small": {"depth": [1, 1, 2, 1], "widths": [32, 64, 128, 256], "embedding_dim": 256, "afd_variant": "tpami"},
}
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up: allocator, cuDNN algorithm choice, oneDNN primitives
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--input-size", type=int, default=1024, help="side of the generator output fed to the loss")
    parser.add_argument("--configs", default="ir50,small")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"# MI loss, {describe_device(device)}, batch {args.batch}, input {args.input_size}px -> 112")
    print("| E_A config | params M | dtype | forward ms/img | forward+backward ms/img | peak GPU MiB |")
    print("|---|---|---|---|---|---|")
    generator = torch.Generator().manual_seed(0)
    shape = (args.batch, 3, args.input_size, args.input_size)
    source = (torch.rand(shape, generator=generator) * 2 - 1).to(device)
    target = (torch.rand(shape, generator=generator) * 2 - 1).to(device)
    for config_name in args.configs.split(","):
        encoder = AIFDEncoder(**CONFIGS[config_name]).to(device)
        params = sum(p.numel() for p in encoder.parameters()) / 1e6
        loss_fn = MILoss(encoder)
        for dtype_name in args.dtypes.split(","):
            autocast = torch.autocast(device.type, dtype=DTYPES[dtype_name], enabled=DTYPES[dtype_name] is not None)

            def forward():
                with torch.no_grad(), autocast:
                    loss_fn(source, target)

            def forward_backward():
                image = target.detach().requires_grad_(True)
                with autocast:
                    loss = loss_fn(source, image)
                loss.backward()

            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t_forward = timed(forward, device, args.repeats)
            t_step = timed(forward_backward, device, args.repeats)
            peak = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}" if device.type == "cuda" else "-"
            per_image = 1000 / args.batch
            print(f"| {config_name} | {params:.1f} | {dtype_name} | {t_forward * per_image:.1f} | {t_step * per_image:.1f} | {peak} |")


if __name__ == "__main__":
    main()
