"""AgeTransGAN training throughput: images per second of a full training step (generator update with the
cycle pass, the frozen estimator and the MI loss; discriminator update; EMA), fp32 and bf16.

Usage: python benchmarks/bench_agetransgan_training.py [--presets tiny,small,medium] [--size PX] [--batch 8]
       [--dtypes fp32,bf16] [--mi both|on|off] [--steps 3] [--device cpu|cuda]
The step is the trainer's own (`AgeTransGANTask.update`) on random faces, with random-weight frozen
networks of the sizes the real run uses (estimator preset small at 112 px, AIFD encoder preset small).
Lazy R1 runs every 16th step: its step is timed on its own and amortised into the images/s column.
"""
from __future__ import annotations

import os

# As in the training launcher: spinning OpenMP threads slow a shared CPU many times over. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the repository root first
from age_reenact.aifd.encoder import PREPROCESSING as AIFD_PREPROCESSING  # noqa: E402
from age_reenact.aifd.encoder import AIFDEncoder  # noqa: E402
from age_reenact.devices import describe_device  # noqa: E402
from age_reenact.estimator.resnet import AgeResNet  # noqa: E402
from age_reenact.weights import save_weights  # noqa: E402
from training.__main__ import build_parser  # noqa: E402
from training.agetransgan import AgeTransGANTask  # noqa: E402
from training.engine import Context, RunConfig  # noqa: E402

ESTIMATOR = {"block": "basic", "layers": [2, 2, 2, 2], "widths": [32, 64, 128, 256], "stem_width": 32, "num_ages": 102, "norm": "batch"}
ESTIMATOR_PREPROCESSING = {"convention": "agetransgan", "size": 112, "channels": "rgb", "scale": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3, "readout": "median"}
ENCODER = {"depth": [1, 2, 2, 1], "widths": [32, 64, 128, 256], "embedding_dim": 256, "afd_variant": "tpami"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_task(preset: str, size: int | None, mi: bool, bf16: bool, batch: int, files: Path, device: torch.device) -> tuple[AgeTransGANTask, Context]:
    argv = ["agetransgan", "--images", str(files), "--out", str(files / "run"), "--preset", preset, "--estimator", str(files / "estimator.safetensors")]
    argv += ["--size", str(size)] if size else []
    if mi:
        argv += ["--identity-encoder", str(files / "aifd.safetensors")]
    args = build_parser().parse_args(argv)
    ctx = Context(RunConfig(out_dir=str(files / "run"), steps=100, batch_size=batch, bf16=bf16))
    ctx.device = device
    task = AgeTransGANTask(args)
    task.configure()
    task.build(ctx)
    return task, ctx


def time_step(task: AgeTransGANTask, ctx: Context, step: int, batch: int) -> float:
    size = task.g_config["size"]
    real = torch.rand(batch, 3, size, size, device=ctx.device) * 2 - 1
    groups = torch.randint(0, 10, (batch,), device=ctx.device)
    ctx.step = step
    sync(ctx.device)
    start = time.perf_counter()
    task.update(ctx, real, groups, torch.Generator().manual_seed(step))
    sync(ctx.device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,small,medium")
    parser.add_argument("--size", type=int, help="output px for every preset (e.g. 64)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--mi", choices=["both", "on", "off"], default="both")
    parser.add_argument("--steps", type=int, default=3, help="timed ordinary steps (the minimum counts)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"# AgeTransGAN training step, {describe_device(device)}, batch {args.batch}")
    print("| preset | px | G M params | D M params | dtype | MI loss | step ms | R1 step ms | images/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        files = Path(tmp)
        torch.manual_seed(0)
        save_weights(files / "estimator.safetensors", AgeResNet(**ESTIMATOR).state_dict(), "age_resnet", ESTIMATOR, ESTIMATOR_PREPROCESSING)
        save_weights(files / "aifd.safetensors", AIFDEncoder(**ENCODER).state_dict(), "aifd_encoder", ENCODER, AIFD_PREPROCESSING)
        for preset in args.presets.split(","):
            for dtype in args.dtypes.split(","):
                for mi in {"both": (False, True), "on": (True,), "off": (False,)}[args.mi]:
                    task, ctx = build_task(preset, args.size, mi, dtype == "bf16", args.batch, files, device)
                    every = task.weights.r1_every
                    time_step(task, ctx, 1, args.batch)  # warm-up: allocator, oneDNN / cuDNN kernel choice
                    step = min(time_step(task, ctx, 1 + i, args.batch) for i in range(args.steps))
                    r1_step = time_step(task, ctx, every, args.batch)
                    per_step = ((every - 1) * step + r1_step) / every
                    g_params = sum(p.numel() for p in task.g.parameters()) / 1e6
                    d_params = sum(p.numel() for p in task.d.parameters()) / 1e6
                    print(f"| {preset} | {task.g_config['size']} | {g_params:.2f} | {d_params:.2f} | {dtype} | {'on' if mi else 'off'} | "
                          f"{1000 * step:.0f} | {1000 * r1_step:.0f} | {args.batch / per_step:.1f} |", flush=True)


if __name__ == "__main__":
    main()
