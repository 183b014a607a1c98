"""The paper's relabelling step: estimate the age of every face in a folder and write a CSV.

Rows are appended as images are done (file, age, group, reason), so an interrupted run resumes where
it stopped and loses nothing; images without a face, and files that cannot be read, get an empty age and
the reason. The model and settings the rows come from are kept beside the CSV (`ages.csv.json`), so the
CSV itself stays a plain table for every reader (`read_labels`, the training data readers). A rerun:
- with the same model and alignment resumes; if the detection settings changed, rows without a face are
  tried again with the new ones;
- with another model or landmark scheme is refused unless forced, because the CSV would mix two models.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Callable

import torch

from .. import age_groups
from ..face.detect import FaceDetector
from ..images import ImageInputError, read_image
from ..labels import image_files
from .predict import AgeEstimator

FIELDS = ["file", "age", "group", "reason"]
NO_FACE = "no face found"


class SettingsMismatch(ValueError):
    """The CSV holds rows from another model or alignment; the message says what differs and what to do."""


def settings_path(out_csv: str | Path) -> Path:
    """Where the model and settings of a relabel CSV are kept."""
    out_csv = Path(out_csv)
    return out_csv.with_name(out_csv.name + ".json")


def run_settings(estimator: AgeEstimator, detector: FaceDetector) -> dict:
    """What a row depends on: the model (by its weights, whatever the file is called), the alignment, and
    the detection settings (every plain public setting of the detector, whichever detector it is)."""
    digest = hashlib.sha256(json.dumps(estimator.preprocessing, sort_keys=True).encode())
    for name, tensor in sorted(estimator.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    detection = {k: v for k, v in sorted(vars(detector).items()) if not k.startswith("_") and isinstance(v, (bool, int, float, str))}
    return {
        "model": {"name": estimator.name, "sha256": digest.hexdigest()},
        "alignment": {"landmarks": detection.pop("landmarks", None), "convention": estimator.convention},
        "detection": detection,
    }


def _read_rows(out_csv: Path) -> list[dict]:
    """The rows written so far; a last line cut off mid-write (a killed run) is dropped and redone."""
    if not out_csv.is_file():
        return []
    data = out_csv.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(out_csv, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
    with open(out_csv, newline="") as handle:
        return list(csv.DictReader(handle))


def _write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and a rename, so an interrupted write never leaves half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, newline="")
    os.replace(temporary, path)


def _describe(record: dict | None) -> str:
    if record is None:
        return "not recorded"
    return ", ".join(f"{value[:12]}..." if key == "sha256" else str(value) for key, value in record.items())


def _check_settings(out_csv: Path, rows: list[dict], settings: dict, force: bool) -> bool:
    """Refuse a run that would mix models or alignments in one CSV (unless forced); True when the
    detection settings changed, so rows without a face are worth trying again."""
    if not rows:
        return False
    path = settings_path(out_csv)
    recorded = json.loads(path.read_text()) if path.is_file() else None
    if recorded is None:
        differs = f"{path.name}, the record of their model and settings, is missing"
    else:
        # The model is known by its weights: the same file renamed or moved is the same model.
        same = {"model": recorded["model"].get("sha256") == settings["model"]["sha256"], "alignment": recorded.get("alignment") == settings["alignment"]}
        differs = "; ".join(f"{key}: {_describe(recorded.get(key))} there, {_describe(settings[key])} now" for key, ok in same.items() if not ok)
    if differs and not force:
        raise SettingsMismatch(
            f"{out_csv}: its {len(rows)} row(s) may come from another model or alignment ({differs}); this run's rows "
            "would be mixed with them. Write to a new --out, or pass --force to add them anyway."
        )
    return recorded is None or recorded.get("detection") != settings["detection"]


def relabel_folder(
    estimator: AgeEstimator,
    images: str | Path,
    out_csv: str | Path,
    detector: FaceDetector | None = None,
    progress: Callable[[int, int], None] | None = None,
    force: bool = False,
) -> int:
    """Append a row per image not yet in `out_csv`; returns how many were added (retried rows included).

    Raises SettingsMismatch when `out_csv` holds rows of another model or alignment and `force` is False.
    """
    images, out_csv = Path(images), Path(out_csv)
    detector = detector or FaceDetector(upsample=1)
    settings = run_settings(estimator, detector)
    rows = _read_rows(out_csv)
    if _check_settings(out_csv, rows, settings, force):
        kept = [r for r in rows if r.get("reason") != NO_FACE]
        if len(kept) < len(rows):
            # The CSV loses its no-face rows before the new settings are recorded: a run stopped in between
            # still retries them, and one stopped later finds them missing and does them as new files.
            _write_atomic(out_csv, _csv_text(kept))
            rows = kept
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(settings_path(out_csv), json.dumps(settings, indent=1) + "\n")
    done = {row["file"] for row in rows}
    todo = [p for p in image_files(images) if p.relative_to(images).as_posix() not in done]
    with open(out_csv, "a", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS)
        if not rows:
            handle.truncate(0)
            writer.writeheader()
        for count, path in enumerate(todo, 1):
            writer.writerow(_row(estimator, detector, path, path.relative_to(images).as_posix()))
            handle.flush()
            if progress is not None:
                progress(count, len(todo))
    return len(todo)


def _csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _row(estimator: AgeEstimator, detector: FaceDetector, path: Path, name: str) -> dict:
    """One image's row: its age and group, or the reason it has none (no face, or why the file is unusable)."""
    try:
        frame = torch.from_numpy(read_image(path))[None]  # uint8: a large photo is only ever cropped, never copied whole
    except ImageInputError as exc:
        return {"file": name, "age": "", "group": "", "reason": exc.reason}
    age = float(estimator.estimate(frame, detector, choice="largest")[0][0])
    if age != age:  # NaN: no face
        return {"file": name, "age": "", "group": "", "reason": NO_FACE}
    groups = age_groups.FFHQ_AGING_10
    return {"file": name, "age": f"{age:.2f}", "group": groups.names[groups.group_of(age)], "reason": ""}
