"""Reenact-and-age chain speed: seconds per driving frame, by order and precision, at the bundled models' size.

The models have the configs of the bundled files when those are present (weights/<family>/), else those
of the training tasks' default presets (128 px AgeTransGAN and reenactor); weights are random, which does
not change the speed. One target group, a 512 px driving video (the astronaut photo swaying); per-frame
work only (detection, reenactment, ageing, paste-back): the time of a 1-frame run (source detection and
encoding) is subtracted. Also here: `write_models`, which the tests use to write tiny random models
under the bundled file names.

    nice -n 10 python benchmarks/bench_chain.py --frames 8
    python benchmarks/bench_chain.py --device cuda --frames 64
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from age_reenact.agetransgan import AgeTransGAN, AgeTransGANGenerator  # noqa: E402
from age_reenact.agetransgan.convert import preprocessing_for  # noqa: E402
from age_reenact.bundled import ARCHITECTURES, BUNDLED, bundled_config  # noqa: E402
from age_reenact.aifd.encoder import AIFDEncoder  # noqa: E402
from age_reenact.chain import ORDERS, ChainSettings, reenact_and_age  # noqa: E402
from age_reenact.devices import describe_device  # noqa: E402
from age_reenact.estimator.resnet import AgeResNet  # noqa: E402
from age_reenact.face.detect import FaceDetector  # noqa: E402
from age_reenact.reenact import DualGeneratorReenactor, Reenactor  # noqa: E402
from age_reenact.weights import save_weights  # noqa: E402
from age_reenact.face.align import warp_affine  # noqa: E402
from age_reenact.images import load_image  # noqa: E402
from benchmarks.bench_reenactor import FIXTURES, einstein  # noqa: E402

TINY = {
    "agetransgan": dict(size=64, group=10, style_dim=32, n_mlp=2, channel_multiplier=1),
    "reenactor": dict(size=64, style_dim=8, identity_dim=64, identity_source="aifd", num_identities=2, base_channels=4, max_conv_dim=8),
    "age_estimator": dict(block="basic", layers=[1, 1, 1, 1], widths=[8, 16, 32, 64], stem_width=8, num_ages=102, norm="batch"),
    "aifd": dict(depth=[1, 1, 1, 1], widths=[16, 32, 64, 128], embedding_dim=64),
}
ESTIMATOR_PREPROCESSING = {"convention": "agetransgan", "size": 64, "channels": "rgb", "scale": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3, "readout": "median"}


def _random_agetransgan(config: dict) -> AgeTransGANGenerator:
    model = AgeTransGANGenerator(**config)
    with torch.no_grad():  # fresh models have zero noise weights; trained ones use the noise, so seeds matter
        for name, p in model.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.2)
    return model


def write_models(folder: str | Path, configs: dict[str, dict] = TINY, seed: int = 0) -> Path:
    """Random-weight models under the bundled names in folder/<family>/ (a folder for $AGE_REENACT_MODELS)."""
    folder = Path(folder)
    torch.manual_seed(seed)
    models = {
        "agetransgan": (_random_agetransgan(configs["agetransgan"]), preprocessing_for(configs["agetransgan"])),
        "reenactor": (DualGeneratorReenactor(**configs["reenactor"]), None),
        "age_estimator": (AgeResNet(**configs["age_estimator"]), ESTIMATOR_PREPROCESSING),
        "aifd": (AIFDEncoder(**configs["aifd"]), None),
    }
    for family, (model, preprocessing) in models.items():
        save_weights(folder / family / BUNDLED[family], model.eval().state_dict(), ARCHITECTURES[family], configs[family], preprocessing,
                     {"source": "random weights for tests and benchmarks"})
    return folder


def driving_video(frames: int) -> torch.Tensor:
    """The astronaut photo (512 px) swaying in roll, scale and position: uint8 [T, 512, 512, 3]."""
    photo = load_image(FIXTURES / "astronaut.png").permute(0, 3, 1, 2)
    video = torch.empty(frames, 512, 512, 3, dtype=torch.uint8)
    for t in range(frames):
        phase = 2 * math.pi * t / 30
        angle, scale = math.radians(6) * math.sin(phase), 1 + 0.04 * math.sin(phase / 2)
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) * scale
        centre = np.array([256.0, 200.0])
        matrix = np.concatenate([rotation, (centre - rotation @ centre + [5 * math.sin(phase), 0])[:, None]], 1)
        video[t] = (warp_affine(photo, matrix[None], (512, 512))[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0)
    return video


def seconds_per_frame(order: str, precision: str, device: torch.device, frames: int, chunk: int) -> tuple[float, float]:
    """(wall, CPU) seconds per driving frame; CPU time (all threads) is steadier on a shared machine."""
    torch.manual_seed(0)
    ager = AgeTransGAN.create(_random_agetransgan(bundled_config("agetransgan")[0]), device, precision)
    reenactor = Reenactor(DualGeneratorReenactor(**bundled_config("reenactor")[0]), None, device, precision)
    image, _ = einstein()
    video = driving_video(frames + 1)
    settings = ChainSettings(order=order, mode="relative", smoothing=0.3, chunk_size=chunk)
    detector = FaceDetector(landmarks="68")

    def timed(count: int) -> np.ndarray:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = np.array([time.perf_counter(), time.process_time()])
        reenact_and_age(reenactor, ager, image, video[:count], "50-69", settings, detector)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return np.array([time.perf_counter(), time.process_time()]) - start

    timed(1)  # warm-up
    return tuple((timed(frames + 1) - timed(1)) / frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device: {describe_device(device)}; {args.frames} frames of 512x512, chunk {args.chunk}, 1 target group")
    for family in ("agetransgan", "reenactor"):
        config, origin = bundled_config(family)
        print(f"{family}: {config} ({origin})")
    print(f"\n{'order':>17} {'precision':>9} {'s/frame':>8} {'CPU s/frame':>11}")
    for order in ORDERS:
        for precision in args.precisions:
            wall, cpu = seconds_per_frame(order, precision, device, args.frames, args.chunk)
            print(f"{order:>17} {precision:>9} {wall:>8.3f} {cpu:>11.3f}")
    video, detector = driving_video(args.frames), FaceDetector(landmarks="68")
    start = time.perf_counter()
    for frame in video:
        detector.detect(frame.numpy())
    print(f"of which face detection (dlib HOG + 68 landmarks, CPU): {(time.perf_counter() - start) / args.frames:.3f} s/frame")


if __name__ == "__main__":
    main()
