"""Build multi-pose face data ("FFHQ-aging Multi-Pose"): every face of a folder re-rendered in N new poses.

    python -m training.build_multipose FACES OUT --checkpoint sd15.safetensors --controlnet openpose.safetensors \\
        --tokenizer ComfyUI/comfy/sd1_tokenizer --age-model estimator.safetensors --poses 4

Per face: 68 landmarks -> aligned crop -> N target poses (absolute yaw/pitch/roll drawn per face and
pose index from the seed, so a rerun draws the same ones) -> pose map -> ControlNet img2img -> age
relabelled with the age estimator. Each image is written (to a temporary name, then renamed) and its
manifest row appended and flushed before the next one starts, so an interruption loses at most the
image in progress; rerunning the same command skips what the manifest lists.

Manifest OUT/manifest.csv: file (relative to OUT), source (relative to FACES), yaw, pitch, roll
(target pose, degrees), age (years; empty when the estimator finds no face), group (FFHQ-Aging group).
"""
from __future__ import annotations

import argparse
import csv
import os
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from age_reenact import age_groups
from age_reenact.augment.augmenter import AugmentSettings
from age_reenact.augment.pose3d import target_landmarks
from age_reenact.augment.pose_maps import STYLES, draw_pose_maps
from age_reenact.face.crop import crops_from_points, extract_crops
from age_reenact.face.templates import five_points_from_68
from age_reenact.images import load_image, save_image
from age_reenact.labels import IMAGE_SUFFIXES

FIELDS = ["file", "source", "yaw", "pitch", "roll", "age", "group"]
MANIFEST = "manifest.csv"

AgeFn = Callable[[torch.Tensor], Sequence[float]]  # IMAGE [N, H, W, 3] -> ages (NaN: no face)
LandmarksFn = Callable[[torch.Tensor], "np.ndarray | None"]  # IMAGE [1, H, W, 3] -> (68, 2) or None
Augmenter = Callable[..., torch.Tensor]  # (sources, pose_maps, settings) -> IMAGE, e.g. a PoseAugmenter


@dataclass(frozen=True)
class PoseRanges:
    """Target poses are drawn uniformly in +-these degrees (absolute: 0 is frontal)."""

    yaw: float = 40.0
    pitch: float = 15.0
    roll: float = 10.0


def pose_for(source: str, index: int, ranges: PoseRanges, seed: int = 0) -> np.ndarray:
    """(yaw, pitch, roll) of pose `index` of a source: fixed by name, index and seed, whatever N is."""
    rng = np.random.default_rng([seed, zlib.crc32(source.encode()), index])
    return rng.uniform(-1.0, 1.0, 3) * np.array([ranges.yaw, ranges.pitch, ranges.roll])


def output_name(source: str, index: int) -> str:
    return (Path("images") / Path(source).with_suffix("")).as_posix() + f"_pose{index}.png"


def read_manifest(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    with open(path, newline="") as handle:
        return {row["file"] for row in csv.DictReader(handle)}


def dlib_landmarks() -> LandmarksFn:
    """Landmarks of the largest face, from the pack's dlib detector (68-point predictor)."""
    from age_reenact.face.detect import FaceDetector, largest
    from age_reenact.images import to_uint8

    detector = FaceDetector(upsample=1, landmarks="68")

    def landmarks(image: torch.Tensor):
        face = largest(detector.detect(to_uint8(image[0])))
        return None if face is None else face.landmarks

    return landmarks


def estimator_age_fn(model: str) -> AgeFn:
    """Ages from the project's age estimator (a file path or a name in the age_estimator model folder),
    re-detecting each face so the estimator sees its own crop convention."""
    from age_reenact.estimator.predict import AgeEstimator
    from age_reenact.face.detect import FaceDetector
    from age_reenact.model_paths import resolve_model

    path = Path(model) if Path(model).is_file() else resolve_model("age_estimator", model)
    estimator, detector = AgeEstimator.load(path), FaceDetector(upsample=1)
    return lambda images: estimator.estimate(images, detector, choice="largest")[0]


def _append_row(path: Path, row: dict) -> None:
    new = not path.is_file() or path.stat().st_size == 0
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)
        handle.flush()
        os.fsync(handle.fileno())


def _save_atomic(image: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.stem + ".partial" + path.suffix)
    save_image(image, temporary)
    os.replace(temporary, path)


def build_multipose(
    faces: str | Path,
    out: str | Path,
    augmenter: Augmenter,
    age_fn: AgeFn,
    poses_per_face: int = 4,
    ranges: PoseRanges = PoseRanges(),
    settings: AugmentSettings = AugmentSettings(),
    style: str = "openpose_face",
    convention: str = "agetransgan",
    landmarks_fn: LandmarksFn | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Write the missing poses of every face in `faces` to `out`; returns how many images were written.

    augmenter: (source crops, pose maps, settings) -> IMAGE, e.g. `PoseAugmenter`. age_fn: the age
    relabeller (`estimator_age_fn(name)` for the project's estimator). landmarks_fn: 68 landmarks of the
    face in an image, default dlib's. Sources without a face are skipped (and retried on a rerun).
    """
    if style not in STYLES:
        raise ValueError(f"unknown pose map style {style!r}; choose one of {STYLES}")
    faces, out = Path(faces), Path(out)
    manifest = out / MANIFEST
    done = read_manifest(manifest)
    sources = sorted(  # an OUT inside FACES must not feed its own outputs back in
        p.relative_to(faces).as_posix() for p in faces.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and out.resolve() not in p.resolve().parents
    )
    todo = {s: [k for k in range(poses_per_face) if output_name(s, k) not in done] for s in sources}
    total = sum(len(v) for v in todo.values())
    landmarks_fn = landmarks_fn or dlib_landmarks()
    groups = age_groups.FFHQ_AGING_10
    written = 0
    out.mkdir(parents=True, exist_ok=True)
    for source, indices in todo.items():
        if not indices:
            continue
        image = load_image(faces / source)
        landmarks = landmarks_fn(image)
        if landmarks is None:
            print(f"skipped {source}: no face found")
            continue
        face_crop = crops_from_points(image.shape[1:3], 1, [0], [landmarks], [five_points_from_68(landmarks)], convention, settings.size)
        crop, crop_landmarks = extract_crops(image, face_crop), face_crop.crop_landmarks()
        for k in indices:
            angles = pose_for(source, k, ranges, seed)
            target, _ = target_landmarks(crop_landmarks, *angles, relative=False)
            pose_map = draw_pose_maps(target, settings.size, style)
            result = augmenter(crop, pose_map, replace(settings, seed=seed * 1000003 + zlib.crc32(f"{source}:{k}".encode())))
            age = float(np.asarray(age_fn(result), dtype=np.float64)[0])
            name = output_name(source, k)
            _save_atomic(result[0], out / name)
            _append_row(manifest, {
                "file": name, "source": source, **{key: f"{a:.2f}" for key, a in zip(("yaw", "pitch", "roll"), angles)},
                "age": "" if np.isnan(age) else f"{age:.2f}", "group": "" if np.isnan(age) else groups.names[groups.group_of(age)],
            })
            written += 1
            if progress is not None:
                progress(written, total)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.build_multipose", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("faces", help="folder of face images (searched recursively)")
    parser.add_argument("out", help="output folder: images/ and manifest.csv")
    parser.add_argument("--checkpoint", required=True, help="SD1.5 .safetensors single file or diffusers folder")
    parser.add_argument("--controlnet", required=True, help="face ControlNet .safetensors file or diffusers folder")
    parser.add_argument("--tokenizer", default=None, help="CLIP tokenizer folder (e.g. ComfyUI/comfy/sd1_tokenizer)")
    parser.add_argument("--age-model", required=True, help="age estimator file, or a name in the age_estimator model folder")
    parser.add_argument("--poses", type=int, default=4, help="poses per face")
    parser.add_argument("--yaw", type=float, default=PoseRanges.yaw, help="target yaw drawn in +-this (degrees)")
    parser.add_argument("--pitch", type=float, default=PoseRanges.pitch)
    parser.add_argument("--roll", type=float, default=PoseRanges.roll)
    parser.add_argument("--style", choices=STYLES, default="openpose_face", help="must match the ControlNet")
    parser.add_argument("--convention", default="agetransgan", help="crop convention of the outputs")
    defaults = AugmentSettings()
    for field in ("prompt", "negative_prompt", "strength", "steps", "guidance", "control_scale", "size", "scheduler"):
        value = getattr(defaults, field)
        parser.add_argument("--" + field.replace("_", "-"), type=type(value), default=value)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", help="auto: fp16 on GPU, bf16 on CPU")
    args = parser.parse_args(argv)

    from tqdm import tqdm

    from age_reenact.augment.augmenter import PoseAugmenter

    augmenter = PoseAugmenter.load(args.checkpoint, args.controlnet, [args.tokenizer], args.device, args.precision)
    settings = AugmentSettings(**{f: getattr(args, f) for f in ("prompt", "negative_prompt", "strength", "steps", "guidance", "control_scale", "size", "scheduler")})
    bar = tqdm(unit="image")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    written = build_multipose(
        args.faces, args.out, augmenter, estimator_age_fn(args.age_model), args.poses, PoseRanges(args.yaw, args.pitch, args.roll),
        settings, args.style, args.convention, seed=args.seed, progress=progress,
    )
    bar.close()
    print(f"wrote {written} image(s); manifest: {Path(args.out) / MANIFEST}")


if __name__ == "__main__":
    main()
