"""Reenact-and-age chain speed: seconds per driving frame, by order and precision, at the bundled models' size.

The models have the configs of the bundled files when those are present (weights/<family>/), else those
of the training tasks' default presets (128 px AgeTransGAN and reenactor); weights are random, which does
not change the speed. One target group, a 512 px driving video (the astronaut photo swaying,
bench_reenactor.synthetic_video), driver landmarks detected on every frame (detect every 1) or tracked
between keyframes (the default, 10); per-frame work only (landmarks, reenactment, ageing, paste-back):
the time of a 1-frame run (source detection and encoding) is subtracted. Also here: `write_models`,
which the tests use to write tiny random models under the bundled file names.

    nice -n 10 python benchmarks/bench_chain.py --frames 8
    python benchmarks/bench_chain.py --device cuda --frames 64
"""
from __future__ import annotations

import argparse
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
from age_reenact.face.track import LandmarkTracker  # noqa: E402
from age_reenact.reenact import DualGeneratorReenactor, Reenactor  # noqa: E402
from age_reenact.weights import save_weights  # noqa: E402
from benchmarks.bench_reenactor import astronaut, einstein, synthetic_video  # noqa: E402

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
    """The astronaut photo swaying in roll, scale and position: uint8 [T, 512, 512, 3]."""
    image, landmarks = astronaut()
    return synthetic_video(image, landmarks, frames, size=512, eye_distance=0.1)[0]


def seconds_per_frame(order: str, precision: str, device: torch.device, frames: int, chunk: int, detect_every: int = 10) -> tuple[float, float]:
    """(wall, CPU) seconds per driving frame; CPU time (all threads) is steadier on a shared machine."""
    torch.manual_seed(0)
    ager = AgeTransGAN.create(_random_agetransgan(bundled_config("agetransgan")[0]), device, precision)
    reenactor = Reenactor(DualGeneratorReenactor(**bundled_config("reenactor")[0]), None, device, precision)
    image, _ = einstein()
    video = driving_video(frames + 1)
    settings = ChainSettings(order=order, mode="relative", smoothing=0.3, chunk_size=chunk, detect_every=detect_every)
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


def landmark_seconds(video: torch.Tensor, detect_every: int) -> tuple[float, int]:
    """CPU seconds per frame for the driver's landmarks alone (detected every `detect_every` frames, tracked
    in between), and how many full detections ran."""
    tracker = LandmarkTracker(FaceDetector(landmarks="68"), detect_every)
    start = time.process_time()
    for frame in video:
        tracker(frame.numpy())
    return (time.process_time() - start) / len(video), tracker.detections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--orders", nargs="+", default=list(ORDERS), choices=ORDERS)
    parser.add_argument("--detect-every", type=int, nargs="+", default=[1, 10], help="1: detect every driving frame; N: track between detections")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device: {describe_device(device)}; {args.frames} frames of 512x512, chunk {args.chunk}, 1 target group")
    for family in ("agetransgan", "reenactor"):
        config, origin = bundled_config(family)
        print(f"{family}: {config} ({origin})")
    print(f"\n{'order':>17} {'precision':>9} {'detect every':>12} {'s/frame':>8} {'frames/s':>8} {'CPU s/frame':>11}")
    for order in args.orders:
        for precision in args.precisions:
            for every in args.detect_every:
                wall, cpu = seconds_per_frame(order, precision, device, args.frames, args.chunk, every)
                print(f"{order:>17} {precision:>9} {every:>12} {wall:>8.3f} {1 / wall:>8.2f} {cpu:>11.3f}")
    video = driving_video(args.frames)
    for every in args.detect_every:
        seconds, detections = landmark_seconds(video, every)
        print(f"of which driver landmarks, detect every {every}: {seconds:.3f} CPU s/frame ({detections} detections)")


if __name__ == "__main__":
    main()
