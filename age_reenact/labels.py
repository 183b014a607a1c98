"""Labelled face folders: ages from a CSV (file, age[, split]) or from UTKFace-style names (`AGE_...`),
identity-labelled LFW-style folders (`images/<Person>/<Person>_NNNN.jpg`, people.csv with splits, pairs CSVs),
and FG-NET-style folders where both are known (labels.csv: file, person, age, split; images/)."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")  # what images.read_image reads
Item = TypeVar("Item")


@dataclass
class LabelledImage:
    path: Path
    age: float | None
    split: str = "train"


def image_files(folder: str | Path) -> list[Path]:
    """Every image under a folder (subfolders included), sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


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


def labelled_sources(
    images: Sequence[str | Path], labels: Sequence[str | Path] | None, read: Callable[[str | Path, str | Path | None], list[Item]] = read_labels
) -> list[Item]:
    """The union of several image folders, each read by `read` with its labels CSV (the training launchers'
    repeated `--images`/`--labels`); with no CSVs every folder is read without one."""
    labels = labels or []
    if labels and len(labels) != len(images):
        raise ValueError(f"give one --labels per --images ({len(images)} folders, {len(labels)} label files), or none.")
    return [i for k, folder in enumerate(images) for i in read(folder, labels[k] if labels else None)]


@dataclass
class IdentityImage:
    path: Path
    person: str
    split: str
    age: float | None = None


def lfw_items(root: str | Path, split: str | None = "train") -> list[IdentityImage]:
    """Every image of the people of `split` (None = all), in a stable order."""
    root = Path(root)
    with open(root / "people.csv", newline="") as handle:
        people = [(r["person"], r["split"]) for r in csv.DictReader(handle)]
    items = []
    for person, person_split in sorted(people):
        if split is None or person_split == split:
            items += [IdentityImage(p, person, person_split) for p in sorted((root / "images" / person).glob("*.jpg"))]
    return items


def lfw_pairs(root: str | Path, name: str = "pairs_test.csv") -> list[tuple[Path, Path, bool]]:
    """Verification pairs: (image a, image b, same person); images are numbered from 1."""
    root = Path(root)

    def image(person: str, number: str) -> Path:
        return root / "images" / person / f"{person}_{int(number):04d}.jpg"

    with open(root / name, newline="") as handle:
        return [(image(r["person_a"], r["image_a"]), image(r["person_b"], r["image_b"]), r["same"] == "1") for r in csv.DictReader(handle)]


def fgnet_items(root: str | Path, split: str | None = "test") -> list[IdentityImage]:
    """FG-NET-style images with person and age (labels.csv: file, person, age, split; images/), of `split` (None = all)."""
    root = Path(root)
    with open(root / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [IdentityImage(root / "images" / r["file"], r["person"], r["split"], float(r["age"])) for r in rows if split is None or r["split"] == split]


def utkface_items(root: str | Path, split: str | None = None) -> list[LabelledImage]:
    """A UTKFace-style folder's labels.csv (file, age, ..., split), its images beside it (utkface-part1) or in
    images/ (utkface-extra); `split` keeps only rows of that split."""
    root = Path(root)
    return read_labels(root / "images" if (root / "images").is_dir() else root, root / "labels.csv", split)
