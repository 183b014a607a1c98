"""AgeTransGAN age codes: a length-G vector fed to the encoder as constant planes.

One-hot selects a group; weights split between two adjacent groups give the in-between ages the official
demo shows; a continuous target age maps to such a soft code through the group centres.
"""
from __future__ import annotations

import numpy as np
import torch

from ..age_groups import AgeGroups

SWEEP_STEPS = 10  # codes per pair of adjacent groups in the official demo


def one_hot_code(groups: AgeGroups, group: int | str) -> torch.Tensor:
    return torch.from_numpy(groups.one_hot(group))


def between_code(groups: AgeGroups, group: int | str, t: float) -> torch.Tensor:
    """Weight 1 - t on `group` and t on the next one (t in [0, 1])."""
    k = groups.index(group)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"interpolation weight must be in [0, 1], got {t}")
    if t > 0 and k + 1 >= groups.count:
        raise ValueError(f"group {groups.names[k]} is the last one; there is no next group to move towards")
    code = torch.zeros(groups.count)
    code[k] = 1.0 - t
    if t > 0:
        code[k + 1] = t
    return code


def age_code(groups: AgeGroups, age: float) -> torch.Tensor:
    """Soft code of a continuous target age (linear between the nearest group centres)."""
    return torch.from_numpy(groups.soft_code(float(age)))


def sweep_codes(groups: AgeGroups, steps: int = SWEEP_STEPS) -> torch.Tensor:
    """The official demo's sweep: for each adjacent pair, `steps` codes moving from the first to the
    second group in equal steps, then the last group: (G - 1) * steps + 1 codes, [N, G]."""
    if steps < 1:
        raise ValueError(f"sweep steps must be at least 1, got {steps}")
    codes = [between_code(groups, k, q / steps) for k in range(groups.count - 1) for q in range(steps)]
    return torch.stack(codes + [one_hot_code(groups, groups.count - 1)])


def group_codes(groups: AgeGroups) -> torch.Tensor:
    """One one-hot code per group, [G, G]."""
    return torch.eye(groups.count)


def code_label(groups: AgeGroups, code: torch.Tensor | np.ndarray) -> str:
    """Readable label of a code: the group name, or the two weighted groups ("20-29 70% / 30-39 30%")."""
    code = np.asarray(code, dtype=np.float64)
    order = np.argsort(-code)
    if code[order[0]] >= 0.999 or code[order[1]] <= 1e-3:
        return groups.names[order[0]]
    first, second = sorted(order[:2])
    return f"{groups.names[first]} {code[first]:.0%} / {groups.names[second]} {code[second]:.0%}"
