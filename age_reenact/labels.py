"""Labelled face folders: ages from a CSV (file, age[, split]) or from UTKFace-style names (`AGE_...`)."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class LabelledImage:
    path: Path
    age: float | None
    split: str = "train"


def age_from_name(name: str) -> float:
    """UTKFace names start with the age: `AGE_GENDER_RACE_DATE.jpg.chip.jpg`."""
    head = name.split("_", 1)[0]
    if not head.isdigit():
        raise ValueError(f"{name}: file name does not start with an age (UTKFace style `AGE_...`); give a labels CSV instead")
    return float(head)


def read_labels(images: str | Path, labels_csv: str | Path | None = None, split: str | None = None) -> list[LabelledImage]:
    """Images of a folder with their ages; `split` keeps only rows of that split (CSV `split` column)."""
    images = Path(images)
    if labels_csv:
        with open(labels_csv, newline="") as handle:
            rows = [
                LabelledImage(images / r["file"], float(r["age"]) if r.get("age") not in (None, "") else None, r.get("split") or "train")
                for r in csv.DictReader(handle)
            ]
    else:
        rows = [LabelledImage(p, age_from_name(p.name)) for p in sorted(images.iterdir()) if p.name.lower().endswith(IMAGE_SUFFIXES)]
    return [r for r in rows if split is None or r.split == split]
