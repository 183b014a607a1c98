"""The multi-pose dataset builder on 3 faces with a tiny random SD1.5 + ControlNet pipeline."""
from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

pytest.importorskip("diffusers", reason="the augmenter needs the 'augment' extra (diffusers, transformers)")

from age_reenact.age_groups import FFHQ_AGING_10  # noqa: E402
from age_reenact.augment.augmenter import AugmentSettings, PoseAugmenter  # noqa: E402
from age_reenact.augment.diffusers_loading import SD15_TINY, build_random_pipeline, load_tokenizer, write_byte_tokenizer  # noqa: E402
from training.build_multipose import FIELDS, MANIFEST, PoseRanges, build_multipose, output_name, pose_for  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"

SETTINGS = AugmentSettings(prompt="a face", negative_prompt="", strength=0.5, steps=4, guidance=3.0, size=64)
RANGES = PoseRanges(yaw=30, pitch=10, roll=5)


class CountingAugmenter:
    def __init__(self, augmenter):
        self.augmenter, self.calls = augmenter, 0

    def __call__(self, sources, pose_maps, settings):
        self.calls += 1
        return self.augmenter(sources, pose_maps, settings)


def stub_ages(images: torch.Tensor) -> np.ndarray:
    """Stands in for the age estimator: brightness as 'years', NaN (no face) for very dark images."""
    brightness = images.mean(dim=(1, 2, 3)).numpy()
    return np.where(brightness < 0.02, np.nan, brightness * 90.0)


@pytest.fixture(scope="module")
def augmenter(tmp_path_factory):
    tokenizer = load_tokenizer(write_byte_tokenizer(tmp_path_factory.mktemp("tok")), SD15_TINY.vocab_size, SD15_TINY.max_length)
    return PoseAugmenter(build_random_pipeline(SD15_TINY, tokenizer, torch.float32), "cpu")


@pytest.fixture
def faces(tmp_path):
    folder = tmp_path / "faces"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(FIXTURES / "einstein.jpg", folder / "einstein.jpg")
    shutil.copy(FIXTURES / "astronaut.png", folder / "sub" / "astronaut.png")
    ImageOps.mirror(Image.open(FIXTURES / "einstein.jpg")).save(folder / "einstein_mirrored.png")
    return folder


def rows(out) -> list[dict]:
    with open(out / MANIFEST, newline="") as handle:
        return list(csv.DictReader(handle))


def test_builds_manifest_and_resumes(augmenter, faces, tmp_path):
    out = tmp_path / "out"
    counting = CountingAugmenter(augmenter)
    progress = []
    written = build_multipose(faces, out, counting, stub_ages, poses_per_face=2, ranges=RANGES, settings=SETTINGS,
                              progress=lambda done, total: progress.append((done, total)))
    assert written == counting.calls == 6 and progress[-1] == (6, 6)
    manifest = rows(out)
    assert list(manifest[0]) == FIELDS and len(manifest) == 6
    assert {r["source"] for r in manifest} == {"einstein.jpg", "einstein_mirrored.png", "sub/astronaut.png"}
    for row in manifest:
        image = Image.open(out / row["file"])
        assert image.size == (64, 64)
        yaw, pitch, roll = (float(row[k]) for k in ("yaw", "pitch", "roll"))
        assert abs(yaw) <= 30 and abs(pitch) <= 10 and abs(roll) <= 5
        assert math.isclose(float(row["age"]), np.asarray(image).mean() / 255 * 90, abs_tol=0.5)
        assert row["group"] == FFHQ_AGING_10.names[FFHQ_AGING_10.group_of(float(row["age"]))]
    assert (out / "images" / "sub" / "astronaut_pose1.png").is_file()

    # Nothing left to do: no model call.
    assert build_multipose(faces, out, counting, stub_ages, poses_per_face=2, ranges=RANGES, settings=SETTINGS) == 0
    assert counting.calls == 6

    # Interrupted after writing the last image but before its manifest row: only that image is redone.
    lines = (out / MANIFEST).read_text().splitlines(keepends=True)
    (out / MANIFEST).write_text("".join(lines[:-1]))
    assert build_multipose(faces, out, counting, stub_ages, poses_per_face=2, ranges=RANGES, settings=SETTINGS) == 1
    assert counting.calls == 7 and rows(out) == manifest  # same pose, same seed: the same row again

    # More poses per face later: only the new ones, with the earlier poses unchanged.
    assert build_multipose(faces, out, counting, stub_ages, poses_per_face=3, ranges=RANGES, settings=SETTINGS) == 3
    assert rows(out)[:6] == manifest and len({r["file"] for r in rows(out)}) == 9
    assert not list(out.rglob("*.partial*"))


def test_faceless_sources_are_skipped_and_no_face_ages_left_empty(augmenter, faces, tmp_path):
    Image.new("RGB", (128, 128), (5, 5, 5)).save(faces / "blank.png")  # dlib finds no face here
    out = tmp_path / "out"
    no_face = lambda images: np.full(len(images), np.nan)  # noqa: E731 - the estimator finds no face either
    assert build_multipose(faces, out, augmenter, no_face, poses_per_face=1, ranges=RANGES, settings=SETTINGS) == 3
    manifest = rows(out)
    assert "blank.png" not in {r["source"] for r in manifest}
    assert all(r["age"] == "" and r["group"] == "" for r in manifest)


def test_poses_do_not_depend_on_how_many_are_asked_for():
    first = [pose_for("a.png", k, RANGES, seed=1) for k in range(3)]
    assert np.allclose(first, [pose_for("a.png", k, RANGES, seed=1) for k in range(3)])
    assert not np.allclose(first[0], pose_for("b.png", 0, RANGES, seed=1))
    assert output_name("sub/x.jpg", 2) == "images/sub/x_pose2.png"
