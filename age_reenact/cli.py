"""Command line: `age-reenact <command>`; `age-reenact --help` lists the commands."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .face.crop import detect_crops, extract_crops
from .face.detect import FaceDetector
from .face.draw import draw_landmarks
from .face.paste import paste_crops
from .face.templates import CONVENTIONS
from .images import load_image, save_image
from .weights import convert_checkpoint, converters


def _faces(args: argparse.Namespace) -> None:
    image = load_image(args.image)
    detector = FaceDetector(upsample=args.upsample, landmarks=args.landmarks)
    face_crop = detect_crops(image, detector, args.convention, args.size, args.choice)
    crops = extract_crops(image, face_crop)
    pasted, _ = paste_crops(image, crops, face_crop)
    out = Path(args.out)
    for i, crop in enumerate(crops):
        save_image(crop, out / f"crop_{i}.png")
    save_image(draw_landmarks(image, face_crop), out / "landmarks.png")
    save_image(pasted, out / "pasted.png")
    print(f"{len(crops)} face(s); wrote {out}/crop_*.png, landmarks.png, pasted.png")


def _convert(args: argparse.Namespace) -> None:
    path = convert_checkpoint(args.converter, args.source, args.destination)
    print(f"wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="age-reenact", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    faces = commands.add_parser("faces", help="detect, crop and paste back the faces of one image")
    faces.add_argument("image")
    faces.add_argument("--out", default="outputs/faces")
    faces.add_argument("--convention", choices=sorted(CONVENTIONS), default="agetransgan")
    faces.add_argument("--size", type=int, default=256)
    faces.add_argument("--choice", choices=["largest", "all"], default="largest")
    faces.add_argument("--upsample", type=int, default=1)
    faces.add_argument("--landmarks", choices=["68", "5"], default="68")
    faces.set_defaults(run=_faces)

    convert = commands.add_parser("convert", help="convert an official checkpoint to safetensors with metadata")
    convert.add_argument("converter", help="one of: " + (", ".join(sorted(converters())) or "(none registered yet)"))
    convert.add_argument("source")
    convert.add_argument("destination")
    convert.set_defaults(run=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"age-reenact: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
