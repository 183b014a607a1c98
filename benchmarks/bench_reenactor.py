"""Dual-generator reenactor benchmark: frames per second and memory growth over long videos.

    python benchmarks/bench_reenactor.py            # speed table + memory table
    python benchmarks/bench_reenactor.py --quick    # fewer frames, for a smoke run
    python benchmarks/bench_reenactor.py --training --preset small --batch 8 --threads 2 [--no-bf16] [--elastic 0.02]
        [--aifd-encoder FILE|random] [--perceptual FILE] [--steps 8]   # training images/s, per step

Speed: official-width models (random weights; speed does not depend on the values) at 128 and 256 px,
fp32 and bf16, on CUDA when present, else the CPU. "generator" is the face generator alone on a batch of
sketches; "pipeline" is the whole chunked pipeline (sketches, shape generator, face generator, paste-back)
on a synthetic 512 px driving video with known landmarks, so face detection is timed separately
("detection", dlib HOG on the CPU, the same for every model).

Memory: a tiny model on a synthetic 256 px video of N frames, each run in a fresh process. The table gives
the peak RSS growth during the run, minus the output batches (which must grow with N): flat numbers
across N mean the working memory does not grow with the video.

Training (--training): the reenactor task's own step (`training/reenactor.py`: crop jitter and sketches,
face generator and discriminator updates, shape generator and critic updates, EMA) on synthetic faces
(noise canvases with the fixture portrait's landmarks, jittered; half pairs, half self-reconstruction
copies), so no data set or face detection is needed. Prints each step's time and images/s after one
warm-up step, then the mean: lazy R1 runs every 4th step (step 0 included), so a multiple of 4 steps
gives the long-run rate. `--aifd-encoder random` times the AIFD identity code with a random-weight
encoder of training/aifd.py's small preset.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from age_reenact.devices import describe_device  # noqa: E402
from age_reenact.face.align import similarity_transform, transform_points, warp_affine  # noqa: E402
from age_reenact.face.templates import five_points_from_68  # noqa: E402
from age_reenact.images import load_image  # noqa: E402
from age_reenact.reenact import DualGeneratorReenactor, Reenactor, reenact  # noqa: E402

if TYPE_CHECKING:  # the training modules load only for --training: the video benchmarks import this file
    from training.face_data import AlignedFaces
    from training.reenactor import FaceItem

FIXTURES = ROOT / "tests" / "fixtures"
TINY = {"style_dim": 16, "identity_dim": 8, "identity_source": "aifd", "num_identities": 4, "base_channels": 8, "max_conv_dim": 32}


def einstein() -> tuple[torch.Tensor, np.ndarray]:
    """The fixture portrait and its hand-labelled landmarks (0-based pixels)."""
    return load_image(FIXTURES / "einstein.jpg"), np.loadtxt(FIXTURES / "einstein.pts", skiprows=3, max_rows=68) - 1.0


def astronaut() -> tuple[torch.Tensor, np.ndarray]:
    """The astronaut photo and the 68 landmarks the pack's detector finds on it: a driver whose synthetic
    motion the detector follows (it misses Einstein's raised head in many moved frames), and whose true
    landmarks in every moved frame are these, moved."""
    from age_reenact.face.detect import FaceDetector
    from age_reenact.images import to_uint8

    image = load_image(FIXTURES / "astronaut.png")
    return image, FaceDetector(landmarks="68").detect(to_uint8(image[0]))[0].landmarks


def synthetic_video(
    image: torch.Tensor,
    landmarks: np.ndarray,
    frames: int,
    size: int = 256,
    eye_distance: float = 0.2,
    period: float = 60,
    noise: float = 0.0,
    jpeg: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, np.ndarray]:
    """A head-motion video made by warping one face: uint8 [T, size, size, 3] frames and their true landmarks.

    The face (eyes eye_distance * size apart, centred) sways in roll (8 degrees), scale (5 %) and position
    (a few px) along sines of `period` frames. noise (grey levels, std) and jpeg (a quality) degrade each
    frame independently, as a camera and a codec do, so a detector's landmarks jitter around the true
    ones. Frames are made one at a time into a uint8 batch: a long video has no large float temporaries.
    """
    points5 = five_points_from_68(landmarks)
    rng = np.random.default_rng(seed)
    centre = np.array([size / 2, size / 2])
    base_eyes = np.array([[-eye_distance / 2, -0.06], [eye_distance / 2, -0.06]]) * size + centre
    source = image[:1].permute(0, 3, 1, 2)
    video = torch.empty(frames, size, size, 3, dtype=torch.uint8)
    tracks = np.empty((frames, 68, 2))
    for t in range(frames):
        phase = 2 * math.pi * t / period
        angle, scale = math.radians(8) * math.sin(phase), 1 + 0.05 * math.sin(phase / 2)
        shift = np.array([6 * math.sin(phase / 3), 4 * math.cos(phase / 2)])
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) * scale
        matrix = similarity_transform(points5[:2], (base_eyes - centre) @ rotation.T + centre + shift)
        tracks[t] = transform_points(matrix, landmarks)
        frame = warp_affine(source, matrix[None], (size, size))[0].permute(1, 2, 0) * 255
        if noise:
            frame = frame + torch.from_numpy(rng.normal(0.0, noise, frame.shape)).float()
        frame = (frame.clamp(0, 255) + 0.5).to(torch.uint8)
        if jpeg is not None:
            buffer = io.BytesIO()
            Image.fromarray(frame.numpy()).save(buffer, format="JPEG", quality=jpeg)
            frame = torch.from_numpy(np.array(Image.open(buffer).convert("RGB")))
        video[t] = frame
    return video, tracks


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def speed(size: int, precision: str, device: torch.device, frames: int, batch: int) -> dict[str, float]:
    torch.manual_seed(0)
    reenactor = Reenactor(DualGeneratorReenactor(size=size, identity_dim=8, identity_source="aifd"), lambda x: x.new_zeros(len(x), 8), device, precision)
    image, landmarks = einstein()
    video, tracks = synthetic_video(image, landmarks, frames, size=512)
    style = reenactor.style(torch.rand(1, size, size, 3))
    sketches = torch.rand(batch, 3, size, size).round()  # the generator's cost does not depend on the strokes
    reenactor.generate(sketches, style)  # warm-up
    _sync(device)
    repeats = max(1, frames // batch)
    start = time.perf_counter()
    for _ in range(repeats):
        reenactor.generate(sketches, style)
    _sync(device)
    generator_fps = repeats * batch / (time.perf_counter() - start)
    start = time.perf_counter()
    reenact(reenactor, image, video, mode="absolute", source_landmarks=landmarks, driving_landmarks=tracks, chunk_size=batch)
    _sync(device)
    return {"generator": generator_fps, "pipeline": frames / (time.perf_counter() - start)}


def detection_fps(frames: int) -> float:
    from age_reenact.face.detect import FaceDetector
    from age_reenact.images import to_uint8

    image, landmarks = einstein()
    video, _ = synthetic_video(image, landmarks, frames, size=512)
    detector = FaceDetector(landmarks="68")
    start = time.perf_counter()
    for frame in video:
        detector.detect(to_uint8(frame.float() / 255))
    return frames / (time.perf_counter() - start)


def _reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM)."""
    Path("/proc/self/clear_refs").write_text("5")


def _rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) in MiB, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(frames: int, output: str) -> dict[str, float]:
    """Run once in this process and report the peak RSS growth of the run itself."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    reenactor = Reenactor(DualGeneratorReenactor(size=256, **TINY), None, "cpu")
    image, landmarks = einstein()
    video, tracks = synthetic_video(image, landmarks, frames, size=256)
    _reset_peak_rss()
    before = _rss_mb("VmRSS")
    result = reenact(reenactor, image, video, mode="relative", smoothing=0.3, output=output, source_landmarks=landmarks, driving_landmarks=tracks)
    growth = _rss_mb("VmHWM") - before
    outputs = sum(t.numel() * t.element_size() for t in (result.images, result.masks, result.sketches)) / 2**20
    return {"frames": frames, "output": output, "peak_growth_mb": growth, "outputs_mb": outputs, "working_mb": growth - outputs}


def synthetic_faces(size: int, count: int = 32, seed: int = 0) -> tuple[list[FaceItem], AlignedFaces]:
    """Face items (count // 2 in pairs of the same person, then copies, 4 val faces) and their faces: noise
    canvases, the fixture portrait's landmarks fitted into the crop and moved a few px per face."""
    from training.face_data import AlignedFaces, _canvas_size
    from training.reenactor import CONVENTION, FaceItem

    rng = np.random.default_rng(seed)
    canvas = _canvas_size(size, 0.25)
    _, landmarks = einstein()
    low, high = landmarks.min(0), landmarks.max(0)
    shape = (landmarks - low) / (high - low).max() * 0.7 * size + 0.15 * size + (canvas - size) / 2  # the face in the crop's middle
    points = shape + rng.normal(0, 0.01 * size, (count, 68, 2))
    images = rng.integers(0, 256, (count, canvas, canvas, 3), dtype=np.uint8)
    pairs = count // 2
    items = [FaceItem(Path(f"face_{i}"), i // 2 if i < pairs else -1, "val" if i >= count - 4 else "train", "synthetic") for i in range(count)]
    return items, AlignedFaces.from_arrays(items, CONVENTION, size, images, points)


def training_speed(args: argparse.Namespace) -> None:
    """Print the time and images/s of each training step of the reenactor task on synthetic faces."""
    import tempfile

    from training.__main__ import build_parser
    from training.engine import Context, RunConfig
    from training.reenactor import PRESETS, ReenactorTask

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = PRESETS[args.preset]["size"]
    items, faces = synthetic_faces(size)

    class SyntheticTask(ReenactorTask):
        def _setup_data(self, ctx: Context) -> None:
            self.index_faces(items, faces)

    with tempfile.TemporaryDirectory() as tmp:
        aifd = args.aifd_encoder
        if aifd == "random":
            from age_reenact.aifd.encoder import PREPROCESSING as AIFD_PREPROCESSING
            from age_reenact.aifd.encoder import AIFDEncoder
            from age_reenact.weights import save_weights
            from training.aifd import PRESETS as AIFD_PRESETS

            config = {**AIFD_PRESETS["small"], "afd_variant": "tpami"}
            aifd = str(save_weights(Path(tmp) / "aifd.safetensors", AIFDEncoder(**config).state_dict(), "aifd_encoder", config, AIFD_PREPROCESSING))
        argv = ["reenactor", "--lfw", "synthetic", "--out", tmp, "--preset", args.preset, "--elastic", str(args.elastic), "--sample-every", "0"]
        argv += ["--aifd-encoder", aifd] if aifd else []
        argv += ["--perceptual", args.perceptual] if args.perceptual else []
        ctx = Context(RunConfig(out_dir=tmp, steps=args.steps + 1, batch_size=args.batch, bf16=args.bf16))
        task = SyntheticTask(build_parser().parse_args(argv))
        task.setup(ctx)
        print(f"# reenactor training step: preset {args.preset}, {size} px, batch {args.batch}, {'bf16' if args.bf16 else 'fp32'}, "
              f"{args.threads} threads, elastic {args.elastic:g}, identity {task.config['identity_source']}, perceptual {task.perceptual.name}; "
              f"{describe_device(ctx.device)}")
        times = []
        for step in range(args.steps + 1):
            ctx.step = step
            _sync(ctx.device)
            start = time.perf_counter()
            task.train_step(ctx)
            _sync(ctx.device)
            seconds = time.perf_counter() - start
            label = f"step {step}{' (warm-up)' if step == 0 else ''}{' R1' if task._r1_due(ctx) else ''}"
            print(f"{label}: {1000 * seconds:.0f} ms, {args.batch / seconds:.2f} images/s", flush=True)
            times += [seconds] if step else []
        print(f"mean over {len(times)} steps: {args.batch * len(times) / sum(times):.2f} images/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--output", default="paste", help=argparse.SUPPRESS)
    parser.add_argument("--training", action="store_true", help="time training steps instead (the options below)")
    parser.add_argument("--preset", default="small", help="training: model preset (training/reenactor.py PRESETS)")
    parser.add_argument("--batch", type=int, default=8, help="training: batch size")
    parser.add_argument("--steps", type=int, default=8, help="training: timed steps after one warm-up step")
    parser.add_argument("--threads", type=int, default=2, help="training: torch threads")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false", help="training: fp32 instead of bf16 autocast")
    parser.add_argument("--elastic", type=float, default=0.0, help="training: elastic warp amplitude (share of the crop)")
    parser.add_argument("--aifd-encoder", help="training: AIFD encoder file for the identity code, or 'random' (default: style code)")
    parser.add_argument("--perceptual", help="training: perceptual network file (default: multi-scale L1 + SSIM)")
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.output)))
        return
    if args.training:
        training_speed(args)
        return

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cpu = device.type == "cpu"
    frames = 8 if args.quick else (16 if cpu else 256)
    batch = 4 if cpu else 16
    print(f"device: {describe_device(device)}")
    print(f"\nspeed (frames per second; official widths, random weights; {frames} frames, chunk {batch})")
    print(f"{'size':>5} {'precision':>9} {'generator':>10} {'pipeline':>9}")
    for size in (128, 256):
        for precision in ("fp32", "bf16"):
            result = speed(size, precision, device, frames, batch)
            print(f"{size:>5} {precision:>9} {result['generator']:>10.2f} {result['pipeline']:>9.2f}")
    print(f"detection (dlib HOG + 68 landmarks, 512 px frames, CPU): {detection_fps(frames):.1f} fps")

    print("\nmemory (tiny model, 256 px video, relative mode, smoothing 0.3; MiB; each run in a fresh process)")
    print(f"{'output':>6} {'frames':>6} {'peak growth':>11} {'outputs':>8} {'working':>8}")
    for output in ("paste", "crops"):
        for count in ((30, 90) if args.quick else (60, 300)):
            line = subprocess.run([sys.executable, __file__, "--memory-child", str(count), "--output", output], capture_output=True, text=True, check=True).stdout
            row = json.loads(line.strip().splitlines()[-1])
            print(f"{output:>6} {count:>6} {row['peak_growth_mb']:>11.1f} {row['outputs_mb']:>8.1f} {row['working_mb']:>8.1f}")


if __name__ == "__main__":
    main()
