"""`age-reenact evaluate reenactment`: does a reenactor keep the source's identity and follow the pose?

Pairs of different people, drawn with a fixed seed: LFW `test` people (source and driver are photos of
two different people), the UTKFace `test` split (no identities: every file counts as its own person), or
any folder of face photos (a subfolder per person, or every file its own person; with subfolders, photos
loose in the folder itself count as one more person).
The reenactor runs in the absolute mode (shape generator) on the source photo and the driver photo and
gives its S x S face crop; then
- identity: dlib's embedding distance between the source photo's face and the output's face (the same
  person below 0.6, dlib's threshold); the source-driver distance is given for reference;
- pose: NME of the 68 landmarks detected on the output vs the target landmarks its sketch was drawn
  from, in units of the target's inter-ocular distance (eye centres, as `Face.inter_ocular`);
- agreement with the driver: the output's distance to the driver (a kept identity is closer to the source),
  and the correlation over pairs of head turn and mouth opening read off the driver's and the output's
  landmarks (`head_turn`, `mouth_opening`).
An output without a detectable face fails both. Faces are detected with dlib HOG (68 points); outputs
smaller than 256 px are upscaled for detection, and their landmarks scaled back.
"""
from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..face.crop import choose_faces
from ..face.detect import Face, FaceDetector
from ..images import load_image, save_image, to_uint8
from ..labels import image_files, lfw_items, read_labels
from .dlib_identity import SAME_PERSON_DISTANCE, dlib_embedding, identity_distance

if TYPE_CHECKING:
    from ..reenact.pipeline import Reenactor

NME_BAR = 0.08
IDENTITY_BAR = 0.8  # share of pairs whose output keeps the source's identity
DETECTION_SIZE = 256


@dataclass
class PairResult:
    dataset: str
    source: str
    driver: str
    output_face: bool
    identity_distance: float  # source vs output; NaN when the output has no detectable face
    source_driver_distance: float
    nme: float  # NaN when the output has no detectable face
    driver_distance: float = float("nan")  # driver vs output
    driver_turn: float = float("nan")  # head_turn of the driver's face
    output_turn: float = float("nan")
    driver_mouth: float = float("nan")  # mouth_opening of the driver's face
    output_mouth: float = float("nan")

    @property
    def identity_kept(self) -> bool:
        return bool(self.output_face and self.identity_distance < SAME_PERSON_DISTANCE)

    @property
    def pose_followed(self) -> bool:
        return bool(self.output_face and self.nme <= NME_BAR)


def inter_ocular(landmarks: np.ndarray) -> float:
    """Distance of the eye centres (means of points 36-41 and 42-47) of iBUG-68 landmarks."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    return float(np.linalg.norm(landmarks[42:48].mean(0) - landmarks[36:42].mean(0)))


def head_turn(landmarks: np.ndarray) -> float:
    """Yaw proxy of iBUG-68 landmarks: the nose tip's (30) offset from the middle of the jaw's ends (0, 16), as a
    share of their distance; 0 for a frontal face, the sign gives the side."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    left, right = landmarks[0], landmarks[16]
    axis = right - left
    return float(np.dot(landmarks[30] - (left + right) / 2, axis) / max(np.dot(axis, axis), 1e-9))


INNER_LIPS = ([61, 62, 63], [67, 66, 65])  # iBUG-68: upper and lower inner-lip points facing each other


def mouth_opening(landmarks: np.ndarray) -> float:
    """Mean gap between the inner lips (61-67, 62-66, 63-65) over the inter-ocular distance."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    upper, lower = INNER_LIPS
    gap = np.linalg.norm(landmarks[upper] - landmarks[lower], axis=-1).mean()
    return float(gap / max(inter_ocular(landmarks), 1e-9))


def landmark_nme(predicted: np.ndarray, target: np.ndarray) -> float:
    """Mean point-to-point distance of two (68, 2) landmark sets over the target's inter-ocular distance."""
    predicted, target = np.asarray(predicted, dtype=np.float64), np.asarray(target, dtype=np.float64)
    return float(np.linalg.norm(predicted - target, axis=-1).mean() / max(inter_ocular(target), 1e-9))


def different_person_pairs(people: Sequence[str], seed: int) -> Iterator[tuple[int, int]]:
    """Endless (source, driver) index pairs of different people, each pair once, in a seeded order."""
    rng = np.random.default_rng(seed)
    possible = len(people) ** 2 - sum(c * c for c in Counter(people).values())
    seen: set[tuple[int, int]] = set()
    while len(seen) < possible:
        i, j = (int(v) for v in rng.integers(len(people), size=2))
        if people[i] != people[j] and (i, j) not in seen:
            seen.add((i, j))
            yield i, j


def evaluation_sets(lfw: Path | None, utkface: Path | None, folder: Path | None = None) -> dict[str, tuple[list[Path], list[str]]]:
    """{dataset: (image paths, person of each)} for the LFW test people, the UTKFace test split, and any
    folder of face photos (a subfolder per person, or else every file its own person)."""
    sets = {}
    if folder is not None:
        paths = image_files(folder)
        if not paths:
            raise FileNotFoundError(f"no images (.jpg, .png, ...) in {folder}; give a folder of face photos.")
        nested = any(p.parent != Path(folder) for p in paths)
        people = [p.parent.name if nested else p.name for p in paths]
        if len(set(people)) < 2:
            raise ValueError(f"{folder} holds photos of one person only; reenactment pairs need two or more people.")
        sets[f"folder {Path(folder).resolve().name}"] = (paths, people)
    if lfw is not None:
        photos = lfw_items(lfw, split="test")
        sets["lfw_test"] = ([i.path for i in photos], [i.person for i in photos])
    if utkface is not None:
        rows = read_labels(utkface, Path(utkface) / "labels.csv", split="test")
        sets["utkface_test"] = ([r.path for r in rows], [r.path.name for r in rows])
    return sets


class _Faces:
    """Each photo's uint8 frame and largest face; the face is detected once, the frame re-read each time
    (caching frames of a folder of large photos would hold gigabytes)."""

    def __init__(self, detector: FaceDetector):
        self.detector = detector
        self.cache: dict[Path, Face | None] = {}

    def __call__(self, path: Path) -> tuple[np.ndarray, Face | None]:
        frame = to_uint8(load_image(path)[0])
        if path not in self.cache:
            faces = choose_faces(self.detector.detect(frame), "largest", 0, 0)
            self.cache[path] = faces[0] if faces else None
        return frame, self.cache[path]


@dataclass
class OutputFace:
    """What `measure_output` reads off an output crop; distances and NME are NaN when no face is found."""

    found: bool
    identity_distance: float  # to the source embedding
    nme: float
    landmarks: np.ndarray | None = None  # crop px
    embedding: np.ndarray | None = None


def measure_output(output: torch.Tensor, target: np.ndarray, source_embedding: np.ndarray, detector: FaceDetector) -> OutputFace:
    """One output crop IMAGE [S, S, 3] and its target landmarks (crop px) -> its face, identity distance to
    the source embedding and landmark NME."""
    size = output.shape[0]
    scale = max(1.0, DETECTION_SIZE / size)
    image = output.permute(2, 0, 1)[None]
    if scale > 1:
        image = F.interpolate(image, scale_factor=scale, mode="bicubic", align_corners=False)
    frame = to_uint8(image[0].permute(1, 2, 0))
    faces = choose_faces(detector.detect(frame), "largest", 0, 0)
    if not faces:
        return OutputFace(False, float("nan"), float("nan"))
    embedding = dlib_embedding(frame, faces[0])
    landmarks = faces[0].landmarks / scale
    return OutputFace(True, identity_distance(source_embedding, embedding), landmark_nme(landmarks, target), landmarks, embedding)


def load_for_evaluation(path: str | Path, identity_path: str | Path | None = None, device: str = "cpu", precision: str = "fp32") -> "Reenactor":
    """A reenactor file with its identity code, which the absolute mode needs: its own ("style"), a VGG-Face
    file, or an AIFD encoder file."""
    from ..reenact.pipeline import IDENTITY_FILES, load_reenactor
    from ..weights import WeightsError, read_weights

    source = read_weights(path, "dual_generator_reenactor").config.get("identity_source", "vggface")
    if source in IDENTITY_FILES and identity_path is None:
        what = {"vggface": "the vggface_fc7 file", "aifd": "the AIFD encoder file"}[source]
        raise WeightsError(f"{Path(path).name} takes the {source} identity code: give {what} with --identity-model.")
    return load_reenactor(path, identity_path, device, precision)


def evaluate_reenactor(
    reenactor,
    lfw: Path | None,
    utkface: Path | None,
    pairs: int = 100,
    seed: int = 0,
    out_dir: Path | None = None,
    examples: int = 8,
    progress: Callable[[int, int], None] | None = None,
    folder: Path | None = None,
) -> tuple[list[PairResult], dict[str, dict]]:
    """`pairs` pairs per dataset (pairs whose source or driver photo has no detectable face are skipped
    and replaced by the next ones). Returns every pair's result and the summary per dataset and overall."""
    from ..reenact.pipeline import reenact

    detector = FaceDetector(upsample=1, landmarks="68")
    faces = _Faces(detector)
    results: list[PairResult] = []
    strips: list[torch.Tensor] = []
    sets = evaluation_sets(lfw, utkface, folder)
    total = pairs * len(sets)
    for name, (paths, people) in sets.items():
        done = 0
        for i, j in different_person_pairs(people, seed):
            if done == pairs:
                break
            (source_frame, source_face), (driver_frame, driver_face) = faces(paths[i]), faces(paths[j])
            if source_face is None or driver_face is None:
                continue
            out = reenact(
                reenactor, torch.from_numpy(source_frame)[None].float() / 255, torch.from_numpy(driver_frame)[None].float() / 255,
                mode="absolute", output="crops", source_landmarks=source_face.landmarks, driving_landmarks=driver_face.landmarks[None],
            )
            target = out.landmarks[0] * reenactor.size
            source_embedding = dlib_embedding(source_frame, source_face)
            face = measure_output(out.images[0], target, source_embedding, detector)
            driver_embedding = dlib_embedding(driver_frame, driver_face)
            result = PairResult(name, paths[i].name, paths[j].name, face.found, face.identity_distance,
                                identity_distance(source_embedding, driver_embedding), face.nme,
                                driver_turn=head_turn(driver_face.landmarks), driver_mouth=mouth_opening(driver_face.landmarks))
            if face.found:
                result.driver_distance = identity_distance(driver_embedding, face.embedding)
                result.output_turn, result.output_mouth = head_turn(face.landmarks), mouth_opening(face.landmarks)
            results.append(result)
            if len(strips) < examples:
                strips.append(_example_strip(source_frame, driver_frame, out.sketches[0], out.images[0]))
            done += 1
            if progress is not None:
                progress(len(results), total)
    summary = summarize(results)
    if out_dir is not None:
        write_report(results, summary, Path(out_dir), strips)
    return results, summary


def _example_strip(source: np.ndarray, driver: np.ndarray, sketch: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """[S, 4S, 3]: source photo, driver photo (resized to S), sketch, output."""
    size = output.shape[0]

    def resized(frame: np.ndarray) -> torch.Tensor:
        image = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255
        return F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0].permute(1, 2, 0)

    return torch.cat([resized(source), resized(driver), sketch, output], dim=1).clamp(0, 1)


def _correlation(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson r; NaN for fewer than 3 pairs or a constant side."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def summarize(results: list[PairResult]) -> dict[str, dict]:
    """Per dataset and "all": pairs, output faces found, identity kept, mean distances, the share of outputs
    closer to the source than to the driver, pose followed, mean NME, head-turn and mouth-opening correlation
    with the driver."""
    groups = {name: [r for r in results if r.dataset == name] for name in dict.fromkeys(r.dataset for r in results)}
    groups["all"] = results
    summary = {}
    for name, rows in groups.items():
        if not rows:
            continue
        found = [r for r in rows if r.output_face]
        summary[name] = {
            "pairs": len(rows),
            "output_face_found": len(found) / len(rows),
            "identity_kept": sum(r.identity_kept for r in rows) / len(rows),
            "mean_identity_distance": float(np.mean([r.identity_distance for r in found])) if found else float("nan"),
            "mean_source_driver_distance": float(np.mean([r.source_driver_distance for r in rows])),
            "mean_output_driver_distance": float(np.mean([r.driver_distance for r in found])) if found else float("nan"),
            "closer_to_source": sum(r.identity_distance < r.driver_distance for r in found) / len(rows),
            "head_turn_r": _correlation([r.driver_turn for r in found], [r.output_turn for r in found]),
            "mouth_opening_r": _correlation([r.driver_mouth for r in found], [r.output_mouth for r in found]),
            "pose_followed": sum(r.pose_followed for r in rows) / len(rows),
            "mean_nme": float(np.mean([r.nme for r in found])) if found else float("nan"),
            "both": sum(r.identity_kept and r.pose_followed for r in rows) / len(rows),
        }
    return summary


def summary_table(summary: dict[str, dict]) -> str:
    lines = [
        "| set | pairs | output face found | identity kept (dlib < 0.6) | mean distance source-output | mean distance source-driver | pose followed (NME <= 0.08) | mean NME | both |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in summary.items():
        lines.append(
            f"| {name} | {m['pairs']} | {m['output_face_found']:.1%} | {m['identity_kept']:.1%} | {m['mean_identity_distance']:.3f} | "
            f"{m['mean_source_driver_distance']:.3f} | {m['pose_followed']:.1%} | {m['mean_nme']:.4f} | {m['both']:.1%} |"
        )
    if "all" in summary:
        m = summary["all"]
        closer = m["mean_identity_distance"] < m["mean_output_driver_distance"]
        lines += [
            "",
            f"- identity kept for at least {IDENTITY_BAR:.0%} of pairs: {'PASS' if m['identity_kept'] >= IDENTITY_BAR else 'FAIL'} ({m['identity_kept']:.1%})",
            f"- on average closer to the source than to the driver: {'PASS' if closer else 'FAIL'} (distance {m['mean_identity_distance']:.3f} "
            f"to the source, {m['mean_output_driver_distance']:.3f} to the driver; {m['closer_to_source']:.1%} of pairs closer to the source)",
            f"- agreement with the driver, correlation over pairs: head turn r = {m['head_turn_r']:.2f}, mouth opening r = {m['mouth_opening_r']:.2f}",
            f"- mean NME at most {NME_BAR}: {'PASS' if m['mean_nme'] <= NME_BAR else 'FAIL'} ({m['mean_nme']:.4f}; {m['pose_followed']:.1%} of pairs within it)",
        ]
    return "\n".join(lines)


def write_report(results: list[PairResult], summary: dict[str, dict], out_dir: Path, strips: list[torch.Tensor] = ()) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "reenact_pairs.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*PairResult.__dataclass_fields__, "identity_kept", "pose_followed"])
        for r in results:
            writer.writerow([*asdict(r).values(), r.identity_kept, r.pose_followed])
    (out_dir / "reenact_metrics.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "reenact_table.md").write_text(summary_table(summary) + "\n")
    if strips:
        save_image(torch.cat(list(strips), dim=0), out_dir / "reenact_examples.png")
