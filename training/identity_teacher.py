"""dlib 128-d identity embeddings of a list of images, computed once and cached (the distillation teacher).

    python -m training.identity_teacher --lfw ../shared/data/lfw --utkface ../shared/data/utkface-part1 --cache-dir runs/cache

Images where HOG finds no face get NaN rows; the cache (one file per cache folder, keyed by image path)
is written every 500 images, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from age_reenact.evaluation.dlib_identity import dlib_embedding
from age_reenact.face.detect import FaceDetector, largest
from age_reenact.images import ImageInputError, load_image, to_uint8
from age_reenact.labels import lfw_items, read_labels



def cache_path(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / "dlib_teacher.npz"


def _read_cache(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    with np.load(path) as data:
        return dict(zip(data["paths"].tolist(), data["embeddings"]))


def _write_cache(path: Path, known: dict[str, np.ndarray]) -> None:
    """Merge into the file (another run may have added images meanwhile) through a temporary of our own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    known = {**_read_cache(path), **known}
    temporary = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(temporary, paths=np.array(list(known)), embeddings=np.stack(list(known.values())).astype(np.float32))
    temporary.replace(path)


def teacher_embeddings(paths: Sequence[Path], cache_dir: str | Path, save_every: int = 500) -> np.ndarray:
    """(N, 128) float32, NaN where no face was found.

    The cache maps each image path to its embedding, so any subset or new list reuses what was computed
    before, and an interrupted run resumes where it stopped.
    """
    path = cache_path(cache_dir)
    known = _read_cache(path)
    keys = [str(Path(p).resolve()) for p in paths]  # the same image from any working directory
    todo = [key for key in dict.fromkeys(keys) if key not in known]
    if todo:
        detector = FaceDetector(upsample=1, landmarks="5")
        for count, image_path in enumerate(tqdm(todo, desc="dlib teacher embeddings", dynamic_ncols=True), 1):
            try:
                image = to_uint8(load_image(image_path)[0])
                face = largest(detector.detect(image))
                known[image_path] = np.full(128, np.nan, np.float32) if face is None else dlib_embedding(image, face)
            except ImageInputError:
                known[image_path] = np.full(128, np.nan, np.float32)
            if count % save_every == 0 or count == len(todo):
                _write_cache(path, known)
    return np.stack([known[key] for key in keys]).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw")
    parser.add_argument("--utkface")
    parser.add_argument("--cache-dir", default="runs/cache")
    args = parser.parse_args()
    if args.lfw:
        items = lfw_items(args.lfw, split=None)
        teacher_embeddings([i.path for i in items], args.cache_dir)
    if args.utkface:
        items = read_labels(args.utkface, Path(args.utkface) / "labels.csv", split="train")
        teacher_embeddings([i.path for i in items], args.cache_dir)


if __name__ == "__main__":
    main()
