"""Age estimation metrics: MAE overall and per age group, group accuracy, the share within one group, and how
many adults (20+) are read as children (under 10): the error real photos showed most."""
from __future__ import annotations

import numpy as np

from ..age_groups import FFHQ_AGING_10, AgeGroups

ADULT_FROM, CHILD_UNDER = 20, 10


def age_metrics(predicted: np.ndarray, truth: np.ndarray, groups: AgeGroups = FFHQ_AGING_10) -> dict:
    predicted, truth = np.asarray(predicted, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    ok = np.isfinite(predicted)
    error = np.abs(predicted[ok] - truth[ok])
    true_group, predicted_group = groups.group_of(truth[ok]), groups.group_of(predicted[ok])
    per_group = {}
    for index, name in enumerate(groups.names):
        rows = true_group == index
        per_group[name] = {"count": int(rows.sum()), "mae": float(error[rows].mean()) if rows.any() else float("nan")}
    adults = truth[ok] >= ADULT_FROM
    return {
        "count": int(ok.sum()),
        "missing": int((~ok).sum()),
        "mae": float(error.mean()) if len(error) else float("nan"),
        "group_accuracy": float((true_group == predicted_group).mean()) if len(error) else float("nan"),
        "within_one_group": float((np.abs(true_group - predicted_group) <= 1).mean()) if len(error) else float("nan"),
        "adults": int(adults.sum()),
        "adults_read_as_children": float((predicted[ok][adults] < CHILD_UNDER).mean()) if adults.any() else float("nan"),
        "per_group": per_group,
    }


def metrics_table(results: dict[str, dict], groups: AgeGroups = FFHQ_AGING_10) -> str:
    """Markdown table: one row per estimator, MAE per group then the summary columns."""
    header = "| estimator | " + " | ".join(groups.names) + f" | MAE | group acc. | within 1 group | {ADULT_FROM}+ read under {CHILD_UNDER} | faces |"
    lines = [header, "|" + "---|" * (len(groups.names) + 6)]
    any_result = next(iter(results.values()))
    lines.append("| (faces per group) | " + " | ".join(str(any_result["per_group"][n]["count"]) for n in groups.names) + f" | | | | of {any_result['adults']} | |")
    for name, m in results.items():
        cells = " | ".join(f"{m['per_group'][n]['mae']:.2f}" for n in groups.names)
        lines.append(f"| {name} | {cells} | **{m['mae']:.2f}** | {100 * m['group_accuracy']:.1f} % | {100 * m['within_one_group']:.1f} % "
                     f"| {100 * m['adults_read_as_children']:.1f} % | {m['count']} |")
    return "\n".join(lines)
