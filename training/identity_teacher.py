"""dlib 128-d identity embeddings of a list of images, computed once and cached (the distillation teacher).

    python -m training.identity_teacher --lfw ../shared/data/lfw --utkface ../shared/data/utkface-part1 --cache-dir runs/cache

Images where HOG finds no face get NaN rows; the cache is written every 500 images, so an interrupted
run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from age_reenact.evaluation.dlib_identity import dlib_embedding
from age_reenact.face.detect import FaceDetector
from age_reenact.images import ImageInputError, load_image, to_uint8
from age_reenact.labels import read_labels

from .identity_data import lfw_items


def cache_path(cache_dir: str | Path, paths: Sequence[Path]) -> Path:
    key = hashlib.sha1("\n".join(str(p) for p in paths).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"dlib_teacher_{key}.npy"


def teacher_embeddings(paths: Sequence[Path], cache_dir: str | Path, save_every: int = 500) -> np.ndarray:
    """(N, 128) float32, NaN where no face was found; resumable through the cache file."""
    path = cache_path(cache_dir, paths)
    embeddings = np.load(path) if path.is_file() else np.full((len(paths), 128), np.inf, dtype=np.float32)
    todo = np.flatnonzero(np.isinf(embeddings[:, 0]))  # inf = not computed yet; NaN = no face
    if len(todo):
        detector = FaceDetector(upsample=1, landmarks="5")
        path.parent.mkdir(parents=True, exist_ok=True)
        for count, index in enumerate(tqdm(todo, desc="dlib teacher embeddings", dynamic_ncols=True), 1):
            try:
                image = to_uint8(load_image(paths[index])[0])
                faces = detector.detect(image)
                embeddings[index] = dlib_embedding(image, max(faces, key=lambda f: f.area)) if faces else np.nan
            except ImageInputError:
                embeddings[index] = np.nan
            if count % save_every == 0 or count == len(todo):
                np.save(path.with_suffix(".tmp.npy"), embeddings)
                path.with_suffix(".tmp.npy").replace(path)
    return embeddings


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
