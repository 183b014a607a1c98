"""Identity-labelled faces: LFW-style folders (`images/<Person>/<Person>_NNNN.jpg`, people.csv with splits)."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


@dataclass
class IdentityImage:
    path: Path
    person: str
    split: str


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
