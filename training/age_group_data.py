"""Faces labelled with an age group, from the folder layouts AgeTransGAN is trained on.

    read_group_items(images, labels=None, split="train")

- FFHQ-Aging: `labels` is `ffhq_aging_labels.csv` (image_number, age_group, age_group_confidence, ...) and
  `images` the download script's folder (`{thousands:05d}/{number:05d}.png`, or all images in one folder).
  Rows below `min_confidence` are dropped; image_number < 69000 is train, the rest test (LATS's split).
- A CSV with `file` and `group` and/or `age` (the relabel CSV of `age-reenact relabel`: file, age, group,
  reason; UTKFace's labels.csv: file, age, ..., split): the group column when filled, else the age's group.
  Rows with neither (no face found) are skipped; without a split column every row is train.
- No CSV: folders named after the groups (`0-2/`, `70+/`, LATS's `train0-2/`, `test70-120/`, at any depth,
  e.g. `males/train30-39/`), or else UTKFace-style names that start with the age.
Group names follow FFHQ-Aging ("0-2" ... "50-69", and "70+" or "70-120" for the last group).
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from age_reenact.age_groups import FFHQ_AGING_10, AgeGroups
from age_reenact.labels import IMAGE_SUFFIXES, LabelledImage, read_labels

FFHQ_AGING_TEST_FROM = 69000
_GROUP_FOLDER = re.compile(r"^(train|test|val)?(\d+)(?:-(\d+)|\+)$")


@dataclass
class GroupedImage(LabelledImage):
    group: int = 0


def parse_group(name: str, groups: AgeGroups = FFHQ_AGING_10) -> int:
    """Group index of a group name: "20-29", "70+", "70-120" (FFHQ-Aging's name of the last group)."""
    match = _GROUP_FOLDER.match(name.strip())
    if match and not match.group(1) and float(match.group(2)) in groups.lower:
        index = groups.lower.index(float(match.group(2)))
        upper = match.group(3)
        last = index == groups.count - 1
        if upper is None or last or float(upper) + 1 == groups.lower[index + 1]:
            return index
    raise ValueError(f"{name!r} is not an age group of {groups.name}; expected one of {list(groups.names)}")


def _ffhq_aging(images: Path, rows: list[dict], min_confidence: float, groups: AgeGroups) -> list[GroupedImage]:
    def path(number: int) -> Path:
        nested = images / f"{number // 1000 * 1000:05d}" / f"{number:05d}.png"
        return nested if nested.parent.is_dir() else images / f"{number:05d}.png"

    items = []
    for row in rows:
        if not row.get("age_group") or float(row.get("age_group_confidence") or 1.0) < min_confidence:
            continue
        number = int(row["image_number"])
        split = "train" if number < FFHQ_AGING_TEST_FROM else "test"
        items.append(GroupedImage(path(number), None, split, parse_group(row["age_group"], groups)))
    return items


def _labelled_csv(images: Path, rows: list[dict], groups: AgeGroups) -> list[GroupedImage]:
    items = []
    for row in rows:
        age = float(row["age"]) if row.get("age") not in (None, "") else None
        if row.get("group"):
            group = parse_group(row["group"], groups)
        elif age is not None:
            group = int(groups.group_of(age))
        else:
            continue  # the relabeller found no face here
        items.append(GroupedImage(images / row["file"], age, row.get("split") or "train", group))
    return items


def _group_folders(images: Path, groups: AgeGroups) -> list[GroupedImage]:
    items = []
    for folder in sorted(p for p in images.rglob("*") if p.is_dir()):
        match = _GROUP_FOLDER.match(folder.name)
        if not match:
            continue
        group = parse_group(folder.name[len(match.group(1) or "") :], groups)
        split = match.group(1) or "train"
        items += [GroupedImage(p, None, split, group) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    return items


def read_group_items(
    images: str | Path,
    labels: str | Path | None = None,
    split: str | None = "train",
    groups: AgeGroups = FFHQ_AGING_10,
    min_confidence: float = 0.6,
) -> list[GroupedImage]:
    """Images with their age group (and age where known), of one split (None = all), in a stable order."""
    images = Path(images)
    if not images.is_dir():
        raise FileNotFoundError(f"image folder not found: {images}")
    if labels:
        with open(labels, newline="") as handle:
            reader = csv.DictReader(handle)
            rows, columns = list(reader), set(reader.fieldnames or ())
        if {"image_number", "age_group"} <= columns:
            items = _ffhq_aging(images, rows, min_confidence, groups)
        elif "file" in columns and columns & {"group", "age"}:
            items = _labelled_csv(images, rows, groups)
        else:
            raise ValueError(
                f"{labels}: columns {sorted(columns)} are neither FFHQ-Aging's (image_number, age_group) nor a "
                "labels CSV's (file, and group and/or age)."
            )
    else:
        items = _group_folders(images, groups)
        if not items:
            items = [GroupedImage(i.path, i.age, i.split, int(groups.group_of(i.age))) for i in read_labels(images)]
    items = [i for i in items if split is None or i.split == split]
    if not items:
        raise ValueError(f"no labelled faces of split {split!r} in {images}" + (f" with {labels}" if labels else ""))
    return items
