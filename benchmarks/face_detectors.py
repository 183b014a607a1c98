"""Face detectors compared: recall, false positives, ms per 512 px frame, and dlib's 68 points from each box.

Usage (from the repository root; each data folder is optional):
    python benchmarks/face_detectors.py --fgnet ../shared/data/fgnet --lfw ../shared/data/lfw \\
        --utkface ../shared/data/utkface-part1 ../shared/data/utkface-extra --samples tests/fixtures \\
        --out outputs/face_detectors
Detectors: hog (dlib, upsample 1: the old default), mtcnn (the pack's, upsample 1 = faces from 20 px,
with its padded retry on frames without a face),
yuface (BSD, only if `yuface` is importable) and mmod (dlib's CNN, upsample 0; FG-NET test people only:
~1-3 s a frame). Every detection, down to a low score, is kept in <out>/detections.jsonl, so a rerun
only detects what is missing and floors and criteria can be changed without detecting again.

Truth: FG-NET's 68 hand points give the face box (their bounding box); a detection finds it when their
IoU is at least 0.4. LFW and UTKFace are centred face crops: a detection finds the face when it holds
the image centre and its side is 20-150 % of the image's (a face may fill the crop, and boxes reach past it). Face-free frames (made here, see
`face_free_frames`) count false positives. The box map MTCNN -> HOG-style box is fitted on FG-NET train
people; landmark error is measured on FG-NET test people through the 7 points both markups share.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the repository root first
from age_reenact.devices import describe_device  # noqa: E402
from age_reenact.face import detect  # noqa: E402
from age_reenact.images import load_image, to_uint8  # noqa: E402

# FG-NET markup -> iBUG 68 for the points both place: eye outer/inner corners, nose tip, mouth corners.
FGNET_TO_IBUG = {27: 36, 29: 39, 34: 42, 32: 45, 67: 30, 48: 48, 54: 54}
FLOORS = {"hog": 0.0, "mtcnn": detect.MIN_SCORE["mtcnn"], "yuface": 0.5, "mmod": 0.0}
LOWEST = {"hog": -0.5, "mtcnn": 0.7, "yuface": 0.3, "mmod": -0.5}  # what is recorded, for floor sweeps
MIN_IOU = 0.4


def _dlib_boxes(rects, scores) -> tuple[list, list]:
    return [[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], [float(s) for s in scores]


def detectors(names: list[str]) -> dict[str, Callable[[np.ndarray], dict]]:
    """Each detector as frame -> {"boxes": [[x0, y0, x1, y1]], "scores": [...]}, recording down to LOWEST."""
    made: dict[str, Callable[[np.ndarray], dict]] = {}
    for name in names:
        if name == "hog":
            hog = detect._hog_detector()

            def run_hog(frame, hog=hog):
                rects, scores, _ = hog.run(frame, 1, LOWEST["hog"])
                boxes, scores = _dlib_boxes(rects, scores)
                return {"boxes": boxes, "scores": scores}

            made[name] = run_hog
        elif name == "mtcnn":
            mtcnn = detect.load_mtcnn()

            def run_mtcnn(frame, mtcnn=mtcnn):
                boxes, scores = detect.mtcnn_boxes(mtcnn, frame, detect.MTCNN_MIN_FACE[1], FLOORS["mtcnn"])
                return {"boxes": boxes.round(2).tolist(), "scores": scores.round(5).tolist()}

            made[name] = run_mtcnn
        elif name == "yuface":
            try:
                import yuface
            except ImportError:
                print("yuface is not importable: skipped (pip install yuface into a scratch environment)")
                continue

            def run_yuface(frame, yuface=yuface):
                confs, boxes, _ = yuface.detect(np.ascontiguousarray(frame[..., ::-1]), conf=LOWEST["yuface"])  # BGR in
                boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
                return {"boxes": np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1).tolist(), "scores": (np.asarray(confs, dtype=np.float64).ravel() / 100).tolist()}

            made[name] = run_yuface
        elif name == "mmod":
            cnn = detect._cnn_detector()

            def run_mmod(frame, cnn=cnn):
                found = [d for d in cnn(frame, 0) if d.confidence >= LOWEST["mmod"]]
                return dict(zip(("boxes", "scores"), _dlib_boxes([d.rect for d in found], [d.confidence for d in found])))

            made[name] = run_mmod
        else:
            raise SystemExit(f"unknown detector {name!r}")
    return made


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def read_pts(path: Path) -> np.ndarray:
    lines = path.read_text().split("{")[1].split("}")[0].split()
    return np.asarray(lines, dtype=np.float64).reshape(-1, 2)


def face_free_frames(samples: Path | None, seed: int = 0) -> Iterator[tuple[str, np.ndarray]]:
    """512 px frames without a face: noise, smooth noise, gratings, checkerboards, gradients, ellipses,
    and crops of the sample photos away from their faces (the astronaut's flag and mission patch too)."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:512, 0:512] / 512.0
    for k in range(8):
        yield f"noise_{k}", rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
        coarse = torch.from_numpy(rng.uniform(0, 255, (1, 3, 4 * (k + 2), 4 * (k + 2))))
        yield f"smooth_noise_{k}", F.interpolate(coarse, size=(512, 512), mode="bicubic")[0].permute(1, 2, 0).clamp(0, 255).byte().numpy()
        angle, freq = rng.uniform(0, np.pi), rng.uniform(4, 40)
        grating = 127.5 + 127.5 * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)))
        yield f"grating_{k}", np.repeat(grating[..., None], 3, 2).astype(np.uint8)
        cells = int(rng.integers(3, 24))
        board = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2) * 255
        yield f"checker_{k}", np.repeat(board[..., None], 3, 2).astype(np.uint8)
        start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        yield f"gradient_{k}", (start + (end - start) * xx[..., None]).astype(np.uint8)
        canvas = np.full((512, 512, 3), rng.uniform(0, 255, 3), dtype=np.float64)
        for _ in range(12):
            cx, cy, rx, ry = rng.uniform(0, 512, 2).tolist() + rng.uniform(10, 120, 2).tolist()
            canvas[((xx * 512 - cx) / rx) ** 2 + ((yy * 512 - cy) / ry) ** 2 < 1] = rng.uniform(0, 255, 3)
        yield f"ellipses_{k}", canvas.astype(np.uint8)
    if samples is None:
        return
    # (x0, y0, x1, y1) regions without a face, each resized to 512 px.
    regions = {
        "astronaut.png": [(0, 0, 170, 170), (300, 0, 512, 200), (100, 300, 350, 512), (256, 256, 512, 512), (0, 200, 200, 512), (120, 320, 240, 440)],
        "einstein.jpg": [(0, 0, 340, 260), (460, 0, 817, 300), (450, 400, 817, 800), (200, 700, 600, 1024), (500, 700, 817, 1024), (0, 250, 330, 600)],
    }
    from PIL import Image

    for name, boxes in regions.items():
        if not (samples / name).is_file():
            continue
        photo = Image.fromarray(to_uint8(load_image(samples / name)[0]))
        for i, box in enumerate(boxes):
            yield f"{Path(name).stem}_bg{i}", np.asarray(photo.crop(box).resize((512, 512), Image.BICUBIC))


class Cache:
    """Detections per (set, file, detector), appended to a JSONL file as they are made."""

    def __init__(self, path: Path):
        self.path, self.rows = path, {}
        if path.is_file():
            for line in path.read_text().splitlines():
                row = json.loads(line)
                self.rows[(row["set"], row["file"], row["detector"])] = row

    def get(self, set_name: str, file: str, detector: str, frame: Callable[[], np.ndarray], run: Callable) -> dict:
        key = (set_name, file, detector)
        if key not in self.rows:
            image = frame()
            self.rows[key] = {"set": set_name, "file": file, "detector": detector, "hw": list(image.shape[:2]), **run(image)}
            with open(self.path, "a") as handle:
                handle.write(json.dumps(self.rows[key]) + "\n")
        return self.rows[key]


def above(row: dict, floor: float) -> list[np.ndarray]:
    return [np.asarray(b, dtype=np.float64) for b, s in zip(row["boxes"], row["scores"]) if s >= floor]


def centre_hit(box: np.ndarray, h: int, w: int) -> bool:
    side = np.sqrt((box[2] - box[0]) * (box[3] - box[1]))
    return box[0] <= w / 2 <= box[2] and box[1] <= h / 2 <= box[3] and 0.2 * min(h, w) <= side <= 1.5 * max(h, w)


def fit_hog_map(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float, float]:
    """Least squares (cx, cy, side) with hog centre = mtcnn centre + (cx w, cy h), hog side = side * sqrt(w h)."""
    m, h = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    w_m, h_m = m[:, 2] - m[:, 0], m[:, 3] - m[:, 1]
    cx = np.mean(((h[:, 0] + h[:, 2]) - (m[:, 0] + m[:, 2])) / 2 / w_m)
    cy = np.mean(((h[:, 1] + h[:, 3]) - (m[:, 1] + m[:, 3])) / 2 / h_m)
    side = np.sum(np.sqrt((h[:, 2] - h[:, 0]) * (h[:, 3] - h[:, 1])) * np.sqrt(w_m * h_m)) / np.sum(w_m * h_m)
    return round(float(cx), 4), round(float(cy), 4), round(float(side), 4)


def landmark_error(predictor, dlib, image: np.ndarray, box: np.ndarray, truth: np.ndarray) -> float:
    """Mean error over the shared points, over the outer-eye-corner distance (300-W's normalisation)."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    shape = predictor(image, dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
    points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
    ours = points[list(FGNET_TO_IBUG.values())]
    theirs = truth[list(FGNET_TO_IBUG)]
    return float(np.linalg.norm(ours - theirs, axis=1).mean() / np.linalg.norm(truth[27] - truth[32]))


def time_per_frame(runs: dict[str, Callable], frames: list[np.ndarray], repeats: int) -> dict[str, float]:
    """Median over 512 px frames of the best of `repeats` runs, in ms. The detectors take turns on each
    frame, so a shared machine's changing load falls on all of them alike."""
    best = {name: [float("inf")] * len(frames) for name in runs}
    for i, frame in enumerate(frames):
        for repeat in range(repeats):
            for name, run in runs.items():
                if name == "mmod" and repeat:  # seconds a frame: once is enough
                    continue
                start = time.perf_counter()
                run(frame)
                best[name][i] = min(best[name][i], (time.perf_counter() - start) * 1000)
    return {name: float(np.median(times)) for name, times in best.items()}


def to_512(image: np.ndarray) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    scale = 512 / max(h, w)
    return np.asarray(Image.fromarray(image).resize((round(w * scale), round(h * scale)), Image.BICUBIC))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fgnet", type=Path)
    parser.add_argument("--lfw", type=Path)
    parser.add_argument("--utkface", type=Path, nargs="*", default=[])
    parser.add_argument("--samples", type=Path, help="a folder with astronaut.png and einstein.jpg")
    parser.add_argument("--out", type=Path, default=Path("outputs/face_detectors"))
    parser.add_argument("--detectors", nargs="+", default=["hog", "mtcnn", "yuface", "mmod"])
    parser.add_argument("--limit", type=int, default=500, help="images per LFW / UTKFace folder (test split, evenly spread)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = detectors(args.detectors)
    cache = Cache(args.out / "detections.jsonl")
    names = list(runs)
    fast = [n for n in names if n != "mmod"]
    stats: dict = {"device": describe_device(), "load_average": os.getloadavg(), "floors": {n: FLOORS[n] for n in names}}
    images: dict[str, np.ndarray] = {}

    def frame_of(path: Path) -> Callable[[], np.ndarray]:
        return lambda: to_uint8(load_image(path)[0])

    # FG-NET: recall against the hand points, extra boxes, and the rows for the box map and landmarks.
    fg_rows = []
    if args.fgnet:
        labels = list(csv.DictReader(open(args.fgnet / "labels.csv")))
        for i, row in enumerate(labels):
            truth = read_pts(args.fgnet / "points" / (Path(row["file"]).stem + ".pts"))
            box = np.array([*truth.min(0), *truth.max(0)])
            entry = {"file": row["file"], "split": row["split"], "grey": row["grey"] == "1", "truth": truth, "box": box}
            for name in names:
                if name == "mmod" and row["split"] != "test":
                    continue
                entry[name] = cache.get("fgnet", row["file"], name, frame_of(args.fgnet / "images" / row["file"]), runs[name])
            fg_rows.append(entry)
            if i % 100 == 0:
                print(f"fgnet {i}/{len(labels)}", flush=True)
        stats["fgnet"] = {}
        for name in names:
            rows = [r for r in fg_rows if name in r]
            hits = [any(iou(b, r["box"]) >= MIN_IOU for b in above(r[name], FLOORS[name])) for r in rows]
            extra = sum(sum(iou(b, r["box"]) < MIN_IOU for b in above(r[name], FLOORS[name])) for r in rows)
            grey = [h for h, r in zip(hits, rows) if r["grey"]]
            stats["fgnet"][name] = {"images": len(rows), "found": int(sum(hits)), "recall": float(np.mean(hits)), "grey_recall": float(np.mean(grey)), "extra_boxes": int(extra),
                                    "missed": [r["file"] for h, r in zip(hits, rows) if not h]}
        if "mtcnn" in names:
            sweep = {}
            for floor in (0.7, 0.8, 0.9, 0.95, 0.99):
                hits = [any(iou(b, r["box"]) >= MIN_IOU for b in above(r["mtcnn"], floor)) for r in fg_rows]
                sweep[floor] = float(np.mean(hits))
            stats["fgnet_mtcnn_floor_sweep"] = sweep

    # Centred face crops: LFW and UTKFace test splits.
    crop_sets = []
    if args.lfw:
        test_people = {r["person"] for r in csv.DictReader(open(args.lfw / "people.csv")) if r["split"] == "test"}
        files = sorted(p for person in test_people for p in (args.lfw / "images" / person).glob("*.jpg"))
        crop_sets.append(("lfw", args.lfw / "images", files))
    for folder in args.utkface:
        rows = [r for r in csv.DictReader(open(folder / "labels.csv")) if r["split"] == "test"]
        base = folder / "images" if (folder / "images").is_dir() else folder
        crop_sets.append((folder.name, base, [base / r["file"] for r in rows]))
    for set_name, base, files in crop_sets:
        files = [files[i] for i in np.linspace(0, len(files) - 1, min(args.limit, len(files))).round().astype(int)]
        stats[set_name] = {}
        found = {name: [] for name in fast}
        for i, path in enumerate(files):
            for name in fast:
                row = cache.get(set_name, path.relative_to(base).as_posix(), name, frame_of(path), runs[name])
                found[name].append(any(centre_hit(b, *row["hw"]) for b in above(row, FLOORS[name])))
            if i % 100 == 0:
                print(f"{set_name} {i}/{len(files)}", flush=True)
        for name in fast:
            stats[set_name][name] = {"images": len(files), "recall": float(np.mean(found[name]))}

    # Face-free frames, and the samples' own faces.
    stats["face_free"] = {name: {"frames": 0, "false_boxes": 0, "frames_with_any": 0} for name in names}
    for frame_name, frame in face_free_frames(args.samples):
        images[frame_name] = frame
        for name in names:
            boxes = above(cache.get("face_free", frame_name, name, lambda frame=frame: frame, runs[name]), FLOORS[name])
            counts = stats["face_free"][name]
            counts["frames"] += 1
            counts["false_boxes"] += len(boxes)
            counts["frames_with_any"] += bool(boxes)
    if args.samples:
        stats["samples"] = {}
        for sample in ("astronaut.png", "einstein.jpg"):
            frame = to_uint8(load_image(args.samples / sample)[0])
            stats["samples"][sample] = {name: [[round(v) for v in b] for b in above(cache.get("samples", sample, name, lambda frame=frame: frame, runs[name]), FLOORS[name])] for name in names}

    # Time per 512 px frame: the samples and FG-NET portraits scaled to 512 px, and face-free frames.
    timing_frames = [to_512(to_uint8(load_image(args.samples / s)[0])) for s in ("astronaut.png", "einstein.jpg")] if args.samples else []
    timing_frames += [to_512(to_uint8(load_image(args.fgnet / "images" / r["file"])[0])) for r in fg_rows[:: max(1, len(fg_rows) // 8)][:8]] if fg_rows else []
    timing_frames += [images[k] for k in ("noise_0", "smooth_noise_0", "grating_0")]
    stats["ms_per_512_frame"] = time_per_frame(runs, timing_frames, args.repeats)
    stats["timing_frames"] = len(timing_frames)

    # MTCNN box -> HOG-style box, fitted on train people; dlib's 68 points from each box on test people.
    if fg_rows and {"hog", "mtcnn"} <= set(names):
        def matched(r, name):
            good = [b for b in above(r[name], FLOORS[name]) if iou(b, r["box"]) >= MIN_IOU]
            return max(good, key=lambda b: iou(b, r["box"])) if good else None

        pairs = [(matched(r, "mtcnn"), matched(r, "hog")) for r in fg_rows if r["split"] == "train"]
        fitted = fit_hog_map([p for p in pairs if p[0] is not None and p[1] is not None])
        stats["hog_box_from_mtcnn"] = {"fitted": fitted, "in_detect_py": detect.HOG_BOX_FROM_MTCNN}
        dlib = detect._import_dlib()
        predictor = detect._shape_predictor("landmarks_68")
        errors: dict[str, list] = {"hog box": [], "mtcnn box mapped": [], "mtcnn box as is": [], "mtcnn mapped, all its faces": []}
        for r in fg_rows:
            if r["split"] != "test":
                continue
            mt, hog = matched(r, "mtcnn"), matched(r, "hog")
            if mt is None:
                continue
            image = to_uint8(load_image(args.fgnet / "images" / r["file"])[0])
            mapped = detect.hog_like_box(mt, fitted)  # the freshly fitted map, whatever detect.py holds now
            errors["mtcnn mapped, all its faces"].append(landmark_error(predictor, dlib, image, mapped, r["truth"]))
            if hog is not None:
                errors["hog box"].append(landmark_error(predictor, dlib, image, hog, r["truth"]))
                errors["mtcnn box mapped"].append(errors["mtcnn mapped, all its faces"][-1])
                errors["mtcnn box as is"].append(landmark_error(predictor, dlib, image, mt, r["truth"]))
        stats["landmark_error_fgnet_test"] = {k: {"faces": len(v), "mean": float(np.mean(v)), "median": float(np.median(v)), "over_0.1": float(np.mean(np.array(v) > 0.1))} for k, v in errors.items()}

    (args.out / "stats.json").write_text(json.dumps(stats, indent=1, default=float))
    (args.out / "face_detectors.md").write_text(markdown(stats, names, [name for name, _, _ in crop_sets]))
    print((args.out / "face_detectors.md").read_text())


def markdown(stats: dict, names: list[str], crop_sets: list[str]) -> str:
    """The comparison table: one row per detector."""
    def pct(x):
        return f"{100 * x:.1f} %"

    head = ["detector (floor)", "FG-NET found", "FG-NET grey", "FG-NET extra boxes"] + [f"{s} found" for s in crop_sets]
    head += ["face-free: false boxes (frames)", "ms / 512 px frame"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        fg = stats.get("fgnet", {}).get(name)
        cells = [f"{name} ({FLOORS[name]})"]
        cells += [f"{fg['found']}/{fg['images']} ({pct(fg['recall'])})", pct(fg["grey_recall"]), str(fg["extra_boxes"])] if fg else ["", "", ""]
        cells += [pct(stats[s][name]["recall"]) if name in stats[s] else "-" for s in crop_sets]
        free = stats["face_free"][name]
        cells += [f"{free['false_boxes']} ({free['frames_with_any']}/{free['frames']})", f"{stats['ms_per_512_frame'][name]:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if "landmark_error_fgnet_test" in stats:
        lines += ["", "| dlib 68 points from | faces | mean error | median | over 0.1 |", "|---|---|---|---|---|"]
        for k, v in stats["landmark_error_fgnet_test"].items():
            lines.append(f"| {k} | {v['faces']} | {v['mean']:.4f} | {v['median']:.4f} | {pct(v['over_0.1'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
