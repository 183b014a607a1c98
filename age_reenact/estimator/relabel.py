"""The paper's relabelling step: estimate the age of every face in a folder and write a CSV.

Rows are appended as images are done (file, age, group, reason), so an interrupted run resumes where
it stopped and loses nothing; images without a face get an empty age and the reason.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

from .. import age_groups
from ..face.detect import FaceDetector
from ..images import ImageInputError, load_image
from ..labels import image_files
from .predict import AgeEstimator

FIELDS = ["file", "age", "group", "reason"]


def relabel_folder(
    estimator: AgeEstimator,
    images: str | Path,
    out_csv: str | Path,
    detector: FaceDetector | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Append a row per image not yet in `out_csv`; returns how many were added."""
    images, out_csv = Path(images), Path(out_csv)
    files = image_files(images)
    done = set()
    if out_csv.is_file():
        with open(out_csv, newline="") as handle:
            done = {row["file"] for row in csv.DictReader(handle)}
    todo = [p for p in files if p.relative_to(images).as_posix() not in done]
    detector = detector or FaceDetector(upsample=1)
    groups = age_groups.FFHQ_AGING_10
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    new_file = not out_csv.is_file() or out_csv.stat().st_size == 0
    with open(out_csv, "a", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS)
        if new_file:
            writer.writeheader()
        for count, path in enumerate(todo, 1):
            name = path.relative_to(images).as_posix()
            try:
                ages, _ = estimator.estimate(load_image(path), detector, choice="largest")
                age = float(ages[0])
                row = {"file": name, "age": "" if age != age else f"{age:.2f}", "group": "" if age != age else groups.names[groups.group_of(age)], "reason": "" if age == age else "no face found"}
            except ImageInputError as exc:
                row = {"file": name, "age": "", "group": "", "reason": str(exc)}
            writer.writerow(row)
            handle.flush()
            if progress is not None:
                progress(count, len(todo))
    return len(todo)
