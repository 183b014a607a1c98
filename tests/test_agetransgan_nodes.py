"""AgeTransGAN nodes with a tiny generator: loader, age transform on frames and on crops, sweep."""
from __future__ import annotations

import pytest
import torch

from age_reenact.agetransgan import AgeTransGANGenerator
from age_reenact.agetransgan.convert import preprocessing_for
from age_reenact.face.crop import crops_from_points
from age_reenact.weights import save_weights

CONFIG = dict(size=64, group=10, style_dim=32, n_mlp=2, channel_multiplier=1)


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    for group in (10, 4):
        torch.manual_seed(group)
        config = {**CONFIG, "group": group}
        state = AgeTransGANGenerator(**config).state_dict()
        state.update({k: torch.full_like(v, 0.2) for k, v in state.items() if k.endswith("noise.weight")})  # let seeds matter
        save_weights(tmp_path / "agetransgan" / f"tiny_{group}group.safetensors", state, "agetransgan_generator", config, preprocessing_for(config))
    monkeypatch.setenv("AGE_REENACT_MODELS", str(tmp_path))
    return tmp_path


def face_record(convention="agetransgan", count=1):
    """A FaceCrops record of `count` frames of 100x100 px without detection."""
    points = [[[35.0, 40.0], [65.0, 40.0], [50.0, 55.0], [38.0, 72.0], [62.0, 72.0]]] * count
    return crops_from_points((100, 100), count, list(range(count)), points, points, convention, 64)


def load(pack, name):
    loader = pack.NODE_CLASS_MAPPINGS["AgeReenactAgeTransGANLoader"]
    assert name in loader.INPUT_TYPES()["required"]["model_name"][0]
    return loader().load(name, "cpu", "fp32")[0]


def test_age_transform_on_frames_keeps_size_and_count(pack, models_dir, astronaut):
    model = load(pack, "tiny_10group.safetensors")
    frames = torch.cat([astronaut, astronaut.flip(2)])
    node = pack.NODE_CLASS_MAPPINGS["AgeReenactAgeTransform"]()
    out = node.transform(model, frames, "group", "70+", 0.0, 0, False, 2, "largest", 0, "error", 0.06, "none")
    (image,) = out["result"]
    assert image.shape == frames.shape and out["ui"]["text"] == ["target 70+"]
    changed = (image - frames).abs().amax(-1) > 1e-3
    assert 0.01 < changed.float().mean() < 0.5  # the face region changed, most of the frame did not
    assert torch.equal(image[:, :8], frames[:, :8])


def test_age_transform_on_crops_then_paste(pack, models_dir, astronaut):
    nodes = pack.NODE_CLASS_MAPPINGS
    model = load(pack, "tiny_10group.safetensors")
    frames = torch.cat([astronaut, astronaut])
    crops, face_crop = nodes["AgeReenactFaceCrop"]().crop(frames, "agetransgan", 96, "largest", 0, "error", 0, "68", False)
    out = nodes["AgeReenactAgeTransform"]().transform(model, crops, "age", "0-2", 33.0, 5, True, 4, "largest", 0, "error", 0.06, "none", face_crop=face_crop)
    (aged,) = out["result"]
    assert aged.shape == (2, 64, 64, 3)  # resampled to the model's size
    assert out["ui"]["text"] == ["target 20-29 20% / 30-39 80%"]
    assert not torch.allclose(aged[0], aged[1])  # seed_per_face: different noise for the two faces
    image, _ = nodes["AgeReenactFacePaste"]().paste(frames, aged, face_crop, 0.06, "none")
    assert image.shape == frames.shape
    with pytest.raises(ValueError, match="connect the crops"):
        nodes["AgeReenactAgeTransform"]().transform(model, crops[:1], "group", "70+", 0.0, 0, False, 4, "largest", 0, "error", 0.06, "none", face_crop=face_crop)


def test_four_group_model_rejects_groups_it_lacks(pack, models_dir):
    model = load(pack, "tiny_4group.safetensors")
    node = pack.NODE_CLASS_MAPPINGS["AgeReenactAgeTransform"]()
    with pytest.raises(ValueError, match="15-29"):
        node.transform(model, torch.rand(1, 64, 64, 3), "group", "0-2", 0.0, 0, False, 4, "largest", 0, "error", 0.06, "none", face_crop=face_record())
    with pytest.raises(ValueError, match="crop_convention"):
        node.transform(model, torch.rand(1, 64, 64, 3), "group", "50+", 0.0, 0, False, 4, "largest", 0, "error", 0.06, "none", face_crop=face_record("arcface"))


def test_age_sweep(pack, models_dir, astronaut):
    model = load(pack, "tiny_10group.safetensors")
    node = pack.NODE_CLASS_MAPPINGS["AgeReenactAgeSweep"]()
    crop = torch.rand(1, 64, 64, 3)
    images, labels = node.sweep(model, crop, "smooth", 10, False, 0, 16, "largest", 0, 1, 0.06, face_crop=face_record())["result"]
    assert images.shape == (91, 64, 64, 3) and len(labels.splitlines()) == 91
    images, labels = node.sweep(model, astronaut, "groups", 10, True, 0, 16, "largest", 0, 1, 0.06)["result"]
    assert images.shape == (10, *astronaut.shape[1:]) and labels.splitlines()[-1] == "70+"
    four = load(pack, "tiny_4group.safetensors")
    images, _ = node.sweep(four, astronaut, "smooth", 10, False, 0, 16, "largest", 0, 1, 0.06)["result"]
    assert images.shape == (31, 64, 64, 3)


def test_age_sweep_ages_the_chosen_face(pack, models_dir, einstein):
    """einstein.jpg has a bystander: face_choice picks the face as Face Crop does, and so does a face_crop input."""
    nodes = pack.NODE_CLASS_MAPPINGS
    model = load(pack, "tiny_10group.safetensors")
    frame, _ = einstein
    sweep = nodes["AgeReenactAgeSweep"]()
    by_choice, by_crop = [], []
    for index in (0, 1):
        by_choice.append(sweep.sweep(model, frame, "groups", 10, False, 0, 16, "index", index, 1, 0.06)["result"][0])
        crops, face_crop = nodes["AgeReenactFaceCrop"]().crop(frame, "agetransgan", 64, "index", index, "error", 1, "68", False)
        by_crop.append(sweep.sweep(model, crops, "groups", 10, False, 0, 16, "largest", 0, 1, 0.06, face_crop=face_crop)["result"][0])
    assert not torch.allclose(by_choice[0], by_choice[1])  # two different faces
    for choice, crop in zip(by_choice, by_crop):
        torch.testing.assert_close(choice, crop)
    largest = sweep.sweep(model, frame, "groups", 10, False, 0, 16, "largest", 0, 1, 0.06)["result"][0]
    assert any(torch.equal(largest, face) for face in by_choice)
    with pytest.raises(ValueError, match="one face"):
        model.sweep_frame(frame, None, None, 0, face_choice="all")
