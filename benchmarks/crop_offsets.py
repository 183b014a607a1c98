"""How far the crop moves: the official eye rules against the six-point means, dlib's landmarks against hand
labels, and the pack's resampling against cv2.warpAffine's.

A crop's offset is where two frame->crop matrices put the face's 68 hand-labelled points, in crop pixels
at the convention's official size (AgeTransGAN 1024, reenactor 256, ArcFace 112): mean and max over the
points. FG-NET's own 68-point order shares seven points with iBUG's (eye corners, nose tip, mouth corners),
which fix the reenactor's crop exactly; the AgeTransGAN and ArcFace rows there use the corner midpoints
on both sides, a proxy for the eye centres FG-NET does not mark.

Usage: python benchmarks/crop_offsets.py [--fgnet ../shared/data/fgnet] [--limit 200]
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the repository root first
from age_reenact.face.align import warp_affine  # noqa: E402
from age_reenact.face.crop import crops_from_points, extract_crops  # noqa: E402
from age_reenact.face.detect import FaceDetector  # noqa: E402
from age_reenact.face.templates import CONVENTIONS, five_points_from_68, get_convention  # noqa: E402
from age_reenact.images import load_image, to_uint8  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"agetransgan": 1024, "reenactor": 256, "arcface": 112}
# FG-NET index of iBUG 36, 39, 42, 45 (eye corners), 30 (nose tip), 48, 54 (mouth corners): the nearest
# FG-NET point to each dlib point, median over 119 FG-NET train photos (0.02 interocular; next nearest 0.08+).
FGNET_AS_IBUG = {36: 27, 39: 29, 42: 34, 45: 32, 30: 67, 48: 48, 54: 54}


def read_pts(path: Path) -> np.ndarray:
    return np.loadtxt(path, skiprows=3, max_rows=68) - 1.0  # .pts files are 1-based


def matrix(points5: np.ndarray, convention: str) -> np.ndarray:
    record = crops_from_points((1, 1), 1, [0], [np.zeros((5, 2))], [points5], convention, SIZES[convention])
    return record.matrices[0]


def offset(a: np.ndarray, b: np.ndarray, points: np.ndarray) -> tuple[float, float]:
    shift = np.linalg.norm(points @ (a[:, :2] - b[:, :2]).T + (a[:, 2] - b[:, 2]), axis=1)
    return float(shift.mean()), float(shift.max())


def dlib_face(image, points: np.ndarray, detector: FaceDetector):
    faces = detector.detect(to_uint8(image[0]))
    centre = points.mean(0)
    return min(faces, key=lambda f: np.linalg.norm(f.landmarks.mean(0) - centre)) if faces else None


def einstein_rows(detector: FaceDetector) -> list[str]:
    image = load_image(ROOT / "tests" / "fixtures" / "einstein.jpg")
    labels = read_pts(ROOT / "tests" / "fixtures" / "einstein.pts")
    face = dlib_face(image, labels, detector)
    rows = []
    for name in SIZES:
        conv = get_convention(name)
        official = matrix(five_points_from_68(labels, conv.eyes), name)
        rule = offset(matrix(five_points_from_68(labels), name), official, labels)
        found = offset(matrix(five_points_from_68(face.landmarks, conv.eyes), name), official, labels)
        rows.append(f"| {name} | {SIZES[name]} | {conv.eyes} | {rule[0]:.2f} / {rule[1]:.2f} | {found[0]:.2f} / {found[1]:.2f} |")
    return rows


def resampling_rows() -> list[str]:
    """The pack's warp against the official cv2.warpAffine (bilinear) of the 200 px padded frame, same matrix."""
    try:
        import cv2
    except ImportError:
        return ["(cv2 is not installed: resampling not compared)"]
    image = load_image(ROOT / "tests" / "fixtures" / "einstein.jpg")
    labels = read_pts(ROOT / "tests" / "fixtures" / "einstein.pts")
    rows = []
    for name in ("agetransgan", "reenactor"):
        record = crops_from_points(tuple(image.shape[1:3]), 1, [0], [labels], [five_points_from_68(labels)], name, SIZES[name])
        padded = cv2.copyMakeBorder(image[0].numpy(), 200, 200, 200, 200, cv2.BORDER_CONSTANT, value=0)
        shifted = record.matrices[0].copy()
        shifted[:, 2] -= shifted[:, :2] @ [200, 200]  # the official matrix maps padded-frame pixels
        reference = cv2.warpAffine(padded, shifted, (SIZES[name], SIZES[name]))
        bilinear = warp_affine(image.permute(0, 3, 1, 2), record.matrices, (SIZES[name],) * 2, mode="bilinear", antialias=False)[0].permute(1, 2, 0).numpy()
        ours = extract_crops(image, record)[0].numpy()
        for label, crop in (("grid_sample bilinear", bilinear), ("pack (bicubic, clamped)", ours)):
            diff = np.abs(crop - reference) * 255
            rows.append(f"| {name} {SIZES[name]} | {label} | {diff.mean():.3f} | {np.percentile(diff, 99):.2f} | {diff.max():.1f} |")
    return rows


def fgnet_rows(folder: Path, limit: int, detector: FaceDetector) -> list[str]:
    labels = [r for r in csv.DictReader(open(folder / "labels.csv")) if r["split"] == "test"][:limit]
    shifts: dict[str, list[tuple[float, float]]] = {name: [] for name in SIZES}
    missed = 0
    for row in labels:
        points = read_pts(folder / "points" / row["file"].replace(".jpg", ".pts"))
        hand = np.full((68, 2), np.nan)
        for ibug, fg in FGNET_AS_IBUG.items():
            hand[ibug] = points[fg]
        face = dlib_face(load_image(folder / "images" / row["file"]), hand[list(FGNET_AS_IBUG)], detector)
        if face is None:
            missed += 1
            continue
        shared = hand[list(FGNET_AS_IBUG)]
        for name in SIZES:
            a, b = five_points_from_68(hand, "corners"), five_points_from_68(face.landmarks, "corners")
            shifts[name].append(offset(matrix(b, name), matrix(a, name), shared))
    rows = []
    for name, values in shifts.items():
        mean, peak = np.array(values).T
        rows.append(f"| {name} | {SIZES[name]} | {len(values)} | {np.median(mean):.2f} | {np.percentile(mean, 90):.2f} | {np.median(peak):.2f} |")
    return rows + [f"\n{missed} of {len(labels)} photos had no face found."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fgnet", type=Path, default=ROOT.parent / "shared" / "data" / "fgnet")
    parser.add_argument("--limit", type=int, default=200, help="FG-NET test photos")
    args = parser.parse_args()
    detector = FaceDetector(upsample=2)
    assert set(SIZES) == set(CONVENTIONS)
    print("Einstein (tests/fixtures), crop offset in crop px, mean / max over the 68 hand points\n")
    print("| convention | size | official eye rule | six-point means vs official rule | dlib 68 vs hand, official rule |\n|---|---|---|---|---|")
    print("\n".join(einstein_rows(detector)))
    print("\nResampling against cv2.warpAffine of the padded frame (same matrix), |difference| in 0..255 levels\n")
    print("| crop | warp | mean | p99 | max |\n|---|---|---|---|---|")
    print("\n".join(resampling_rows()))
    if (args.fgnet / "labels.csv").is_file():
        print(f"\nFG-NET test photos, dlib 68 vs hand points (eye-corner rule), crop offset in crop px over the 7 shared points\n")
        print("| convention | size | photos | median of mean | p90 of mean | median of max |\n|---|---|---|---|---|---|")
        print("\n".join(fgnet_rows(args.fgnet, args.limit, detector)))
    else:
        print(f"\n{args.fgnet} has no labels.csv: FG-NET skipped.")


if __name__ == "__main__":
    main()
