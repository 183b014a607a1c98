"""`age-reenact bench`: the time and peak memory of each stage of the pipeline, and the node that runs it.

Every stage runs on the same 512 px frame (a fixture photo, or the user's), repeated to batch N:
detection, alignment, age estimation, age transform, reenactment, paste-back, and (on request) one
denoising step of the pose augmenter. Model stages run at each precision asked for; detection,
alignment and paste-back are fp32 code and run once. Models are the bundled files; a family without a
bundled file yet is timed with random weights at the size it is trained at (speed does not depend on
the values), and the table says so.

Peak memory, with the stage's model loaded inside the measured span: on CUDA, the most memory torch
allocated; on a Linux CPU, the process's peak resident memory (the high-water mark is reset through
/proc/self/clear_refs) and how much that is above what was resident before the stage. The allocator keeps
freed memory, so the peak depends on the stages before; "added" is the figure to compare. Elsewhere
peak memory is not measured (NaN).
"""
from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .bundled import bundled_config, bundled_or_random
from .devices import DTYPES, describe_device, resolve_device
from .face.crop import FaceCrops, detect_crops, extract_crops
from .face.detect import FaceDetector
from .face.paste import paste_crops
from .images import load_image, to_uint8

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "astronaut.png"
FRAME_SIZE = 512
# stage -> (the node that runs it, what one call does)
STAGES = {
    "detect": ("AgeReenactFaceCrop", "dlib HOG face detection + 68 landmarks, upsample 1"),
    "align": ("AgeReenactFaceCrop", "similarity warp of the face to AgeTransGAN's crop at the model size"),
    "estimate": ("AgeReenactEstimateAge", "age estimator on the crops, with the mirrored face"),
    "age_transform": ("AgeReenactAgeTransform", "AgeTransGAN generator, one target group"),
    "reenact": ("AgeReenactReenact", "sketches + reenacted face generator (relative mode, landmarks given)"),
    "paste": ("AgeReenactFacePaste", "feathered paste of the crops back into the frames"),
    "augment": ("AgeReenactAugmentPose", "SD1.5 + ControlNet img2img, 1 denoising step at 512 px, guidance on"),
}
MODEL_STAGES = ("estimate", "age_transform", "reenact", "augment")
DEFAULT_STAGES = tuple(s for s in STAGES if s != "augment")  # the augmenter needs GiBs and a minute per step on a CPU


@dataclass
class StageTiming:
    stage: str
    node: str
    precision: str
    batch: int
    seconds: float  # median of the timed calls
    per_image_ms: float
    peak_mib: float
    added_mib: float
    model: str


@dataclass
class BenchReport:
    header: dict
    rows: list[StageTiming] = field(default_factory=list)


class PeakMemory:
    """Peak memory of a block of work: torch's CUDA allocator, or the process's resident set on Linux."""

    def __init__(self, device: torch.device):
        self.device = device

    @staticmethod
    def _status(key: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB -> MiB
        return float("nan")

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
            except OSError:
                pass  # not Linux, or not allowed: the peak is then the process's since it started
            self.before = self._status("VmRSS") if Path("/proc/self/status").is_file() else float("nan")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif Path("/proc/self/status").is_file():
            self.peak = self._status("VmHWM")
        else:
            self.peak = float("nan")  # no portable peak-RSS reading elsewhere; times are still measured
        self.added = self.peak - self.before


def machine_header(device: torch.device) -> dict:
    import dlib

    header = {
        "device": describe_device(device),
        "machine": f"{platform.system()} {platform.machine()}, {_cpu_name()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "dlib": dlib.__version__,
        "numpy": np.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    if hasattr(os, "getloadavg"):  # other work on the machine slows every row; say how busy it was
        header["load average at start"] = f"{os.getloadavg()[0]:.1f} (on {os.cpu_count()} CPUs)"
    try:
        import diffusers

        header["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return header


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    def once() -> float:
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    once()  # warm-up: first-call allocations and kernel selection
    return statistics.median(once() for _ in range(repeats))


class StageInputs:
    """The frame batch and what earlier stages give the later ones, computed once per batch size."""

    def __init__(self, frame: torch.Tensor, batch: int, crop_size: int, detector: FaceDetector):
        self.frames = frame.expand(batch, -1, -1, -1).contiguous()
        self.face_crops: FaceCrops = detect_crops(self.frames, detector, "agetransgan", crop_size, "largest", on_no_face="error")
        self.crops = extract_crops(self.frames, self.face_crops)
        face = max(detector.detect(to_uint8(frame[0])), key=lambda f: f.area)
        self.landmarks = np.stack([face.landmarks] * batch)


def _bench_frame(image: str | Path | None) -> torch.Tensor:
    """The benchmark frame: [1, 512, 512, 3], the image resized so its longer side is 512 and padded."""
    frame = load_image(image or FIXTURE)[:1]
    h, w = frame.shape[1:3]
    scale = FRAME_SIZE / max(h, w)
    resized = torch.nn.functional.interpolate(frame.permute(0, 3, 1, 2), size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True)
    out = torch.zeros(1, 3, FRAME_SIZE, FRAME_SIZE)
    out[:, :, : resized.shape[2], : resized.shape[3]] = resized
    return out.permute(0, 2, 3, 1).clamp(0, 1)


def _model_stage(stage: str, precision: str, device: torch.device, inputs: StageInputs, augment: tuple[str, str] | str):
    """(the call to time, where its model came from) for a model stage at a precision."""
    from .agetransgan import AgeTransGAN
    from .estimator.predict import AgeEstimator
    from .reenact import Reenactor
    from .reenact.pipeline import reenact

    batch = len(inputs.frames)
    if stage == "estimate":
        model, origin = bundled_or_random("age_estimator")
        estimator = AgeEstimator(model.to(device), model.preprocessing)
        crops = inputs.crops
        return (lambda: estimator.estimate_crops(crops, batch_size=batch, dtype=DTYPES[precision])), origin
    if stage == "age_transform":
        model, origin = bundled_or_random("agetransgan")
        ager = AgeTransGAN.create(model, device, precision)
        codes = torch.zeros(batch, ager.group_count)
        codes[:, -1] = 1
        return (lambda: ager.generate(inputs.crops, codes, [0] * batch, chunk=batch)), origin
    if stage == "reenact":
        model, origin = bundled_or_random("reenactor")
        reenactor = Reenactor(model, None, device, precision)
        source = inputs.frames[:1]
        return (lambda: reenact(reenactor, source, inputs.frames, "relative", output="crops", source_landmarks=inputs.landmarks[0],
                                driving_landmarks=inputs.landmarks, chunk_size=batch)), origin
    if stage == "augment":
        return _augment_call(precision, device, inputs, augment)
    raise ValueError(f"unknown model stage {stage!r}")


def _augment_call(precision: str, device: torch.device, inputs: StageInputs, models: tuple[str, str] | str):
    """models: (SD1.5 checkpoint, ControlNet) files, or the name of a layout in diffusers_loading.SPECS to build with random weights."""
    from .augment.augmenter import AugmentSettings, PoseAugmenter
    from .augment.pose_maps import draw_pose_maps

    if isinstance(models, tuple):
        augmenter = PoseAugmenter.load(*models, device=str(device), precision=precision, offload=False)
        origin = f"{Path(models[0]).name} + {Path(models[1]).name}"
    else:
        import tempfile

        from .augment.diffusers_loading import BYTE_TOKENIZER_SIZE, SPECS, build_random_pipeline, load_tokenizer, write_byte_tokenizer

        # Timing needs a working tokenizer, not CLIP's vocabulary (its ids stay inside CLIP's 49408).
        tokenizer = load_tokenizer(write_byte_tokenizer(tempfile.mkdtemp()), BYTE_TOKENIZER_SIZE, 77)
        augmenter = PoseAugmenter(build_random_pipeline(SPECS[models], tokenizer, DTYPES[precision]), device, offload=False, name=models)
        origin = f"{models} layout, random weights"
    source = inputs.crops[:1]
    pose_map = draw_pose_maps(inputs.landmarks[:1], FRAME_SIZE)  # the frame's pose: the content does not change the time
    settings = AugmentSettings(steps=1, strength=1.0)
    return (lambda: augmenter(source, pose_map, settings)), origin


def run_benchmark(
    stages: tuple[str, ...] = DEFAULT_STAGES,
    batches: tuple[int, ...] = (1, 8),
    precisions: tuple[str, ...] = ("fp32", "bf16"),
    device: str = "auto",
    repeats: int = 3,
    image: str | Path | None = None,
    augment_models: tuple[str, str] | str = "sd15",
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Time each stage at each batch size (and each precision for model stages).

    augment_models: the user's (SD1.5 checkpoint, ControlNet) files, or a layout of random weights
    ("sd15"; "sd15-tiny" for tests).
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    unknown = [p for p in precisions if p not in DTYPES]
    if unknown:
        raise ValueError(f"unknown precision(s) {unknown}; choose from {list(DTYPES)}")
    if min(batches, default=0) < 1 or repeats < 1:
        raise ValueError("batch sizes and repeats must be at least 1.")
    device = resolve_device(device)
    detector = FaceDetector(upsample=1, landmarks="68")
    frame = _bench_frame(image)
    if not detector.detect(to_uint8(frame[0])):
        raise ValueError(f"no face found in {image or FIXTURE}; give a photo with one clear face.")
    report = BenchReport(machine_header(device) | {"frame": f"{FRAME_SIZE}x{FRAME_SIZE}", "repeats": repeats, "threads": torch.get_num_threads()})
    crop_size = bundled_config("agetransgan")[0]["size"]
    for batch in batches:
        inputs = StageInputs(frame, batch, crop_size, detector)
        for stage in stages:
            node, _ = STAGES[stage]
            if stage == "augment" and batch != min(batches):
                continue  # the augmenter renders one image at a time: batch N is N times batch 1
            for precision in precisions if stage in MODEL_STAGES else ("fp32",):
                if progress is not None:
                    progress(f"{stage} batch {batch} {precision}")
                with PeakMemory(device) as memory:
                    if stage in MODEL_STAGES:
                        call, origin = _model_stage(stage, precision, device, inputs, augment_models)
                    else:
                        call, origin = _geometry_stage(stage, inputs, detector), "dlib + torch"
                    seconds = _time(call, repeats, device)
                    del call
                    gc.collect()  # free this stage's model before the next stage's "before" reading
                size = 1 if stage == "augment" else batch
                report.rows.append(StageTiming(stage, node, precision, size, seconds, 1000 * seconds / size, memory.peak, memory.added, origin))
    return report


def _geometry_stage(stage: str, inputs: StageInputs, detector: FaceDetector) -> Callable[[], object]:
    frames = inputs.frames
    if stage == "detect":
        frames_uint8 = [to_uint8(f) for f in frames]
        return lambda: [detector.detect(f) for f in frames_uint8]
    if stage == "align":
        return lambda: extract_crops(frames, inputs.face_crops)
    if stage == "paste":
        return lambda: paste_crops(frames, inputs.crops, inputs.face_crops)
    raise ValueError(f"unknown stage {stage!r}")


def report_table(report: BenchReport) -> str:
    """Markdown: the header lines, then one row per stage, batch and precision."""
    lines = [f"- {key}: {value}" for key, value in report.header.items()]
    lines += ["", "| stage | node | precision | batch | s per call | ms per image | peak MiB | added MiB | model |", "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in report.rows:
        lines.append(f"| {r.stage} | {r.node} | {r.precision} | {r.batch} | {r.seconds:.3f} | {r.per_image_ms:.1f} | {r.peak_mib:.0f} | {r.added_mib:.0f} | {r.model} |")
    lines += ["", "Stages: " + "; ".join(f"{name}: {what}" for name, (_, what) in STAGES.items() if any(r.stage == name for r in report.rows)) + "."]
    return "\n".join(lines)


def save_report(report: BenchReport, out: str | Path) -> tuple[Path, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps({"header": report.header, "rows": [asdict(r) for r in report.rows]}, indent=2))
    (out / "bench.md").write_text(report_table(report) + "\n")
    return out / "bench.md", out / "bench.json"
