"""Per-stage face geometry timings (detect, landmarks, align, crop, paste) on a 512 px and a 1920x1080 frame.

Usage: python benchmarks/bench_face.py [--repeats 5] [--upsample 1]
Target (issue 2): crop + paste overhead under 150 ms for a 512 px frame on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the repository root first
from age_reenact.devices import describe_device  # noqa: E402
from age_reenact.face.align import fit_to_convention  # noqa: E402
from age_reenact.face.crop import crops_from_points, extract_crops  # noqa: E402
from age_reenact.face.detect import FaceDetector  # noqa: E402
from age_reenact.face.paste import paste_crops  # noqa: E402
from age_reenact.face.templates import AGETRANSGAN, five_points_from_68  # noqa: E402
from age_reenact.images import load_image, to_uint8  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "astronaut.png"


def frames() -> dict[str, torch.Tensor]:
    portrait = load_image(FIXTURE)
    hd = torch.zeros(1, 1080, 1920, 3)
    big = torch.nn.functional.interpolate(portrait.permute(0, 3, 1, 2), size=(1024, 1024), mode="bilinear").permute(0, 2, 3, 1)
    hd[:, 28:1052, 448:1472] = big
    return {"512x512": portrait, "1920x1080": hd}


def best_of(repeats: int, fn):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--upsample", type=int, default=1)
    parser.add_argument("--size", type=int, default=256, help="crop size")
    args = parser.parse_args()
    print(f"# face geometry, {describe_device()}, upsample {args.upsample}, crop {args.size}")
    print("| frame | detect ms | landmarks ms | align ms | crop ms | paste ms | total ms |")
    print("|---|---|---|---|---|---|---|")
    detector = FaceDetector(upsample=args.upsample)
    for name, image in frames().items():
        array = to_uint8(image[0])
        t_detect, boxes = best_of(args.repeats, lambda: detector.boxes(array))
        box = max(boxes, key=lambda b: (b[0][2] - b[0][0]))[0]
        t_landmarks, landmarks = best_of(args.repeats, lambda: detector.landmarks_in(array, box))
        points5 = five_points_from_68(landmarks)
        t_align, _ = best_of(args.repeats, lambda: fit_to_convention(points5, AGETRANSGAN, args.size))
        face_crop = crops_from_points(tuple(image.shape[1:3]), 1, [0], [landmarks], [points5], "agetransgan", args.size)
        t_crop, crops = best_of(args.repeats, lambda: extract_crops(image, face_crop))
        t_paste, _ = best_of(args.repeats, lambda: paste_crops(image, crops, face_crop))
        total = t_detect + t_landmarks + t_align + t_crop + t_paste
        print(f"| {name} | {t_detect:.1f} | {t_landmarks:.1f} | {t_align:.2f} | {t_crop:.1f} | {t_paste:.1f} | {total:.1f} |")


if __name__ == "__main__":
    main()
