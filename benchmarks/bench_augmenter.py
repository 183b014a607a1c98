"""Seconds per denoising step of the pose augmenter at 512 px: full-size SD1.5 + ControlNet, random weights.

    nice -n 10 python benchmarks/bench_augmenter.py [--size 512] [--steps 2] [--dtypes fp32 bf16] [--threads N]

Each precision runs in its own process (so its peak memory is its own): the pipeline is built from the
SD1.5 configs with random weights (timing does not depend on the values), then one img2img call at
strength 1 runs `steps` denoising steps with classifier-free guidance (batch 2 through the UNet and the
ControlNet, as in real use). A step is the time of the ControlNet + UNet calls it makes; VAE and text
encoder are reported apart. Peak memory is the process's peak RSS. Workers run with
OMP_WAIT_POLICY=PASSIVE unless set: on a CPU shared with other jobs, OpenMP threads that spin between
parallel regions make runs several times slower.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def _timed(timings: dict, name: str, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timings.setdefault(name, []).append(time.perf_counter() - start)

    return wrapper


def worker(dtype_name: str, size: int, steps: int) -> dict:
    import torch
    from diffusers import UniPCMultistepScheduler

    from age_reenact.devices import DTYPES
    from age_reenact.augment.diffusers_loading import SD15, build_random_pipeline, load_tokenizer, write_byte_tokenizer

    dtype = DTYPES[dtype_name]
    # Timing needs a working tokenizer, not CLIP's real vocabulary (its ids stay inside CLIP's 49408).
    tokenizer = load_tokenizer(write_byte_tokenizer(tempfile.mkdtemp()), 514, 77)
    start = time.perf_counter()
    pipe = build_random_pipeline(SD15, tokenizer, dtype)
    build_s, build_peak = time.perf_counter() - start, _peak_rss_gib()
    # The augmenter's default sampler; SD1.5's own PNDM would add a warm-up step.
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)

    timings: dict[str, list[float]] = {}
    for name in ("unet", "controlnet", "text_encoder"):
        module = getattr(pipe, name)
        module.forward = _timed(timings, name, module.forward)
    pipe.vae.encode = _timed(timings, "vae_encode", pipe.vae.encode)
    pipe.vae.decode = _timed(timings, "vae_decode", pipe.vae.decode)

    generator = torch.Generator().manual_seed(0)
    source, control = torch.rand(1, 3, size, size, generator=generator), torch.rand(1, 3, size, size, generator=generator)
    start = time.perf_counter()
    with torch.inference_mode():
        pipe(prompt="a photo of a face", negative_prompt="blurry", image=source, control_image=control, strength=1.0,
             num_inference_steps=steps, guidance_scale=7.5, generator=generator, output_type="pt")
    call_s = time.perf_counter() - start
    step_s = [c + u for c, u in zip(timings["controlnet"], timings["unet"])]
    return {
        "dtype": dtype_name, "threads": torch.get_num_threads(), "build_s": build_s, "build_peak_gib": build_peak,
        "step_s": step_s, "controlnet_s": timings["controlnet"], "unet_s": timings["unet"],
        "text_s": sum(timings["text_encoder"]), "vae_encode_s": sum(timings["vae_encode"]), "vae_decode_s": sum(timings["vae_decode"]),
        "call_s": call_s, "peak_gib": _peak_rss_gib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(worker(args.worker, args.size, args.steps)))
        return

    print(f"SD1.5 + ControlNet (random weights), {args.size} px, {args.steps} denoising steps, CFG batch 2; "
          f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.1f}")
    rows = []
    for dtype in args.dtypes:
        command = [sys.executable, __file__, "--worker", dtype, "--size", str(args.size), "--steps", str(args.steps)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
        if result.returncode:
            sys.exit(f"{dtype} worker failed:\n{result.stderr[-3000:]}")
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))

    header = f"{'dtype':6} {'threads':>7} {'build s':>8} {'s/step (each)':>22} {'CN s':>6} {'UNet s':>7} {'VAE enc s':>9} {'VAE dec s':>9} {'call s':>7} {'peak GiB':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        steps = ", ".join(f"{s:.1f}" for s in r["step_s"])
        print(f"{r['dtype']:6} {r['threads']:>7} {r['build_s']:>8.1f} {steps:>22} {sum(r['controlnet_s']) / len(r['step_s']):>6.1f} "
              f"{sum(r['unet_s']) / len(r['step_s']):>7.1f} {r['vae_encode_s']:>9.1f} {r['vae_decode_s']:>9.1f} {r['call_s']:>7.1f} {r['peak_gib']:>8.2f}")
    print(f"load average at end {os.getloadavg()[0]:.1f} (other jobs on a shared CPU inflate the times)")


if __name__ == "__main__":
    main()
