"""Age group sets: names, bounds, centres, age -> group, and age -> soft code between adjacent groups.

Shared by every model family that speaks in age groups (AgeTransGAN's age codes, the age estimator's
per-group metrics). Group k covers ages [lower[k], lower[k+1]) in years; the last group is open-ended.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AgeGroups:
    name: str
    lower: tuple[float, ...]  # first age of each group, increasing
    last_centre: float  # the open-ended last group has no midpoint, so its representative age is given

    @property
    def count(self) -> int:
        return len(self.lower)

    @property
    def names(self) -> tuple[str, ...]:
        def fmt(x: float) -> str:
            return f"{x:g}"

        spans = [f"{fmt(lo)}-{fmt(hi - 1)}" for lo, hi in zip(self.lower, self.lower[1:])]
        return (*spans, f"{fmt(self.lower[-1])}+")

    @property
    def bounds(self) -> tuple[tuple[float, float], ...]:
        """(first age, first age of the next group) per group; the last upper bound is infinite."""
        return tuple(zip(self.lower, (*self.lower[1:], float("inf"))))

    @property
    def centres(self) -> tuple[float, ...]:
        return (*((lo + hi) / 2 for lo, hi in zip(self.lower, self.lower[1:])), self.last_centre)

    def index(self, group: int | str) -> int:
        """A group given by index or by name ("20-29")."""
        if isinstance(group, str):
            if group not in self.names:
                raise ValueError(f"unknown age group {group!r} for {self.name}; choose one of {list(self.names)}")
            return self.names.index(group)
        if not 0 <= int(group) < self.count:
            raise ValueError(f"age group index {group} out of range 0..{self.count - 1} for {self.name}")
        return int(group)

    def group_of(self, age: float | np.ndarray) -> int | np.ndarray:
        """Group index of an age (or array of ages); ages below the first bound fall in group 0."""
        index = np.clip(np.searchsorted(np.asarray(self.lower), np.asarray(age, dtype=np.float64), side="right") - 1, 0, None)
        return int(index) if np.ndim(index) == 0 else index

    def one_hot(self, group: int | str) -> np.ndarray:
        code = np.zeros(self.count, dtype=np.float32)
        code[self.index(group)] = 1.0
        return code

    def soft_code(self, age: float) -> np.ndarray:
        """Code of a continuous age: linear between the two nearest group centres (one-hot at a centre,
        clamped to the first and last group outside the centres' range)."""
        centres = np.asarray(self.centres)
        code = np.zeros(self.count, dtype=np.float32)
        if age <= centres[0] or age >= centres[-1]:
            code[0 if age <= centres[0] else -1] = 1.0
            return code
        k = int(np.searchsorted(centres, age, side="right") - 1)
        t = (age - centres[k]) / (centres[k + 1] - centres[k])
        code[k], code[k + 1] = 1.0 - t, t
        return code


FFHQ_AGING_10 = AgeGroups("ffhq_aging_10", (0, 3, 7, 10, 15, 20, 30, 40, 50, 70), last_centre=80.0)
FFHQ_AGING_4 = AgeGroups("ffhq_aging_4", (15, 30, 40, 50), last_centre=60.0)
GROUP_SETS = {g.name: g for g in (FFHQ_AGING_10, FFHQ_AGING_4)}


def groups_for(count: int) -> AgeGroups:
    """The standard group set with `count` groups (10 or 4)."""
    for groups in GROUP_SETS.values():
        if groups.count == count:
            return groups
    raise ValueError(f"no standard age group set with {count} groups; known: {[g.count for g in GROUP_SETS.values()]}")
