"""`age-reenact evaluate identity`: an AIFD encoder's face verification and its identity/age decomposition.

Verification, on an LFW-style folder: the threshold is the best-accuracy one on same/different pairs of
the `train` people and is then applied, unchanged, to `pairs_test.csv` (people never trained on). The
same pairs and faces are scored by dlib's public-domain network as the reference (its own threshold is
chosen the same way; its published 0.6 is reported too). Faces: the largest face of the pack's default
detector (68 points); where it finds none, its landmarks are predicted inside the median face box of
same-size images (LFW and UTKFace are pre-centred chips), for both models alike.

Decomposition (the paper's eq. 1), on a UTKFace-style folder: how well age can be read from the identity
part, the identity embedding, and the age part. Each is probed by the same small network (the shape of
the training's adversary) fitted on the `train` split and measured on the `test` split (MAE in years).
The encoder's own age head on the age part is reported beside them (an identity-only file has none), and
dlib's embedding is probed the same way as the reference (an identity network trained with no care for age).

Across ages, on an FG-NET-style folder (people photographed at many ages, split by person): same-person
pairs at least `min_gap` years apart against as many different-person pairs, test people only; the
threshold is the best-accuracy one on the same kind of pairs of the train people.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..aifd.encoder import AIFDEncoder
from ..aifd.similarity import UNIT, encoder_input, identity_embedding
from ..face.crop import crops_from_points, extract_crops
from ..face.detect import Face, FaceDetector, five_points_from_68, largest
from ..images import ImageInputError, load_image, to_uint8
from ..labels import IdentityImage, fgnet_items, lfw_items, lfw_pairs, read_labels
from .dlib_identity import SAME_PERSON_DISTANCE, dlib_embedding

Progress = Callable[[str, int, int], None]


@dataclass
class AlignedSet:
    crops: torch.Tensor  # [N, S, S, 3] uint8 ArcFace crops (zeros where the image was unreadable)
    dlib: np.ndarray | None  # [N, 128] dlib embeddings (NaN where unreadable), when asked for
    detected: np.ndarray  # [N] bool: the detector found the face (else the median-box fallback)
    usable: np.ndarray  # [N] bool: readable, with a face or a fallback


def align_faces(paths: Sequence[Path], size: int = 112, with_dlib: bool = False, progress: Progress | None = None) -> AlignedSet:
    """ArcFace crops (and dlib embeddings) of the largest face of each image, with the median-box fallback."""
    detector = FaceDetector(upsample=1, landmarks="68")
    found: list[tuple[tuple[int, int], Face | None] | None] = []
    for k, path in enumerate(paths):
        try:
            image = to_uint8(load_image(path)[0])
            faces = detector.detect(image)
            found.append((image.shape[:2], largest(faces)))
        except ImageInputError:
            found.append(None)
        if progress is not None:
            progress("detecting faces", k + 1, len(paths))
    boxes: dict[tuple[int, int], list[np.ndarray]] = {}
    for entry in found:
        if entry is not None and entry[1] is not None:
            boxes.setdefault(entry[0], []).append(entry[1].box)
    median_box = {shape: np.median(np.stack(b), axis=0) for shape, b in boxes.items()}

    crops = torch.zeros(len(paths), size, size, 3, dtype=torch.uint8)
    dlib = np.full((len(paths), 128), np.nan, dtype=np.float32) if with_dlib else None
    detected, usable = np.zeros(len(paths), bool), np.zeros(len(paths), bool)
    for k, (path, entry) in enumerate(zip(paths, found)):
        if progress is not None:
            progress("aligning faces", k + 1, len(paths))
        if entry is None or (entry[1] is None and entry[0] not in median_box):
            continue
        image = to_uint8(load_image(path)[0])
        face = entry[1]
        if face is None:
            landmarks = detector.landmarks_in(image, median_box[entry[0]])
            face = Face(median_box[entry[0]], 0.0, landmarks, five_points_from_68(landmarks))
        record = crops_from_points(entry[0], 1, [0], [face.landmarks], [face.points5], "arcface", size)
        crops[k] = (extract_crops(torch.from_numpy(image)[None].float() / 255, record)[0] * 255).round().to(torch.uint8)
        if dlib is not None:
            dlib[k] = dlib_embedding(image, face)
        detected[k], usable[k] = entry[1] is not None, True
    return AlignedSet(crops, dlib, detected, usable)


@torch.no_grad()
def encoder_outputs(encoder: AIFDEncoder, crops: torch.Tensor, chunk: int = 128, parts: bool = True) -> dict[str, torch.Tensor]:
    """Per face: the flip-averaged identity embedding and, with `parts` (a third pass of the backbone), the pooled
    identity and age parts and the age head's age (where the file has an age head)."""
    encoder.eval()
    device = next(encoder.parameters()).device
    part_names = ("identity_part", "age_part", "age_head") if encoder.has_age_head else ("identity_part", "age_part")
    out: dict[str, list[torch.Tensor]] = {"embedding": []} | ({name: [] for name in part_names} if parts else {})
    for start in range(0, len(crops), chunk):
        faces = crops[start : start + chunk].permute(0, 3, 1, 2).float().div(255).to(device)
        out["embedding"].append(identity_embedding(encoder, faces, UNIT, flip_average=True).cpu())
        if not parts:
            continue
        x_id, x_age = encoder.decompose(encoder_input(faces, UNIT, encoder.input_size))
        out["identity_part"].append(x_id.float().mean((2, 3)).cpu())
        out["age_part"].append(x_age.float().mean((2, 3)).cpu())
        if encoder.has_age_head:
            out["age_head"].append(encoder.age_estimator(x_age)[0].float().cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def train_pairs(people: Sequence[str], count: int = 1500, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` same-person and `count` different-person pairs of rows (people with 2+ images for the former)."""
    rng = np.random.default_rng(seed)
    by_person: dict[str, list[int]] = {}
    for row, person in enumerate(people):
        by_person.setdefault(person, []).append(row)
    everyone = list(by_person)
    repeated = [p for p in everyone if len(by_person[p]) >= 2]
    if not repeated or len(everyone) < 2:
        raise ValueError("threshold pairs need at least one person with two images and two different people.")
    a, b, same = [], [], []
    for _ in range(count):
        i, j = rng.choice(by_person[repeated[rng.integers(len(repeated))]], 2, replace=False)
        a.append(i), b.append(j), same.append(True)
        p, q = rng.choice(len(everyone), 2, replace=False)
        a.append(by_person[everyone[p]][rng.integers(len(by_person[everyone[p]]))])
        b.append(by_person[everyone[q]][rng.integers(len(by_person[everyone[q]]))])
        same.append(False)
    return np.array(a), np.array(b), np.array(same)


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The threshold with the best accuracy when `score > threshold` means the same person."""
    candidates = np.unique(scores)
    accuracy = [((scores > t) == same).mean() for t in candidates]
    return float(candidates[int(np.argmax(accuracy))])


def _accuracy(scores: np.ndarray, same: np.ndarray, threshold: float) -> float:
    return float(((scores > threshold) == same).mean())


def verify_on_lfw(encoder: AIFDEncoder, lfw: Path, train_pair_count: int = 1500, seed: int = 0, progress: Progress | None = None) -> dict:
    """Threshold on train-people pairs, accuracy on pairs_test.csv, for the encoder and dlib's network."""
    train = lfw_items(lfw, split="train")
    ta, tb, tsame = train_pairs([i.person for i in train], train_pair_count, seed)
    test = lfw_pairs(lfw)
    train_people = {i.person for i in train}
    leaked = sorted({p.parent.name for a, b, _ in test for p in (a, b)} & train_people)
    if leaked:
        raise ValueError(f"pairs_test.csv has people of the train split ({', '.join(leaked[:5])}...); the test pairs must be of `test` people only.")
    paths = list(dict.fromkeys([train[i].path for i in np.concatenate([ta, tb])] + [p for a, b, _ in test for p in (a, b)]))
    row = {p: k for k, p in enumerate(paths)}
    aligned = align_faces(paths, encoder.input_size, with_dlib=True, progress=progress)
    embedding = encoder_outputs(encoder, aligned.crops, parts=False)["embedding"].numpy()
    pairs = {
        "train": (np.array([row[train[i].path] for i in ta]), np.array([row[train[i].path] for i in tb]), tsame),
        "test": (np.array([row[a] for a, _, _ in test]), np.array([row[b] for _, b, _ in test]), np.array([s for *_, s in test])),
    }
    results = {"pairs_test": len(test), "train_pairs": len(tsame), "images": len(paths),
               "detector_missed": int((~aligned.detected & aligned.usable).sum()), "unusable": int((~aligned.usable).sum())}
    scores = _pair_scorers(aligned, embedding)
    for name, score in scores.items():
        threshold = best_threshold(score(*pairs["train"][:2]), pairs["train"][2])
        results[name] = {
            "threshold": threshold if name == "ours" else -threshold,
            "train_accuracy": _accuracy(score(*pairs["train"][:2]), pairs["train"][2], threshold),
            "test_accuracy": _accuracy(score(*pairs["test"][:2]), pairs["test"][2], threshold),
        }
    results["dlib"]["test_accuracy_at_0.6"] = _accuracy(scores["dlib"](*pairs["test"][:2]), pairs["test"][2], -SAME_PERSON_DISTANCE)
    # A stricter operating point for users who need few false accepts: 1 % of train different-person pairs pass.
    train_scores, test_scores = scores["ours"](*pairs["train"][:2]), scores["ours"](*pairs["test"][:2])
    strict = float(np.quantile(train_scores[~pairs["train"][2] & np.isfinite(train_scores)], 0.99))
    test_same = pairs["test"][2]
    results["ours"]["far_1pct"] = {
        "threshold": strict,
        "test_accuracy": _accuracy(test_scores, test_same, strict),
        "test_true_accept": float((test_scores[test_same] > strict).mean()),
        "test_false_accept": float((test_scores[~test_same] > strict).mean()),
    }
    return results


def _pair_scorers(aligned: AlignedSet, embedding: np.ndarray) -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """Pair scores, higher = more alike: the encoder's cosine and dlib's negated distance."""
    usable = aligned.usable

    def scored(similarity: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.where(usable[a] & usable[b], similarity, -np.inf)  # a pair with an unusable image never matches

    return {
        "ours": lambda a, b: scored((embedding[a] * embedding[b]).sum(1), a, b),
        "dlib": lambda a, b: scored(-np.linalg.norm(aligned.dlib[a] - aligned.dlib[b], axis=1), a, b),
    }


def cross_age_pairs(items: Sequence[IdentityImage], min_gap: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every same-person pair at least `min_gap` years apart, and as many random different-person pairs (rows of `items`;
    all of them where the folder has fewer, e.g. one person photographed often and few others)."""
    a, b = [], []
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            if items[i].person == items[j].person and abs(items[i].age - items[j].age) >= min_gap:
                a.append(i), b.append(j)
    if not a or len({i.person for i in items}) < 2:
        raise ValueError(f"cross-age pairs need a person photographed {min_gap:g}+ years apart and two different people.")
    counts = np.unique([i.person for i in items], return_counts=True)[1]
    possible = (len(items) ** 2 - int((counts**2).sum())) // 2  # pairs of different people there are
    rng = np.random.default_rng(seed)
    different: set[tuple[int, int]] = set()
    while len(different) < min(len(a), possible):
        i, j = sorted(rng.choice(len(items), 2, replace=False))
        if items[i].person != items[j].person:
            different.add((int(i), int(j)))
    da, db = zip(*sorted(different))
    return np.array(a + list(da)), np.array(b + list(db)), np.array([True] * len(a) + [False] * len(da))


def verify_across_ages(encoder: AIFDEncoder, fgnet: Path, min_gap: float = 10, seed: int = 0, progress: Progress | None = None,
                       examples: Path | None = None) -> dict:
    """Same person years apart vs different people, on test people, with the threshold chosen on train people;
    `examples`: a PNG of test pairs with both models' scores."""
    items = {split: fgnet_items(fgnet, split) for split in ("train", "test")}
    paths = [i.path for i in items["train"] + items["test"]]
    offset = {"train": 0, "test": len(items["train"])}
    aligned = align_faces(paths, encoder.input_size, with_dlib=True, progress=progress)
    scores = _pair_scorers(aligned, encoder_outputs(encoder, aligned.crops, parts=False)["embedding"].numpy())
    pairs = {}
    for split, rows in items.items():
        a, b, same = cross_age_pairs(rows, min_gap, seed)
        pairs[split] = (a + offset[split], b + offset[split], same)
    test_same = pairs["test"][2]
    results = {"min_gap": min_gap, "test_people": len({i.person for i in items["test"]}), "test_same_pairs": int(test_same.sum()),
               "test_different_pairs": int((~test_same).sum()), "train_pairs": len(pairs["train"][2]), "images": len(paths),
               "detector_missed": int((~aligned.detected & aligned.usable).sum()), "unusable": int((~aligned.usable).sum())}
    for name, score in scores.items():
        train_scores, test_scores = score(*pairs["train"][:2]), score(*pairs["test"][:2])
        threshold = best_threshold(train_scores, pairs["train"][2])
        different = test_scores[~test_same]
        different = different[np.isfinite(different)]
        if not len(different):
            raise ValueError(f"{fgnet}: no different-person test pair has two readable faces; nothing to measure false accepts on.")
        at_1pct = float(np.quantile(different, 0.99))  # the test ROC's point where 1 % of different pairs pass
        results[name] = {
            "threshold": threshold if name == "ours" else -threshold,
            "test_accuracy": _accuracy(test_scores, test_same, threshold),
            "true_accept_at_1pct_false_accept": float((test_scores[test_same] > at_1pct).mean()),
        }
    results["dlib"]["true_accept_at_0.6"] = float((scores["dlib"](*pairs["test"][:2])[test_same] > -SAME_PERSON_DISTANCE).mean())
    if examples is not None:
        everyone = items["train"] + items["test"]
        _save_pair_examples(aligned, everyone, pairs["test"], scores, examples)
    return results


def _save_pair_examples(aligned: AlignedSet, items: Sequence[IdentityImage], pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
                        scores: dict[str, Callable], path: Path, count: int = 4) -> None:
    """The same-person test pairs furthest apart in age (one per person) and as many different-person pairs, with both scores."""
    from .ageing_eval import save_grid

    a, b, same = pairs
    gap = np.abs(np.array([items[i].age for i in a]) - np.array([items[j].age for j in b]))
    chosen, people = [], set()
    for k in np.flatnonzero(same)[np.argsort(-gap[same], kind="stable")]:
        if items[a[k]].person not in people and len(people) < count:
            people.add(items[a[k]].person)
            chosen.append(k)
    chosen += list(np.flatnonzero(~same)[:count])
    rows = np.array(chosen)
    ours, dlib = scores["ours"](a[rows], b[rows]), -scores["dlib"](a[rows], b[rows])
    labels = [f"{'same' if same[k] else 'other'}, ages {items[a[k]].age:g}/{items[b[k]].age:g}: cos {o:.2f}, dlib {d:.2f}"
              for k, o, d in zip(rows, ours, dlib)]
    crops = torch.stack([aligned.crops[a[rows]], aligned.crops[b[rows]]], 1).float() / 255
    save_grid(crops, path, ["face A", "face B"], labels)


def fit_probe(features: torch.Tensor, ages: torch.Tensor, steps: int = 1500, seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """A small MLP (pooled features -> age), the shape of the training's adversary, fitted with L1 on all rows."""
    torch.manual_seed(seed)
    mean, std = features.mean(0), features.std(0) + 1e-6
    probe = nn.Sequential(nn.Linear(features.shape[1], 128), nn.ReLU(), nn.Linear(128, 1))
    optimizer = torch.optim.Adam(probe.parameters(), lr=3e-3, weight_decay=1e-4)
    x = (features - mean) / std
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.l1_loss(probe(x).squeeze(1), ages)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    probe.eval()
    return lambda f: probe((f - mean) / std).squeeze(1).detach()


def decomposition_probe(encoder: AIFDEncoder, utkface: Path, limit: int | None = None, progress: Progress | None = None) -> dict:
    """Test MAE of age read from the identity part, the identity embedding and the age part (probes fitted on train)."""
    splits = {}
    for split in ("train", "test"):
        items = [i for i in read_labels(utkface, Path(utkface) / "labels.csv", split=split) if i.age is not None]
        if limit and len(items) > limit:  # spread over the list: files sorted by name are sorted by age in UTKFace
            items = [items[k] for k in np.linspace(0, len(items) - 1, limit).round().astype(int)]
        aligned = align_faces([i.path for i in items], encoder.input_size, with_dlib=True, progress=progress)
        keep = np.flatnonzero(aligned.usable)
        outputs = encoder_outputs(encoder, aligned.crops[keep])
        outputs["dlib_embedding"] = torch.from_numpy(aligned.dlib[keep])
        splits[split] = (outputs, torch.tensor([items[k].age for k in keep], dtype=torch.float32))
    return probe_maes(*splits["train"], *splits["test"])


def probe_maes(train: dict[str, torch.Tensor], train_ages: torch.Tensor, test: dict[str, torch.Tensor], test_ages: torch.Tensor) -> dict:
    """From `encoder_outputs` of train and test faces: test MAE of a probe fitted on each part (and on dlib's embedding
    when given), the age head's (when the encoder has one), the mean's."""
    results = {"train_faces": len(train_ages), "test_faces": len(test_ages), "predict_mean_mae": float((test_ages - train_ages.mean()).abs().mean())}
    for part in ("identity_part", "embedding", "age_part", "dlib_embedding"):
        if part not in train:
            continue
        probe = fit_probe(train[part], train_ages)
        results[f"{part}_probe_mae"] = float((probe(test[part]) - test_ages).abs().mean())
    if "age_head" in test:
        results["age_head_mae"] = float((test["age_head"] - test_ages).abs().mean())
    return results


def identity_table(results: dict) -> str:
    lines = []
    if "verification" in results:
        v = results["verification"]
        lines += [
            f"LFW verification: {v['pairs_test']} test pairs of people never trained on; thresholds chosen on {v['train_pairs']} pairs of train people "
            f"({v['detector_missed']} of {v['images']} images without a detected face used the median-box fallback; {v['unusable']} unusable, "
            "their pairs count as different).",
            "",
            "| model | threshold | train-pairs accuracy | test accuracy |",
            "|---|---:|---:|---:|",
            f"| AIFD encoder (cosine) | {v['ours']['threshold']:.3f} | {100 * v['ours']['train_accuracy']:.1f} % | {100 * v['ours']['test_accuracy']:.1f} % |",
            f"| dlib ResNet (distance) | {v['dlib']['threshold']:.3f} | {100 * v['dlib']['train_accuracy']:.1f} % | {100 * v['dlib']['test_accuracy']:.1f} % |",
            f"| dlib ResNet at its published 0.6 | 0.600 | | {100 * v['dlib']['test_accuracy_at_0.6']:.1f} % |",
            "",
            f"AIFD encoder at 1 % false accepts on train pairs (cosine > {v['ours']['far_1pct']['threshold']:.3f}): test accuracy "
            f"{100 * v['ours']['far_1pct']['test_accuracy']:.1f} %, true accepts {100 * v['ours']['far_1pct']['test_true_accept']:.1f} %, "
            f"false accepts {100 * v['ours']['far_1pct']['test_false_accept']:.1f} %.",
            "",
        ]
    if "decomposition" in results:
        d = results["decomposition"]
        lines += [
            f"Age read from each part (UTKFace test split, {d['test_faces']} faces; probes fitted on {d['train_faces']} train faces):",
            "",
            "| read from | age MAE (years) |",
            "|---|---:|",
            f"| identity part (pooled), probe | {d['identity_part_probe_mae']:.2f} |",
            f"| identity embedding, probe | {d['embedding_probe_mae']:.2f} |",
            f"| age part (pooled), probe | {d['age_part_probe_mae']:.2f} |",
            f"| age part, the encoder's age head | {d['age_head_mae']:.2f} |" if "age_head_mae" in d else "| age part, the encoder's age head | none (identity-only file) |",
            *([f"| dlib's embedding (reference), probe | {d['dlib_embedding_probe_mae']:.2f} |"] if "dlib_embedding_probe_mae" in d else []),
            f"| nothing (the train mean age) | {d['predict_mean_mae']:.2f} |",
            "",
        ]
    if "cross_age" in results:
        c = results["cross_age"]
        lines += [
            f"Across ages (FG-NET, {c['test_people']} test people): {c['test_same_pairs']} same-person pairs at least {c['min_gap']:g} years "
            f"apart, {c['test_different_pairs']} different-person pairs; thresholds chosen on {c['train_pairs']} such pairs of train people "
            f"({c['detector_missed']} of {c['images']} images without a detected face used the fallback box, {c['unusable']} unusable).",
            "",
            "| model | threshold | test accuracy | true accepts at 1 % false accepts |",
            "|---|---:|---:|---:|",
            f"| AIFD encoder (cosine) | {c['ours']['threshold']:.3f} | {100 * c['ours']['test_accuracy']:.1f} % | "
            f"{100 * c['ours']['true_accept_at_1pct_false_accept']:.1f} % |",
            f"| dlib ResNet (distance) | {c['dlib']['threshold']:.3f} | {100 * c['dlib']['test_accuracy']:.1f} % | "
            f"{100 * c['dlib']['true_accept_at_1pct_false_accept']:.1f} % |",
            "",
            f"dlib at its published 0.6 accepts {100 * c['dlib']['true_accept_at_0.6']:.1f} % of the same-person pairs.",
        ]
    return "\n".join(lines).rstrip() + "\n"


def evaluate_identity(encoder: AIFDEncoder, lfw: Path | None, utkface: Path | None, out: Path, seed: int = 0,
                      limit: int | None = None, train_pair_count: int = 1500, progress: Progress | None = None,
                      fgnet: Path | None = None, min_gap: float = 10) -> dict:
    results: dict = {}
    if lfw is not None:
        results["verification"] = verify_on_lfw(encoder, lfw, train_pair_count, seed, progress)
    if utkface is not None:
        results["decomposition"] = decomposition_probe(encoder, utkface, limit, progress)
    if fgnet is not None:
        results["cross_age"] = verify_across_ages(encoder, fgnet, min_gap, seed, progress, out / "cross_age_examples.png")
    out.mkdir(parents=True, exist_ok=True)
    (out / "identity_metrics.json").write_text(json.dumps(results, indent=2))
    (out / "identity_table.md").write_text(identity_table(results))
    return results
