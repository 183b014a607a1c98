"""Reenactor training on the shared engine (losses, export, resume), face cache landmarks, evaluation metrics."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from conftest import FIXTURES, ROOT
from age_reenact.evaluation.dlib_identity import dlib_embedding
from age_reenact.evaluation.reenact_eval import PairResult, different_person_pairs, landmark_nme, measure_output, summarize
from age_reenact.face.crop import detect_crops, extract_crops
from age_reenact.face.detect import FaceDetector
from age_reenact.images import to_uint8
from age_reenact.reenact.pipeline import load_reenactor
from age_reenact.weights import read_weights
from training.face_data import FLIP_68, AlignedFaces
from training.reenactor import FaceItem, PatchDiscriminator, ReenactorTask, mouth_gap_error, r1_penalty, reenactor_items


def fgnet_folder(root, rows, photo=None):
    """An FG-NET-style folder: labels.csv (file, person, age, grey, width, height, split), images/ and
    points/PPPAaa.pts; rows are (person, age, split), images a copy of `photo` (empty files without one)."""
    (root / "images").mkdir(parents=True)
    (root / "points").mkdir()
    labels = ["file,person,age,grey,width,height,split"]
    for person, age, split in rows:
        name = f"{person}A{age:02d}"
        if photo is None:
            (root / "images" / f"{name}.jpg").touch()
        else:
            photo(person, age).save(root / "images" / f"{name}.jpg")
        shutil.copy(FIXTURES / "einstein.pts", root / "points" / f"{name}.pts")  # unread: FG-NET's own point order
        labels.append(f"{name}.jpg,{person},{age},0,200,256,{split}")
    (root / "labels.csv").write_text("\n".join(labels) + "\n")


def utkface_folder(root, rows, in_images: bool, photo=None):
    """A UTKFace-style folder: labels.csv (file, age, gender, race, split), images beside it (utkface-part1)
    or in images/ (utkface-extra); rows are (age, split)."""
    images = root / "images" if in_images else root
    images.mkdir(parents=True)
    labels = ["file,age,gender,race,split"]
    for number, (age, split) in enumerate(rows):
        name = f"{age}_0_0_{number}.jpg.chip.jpg"
        if photo is None:
            (images / name).touch()
        else:
            photo(number).save(images / name, format="JPEG")
        labels.append(f"{name},{age},0,0,{split}")
    (root / "labels.csv").write_text("\n".join(labels) + "\n")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """An LFW-style folder (two train people with three photos each), a UTKFace-style folder, and for the
    run with every source a utkface-extra-style folder and an FG-NET-style folder (two train people)."""
    root = tmp_path_factory.mktemp("reenact_data")
    photos = {"Albert_Einstein": Image.open(FIXTURES / "einstein.jpg").convert("RGB"), "Eileen_Collins": Image.open(FIXTURES / "astronaut.png").convert("RGB")}
    people = ["person,images,split"]
    for name, image in photos.items():
        folder = root / "lfw" / "images" / name
        folder.mkdir(parents=True)
        for number, variant in enumerate((image, ImageOps.mirror(image), image.resize((image.width * 3 // 4, image.height * 3 // 4))), 1):
            variant.save(folder / f"{name}_{number:04d}.jpg")
        people.append(f"{name},3,train")
    (root / "lfw" / "people.csv").write_text("\n".join(people) + "\n")
    (root / "utk").mkdir()
    labels = ["file,age,gender,race,split"]
    for number, (split, name) in enumerate((("train", "Albert_Einstein"), ("train", "Eileen_Collins"), ("val", "Eileen_Collins"), ("val", "Albert_Einstein"))):
        photos[name].save(root / "utk" / f"{30 + number}_0_0_{number}.jpg")
        labels.append(f"{30 + number}_0_0_{number}.jpg,{30 + number},0,0,{split}")
    (root / "utk" / "labels.csv").write_text("\n".join(labels) + "\n")
    faces = list(photos.values())
    utkface_folder(root / "utk_extra", [(40, "train"), (41, "train"), (42, "val"), (43, "test")], True, lambda n: faces[n % 2])
    fgnet_rows = [("001", 20, "train"), ("001", 35, "train"), ("002", 30, "train"), ("002", 41, "train"), ("003", 25, "test")]
    fgnet_folder(root / "fgnet", fgnet_rows, lambda person, age: faces[int(person) % 2] if age < 35 else ImageOps.mirror(faces[int(person) % 2]))
    return root


def train(data, out, *extra):
    command = [sys.executable, "-m", "training", "reenactor", "--lfw", str(data / "lfw"), "--utkface", str(data / "utk"), "--out", str(out),
               "--preset", "tiny", "--batch-size", "4", "--log-every", "1", "--eval-every", "1000", "--sample-every", "2",
               "--cache-dir", str(data / "cache"), "--threads", "1", "--no-bf16", "--lr", "0.003", "--shape-lr", "0.003", *extra]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    return out, train(tiny_data, out, "--steps", "4")


def test_training_lowers_the_losses_and_writes_a_loadable_model(straight_run):
    out, history = straight_run
    assert [r["step"] for r in history] == [1, 2, 3, 4]
    assert history[-1]["l1"] < history[0]["l1"]
    assert history[-1]["shape_rec"] < history[0]["shape_rec"]
    reenactor = load_reenactor(out / "reenactor.safetensors")
    assert reenactor.model.identity_source == "style" and reenactor.size == 32
    crops = torch.rand(2, 32, 32, 3)
    identity = reenactor.identity(crops)  # the model's own style encoder: no identity file needed
    assert identity.shape == (2, reenactor.model.identity_dim)
    assert reenactor.shape(np.full((1, 68, 2), 0.5), identity[:1]).shape == (1, 68, 2)
    assert (out / "samples" / "step_000004.png").is_file() and (out / "MODEL_CARD.md").is_file()
    assert "num_identities" in (out / "MODEL_CARD.md").read_text()


def test_resume_continues_the_step_count(tiny_data, straight_run, tmp_path):
    _, straight = straight_run
    train(tiny_data, tmp_path, "--steps", "4", "--stop-at", "2")
    assert not (tmp_path / "reenactor.safetensors").exists()
    resumed = train(tiny_data, tmp_path, "--steps", "4")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for key in ("l1", "shape_rec", "d_loss"):
        assert resumed[-1][key] == pytest.approx(straight[-1][key], rel=1e-4)


def test_ddp_two_processes_train_and_export(tiny_data, straight_run, tmp_path):
    # Every network gets gradients on every rank (R1 steps included), so DDP neither hangs nor errors.
    history = train(tiny_data, tmp_path, "--steps", "2", "--nproc", "2")
    assert [r["step"] for r in history] == [1, 2] and all(np.isfinite(r["l1"]) for r in history)
    assert (tmp_path / "reenactor.safetensors").is_file()


def test_face_cache_landmarks_follow_the_flip_and_old_caches_load(tiny_data, straight_run, tmp_path):
    items = reenactor_items(tiny_data / "lfw", [tiny_data / "utk"])
    cache = next((tiny_data / "cache").glob("faces_reenactor_32_*.npz"))  # built by the training run
    shutil.copy(cache, tmp_path / cache.name)
    faces = AlignedFaces(items, "reenactor", 32, cache_dir=tmp_path, landmarks=True)
    assert np.isfinite(faces.landmarks).all()
    crops, points = faces.crops_with_landmarks([0], torch.Generator().manual_seed(0), {"flip": 1.0})
    plain, aligned = faces.crops_with_landmarks([0])
    assert torch.allclose(crops, plain.flip(-1), atol=1e-5)
    assert np.allclose(points[0], np.stack([31 - aligned[0][:, 0], aligned[0][:, 1]], 1)[FLIP_68], atol=1e-4)
    assert points[0, 36, 0] < points[0, 45, 0]  # still image-left eye first after mirroring
    # A cache written before landmarks were stored loads as it is for tasks that need no landmarks.
    np.savez(tmp_path / cache.name, images=faces.images, detected=faces.detected)
    again = AlignedFaces(items, "reenactor", 32, cache_dir=tmp_path)
    assert again.landmarks is None and np.array_equal(again.images, faces.images)
    with pytest.raises(ValueError, match="landmarks=True"):
        again.crops_with_landmarks([0])


def test_nme_of_landmarks_to_themselves_is_zero_and_scales_with_the_error():
    landmarks = np.random.default_rng(0).uniform(20, 100, size=(68, 2))
    landmarks[36:42], landmarks[42:48] = [40.0, 50.0], [80.0, 50.0]  # eye centres 40 px apart
    assert landmark_nme(landmarks, landmarks) == 0.0
    assert landmark_nme(landmarks + [4.0, 0.0], landmarks) == pytest.approx(0.1)


def test_identical_output_has_zero_identity_distance_and_zero_nme(einstein):
    image, _ = einstein
    detector = FaceDetector(landmarks="68")
    crop = extract_crops(image, detect_crops(image, detector, "reenactor", 128))[0]
    # What the evaluation sees: the crop upscaled to 256 for detection, landmarks scaled back.
    frame = to_uint8(torch.nn.functional.interpolate(crop.permute(2, 0, 1)[None], scale_factor=2, mode="bicubic", align_corners=False)[0].permute(1, 2, 0))
    face = max(detector.detect(frame), key=lambda f: f.area)
    measured = measure_output(crop, face.landmarks / 2, dlib_embedding(frame, face), detector)
    assert measured.found and measured.identity_distance == pytest.approx(0.0, abs=1e-6) and measured.nme == pytest.approx(0.0, abs=1e-9)
    assert np.allclose(measured.landmarks, face.landmarks / 2)
    lost = measure_output(torch.zeros(128, 128, 3), face.landmarks / 2, dlib_embedding(frame, face), detector)
    assert lost.found is False and np.isnan(lost.identity_distance) and np.isnan(lost.nme) and lost.landmarks is None


def test_pairs_are_different_people_and_fixed_by_the_seed():
    people = ["a", "a", "b", "c", "c", "d"]
    first = list(different_person_pairs(people, seed=3))
    assert first == list(different_person_pairs(people, seed=3)) != list(different_person_pairs(people, seed=4))
    assert len(first) == len(set(first)) == 36 - (4 + 1 + 4 + 1)  # every ordered pair of different people, once
    assert all(people[i] != people[j] for i, j in first)


def test_summary_counts_missing_output_faces_as_failures():
    rows = [PairResult("lfw_test", "s", "d", True, 0.4, 0.8, 0.05, driver_distance=0.7),
            PairResult("lfw_test", "s", "d", False, float("nan"), 0.8, float("nan"))]
    summary = summarize(rows)["all"]
    assert summary["identity_kept"] == 0.5 and summary["pose_followed"] == 0.5 and summary["mean_nme"] == pytest.approx(0.05)
    assert summary["closer_to_source"] == 0.5 and summary["mean_output_driver_distance"] == pytest.approx(0.7)


def test_head_turn_and_mouth_opening_follow_the_landmarks(einstein):
    from age_reenact.evaluation.reenact_eval import head_turn, mouth_opening

    _, points = einstein
    frontal = points.astype(np.float64)
    mirrored = frontal.copy()
    mirrored[:, 0] = -mirrored[:, 0]
    mirrored = mirrored[FLIP_68]  # the mirror image's own point order
    assert head_turn(mirrored) == pytest.approx(-head_turn(frontal), abs=1e-9)
    turned = frontal.copy()
    turned[30, 0] += 10.0  # the nose tip moves towards point 16
    assert head_turn(turned) > head_turn(frontal)
    opened = frontal.copy()
    opened[[65, 66, 67], 1] += 6.0  # the lower inner lip drops
    assert mouth_opening(opened) > mouth_opening(frontal) >= 0


def test_summary_correlates_driver_and_output_motion():
    turns = [-0.2, -0.1, 0.0, 0.1, 0.2]
    rows = [PairResult("lfw_test", "s", "d", True, 0.4, 0.8, 0.05, 0.9, t, 0.5 * t, m, m) for t, m in zip(turns, [0.0, 0.3, 0.1, 0.2, 0.4])]
    summary = summarize(rows)["all"]
    assert summary["head_turn_r"] == pytest.approx(1.0) and summary["mouth_opening_r"] == pytest.approx(1.0)
    assert summary["closer_to_source"] == 1.0
    assert np.isnan(summarize(rows[:2])["all"]["head_turn_r"])  # too few pairs


@pytest.mark.parametrize("architecture", ["age_resnet", "aifd_encoder"])
def test_perceptual_term_uses_a_frozen_project_network(tmp_path, architecture):
    from age_reenact.aifd.encoder import AIFDEncoder
    from age_reenact.estimator.resnet import AgeResNet
    from age_reenact.weights import save_weights
    from training.reenactor import PerceptualLoss

    torch.manual_seed(0)
    if architecture == "age_resnet":
        config = {"block": "basic", "layers": [1, 1, 1, 1], "widths": [8, 16, 32, 64], "stem_width": 8, "num_ages": 102, "norm": "batch"}
        network, preprocessing = AgeResNet(**config), {"size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}
    else:
        config = {"depth": [1, 1, 1, 1], "widths": [16, 32, 64, 128], "embedding_dim": 64, "input_size": 64}
        network, preprocessing = AIFDEncoder(**config), {}
    path = save_weights(tmp_path / "net.safetensors", network.state_dict(), architecture, config, preprocessing)
    loss = PerceptualLoss(path).train()
    assert not loss.stages.training and not any(p.requires_grad for p in loss.parameters())
    real = torch.rand(2, 3, 32, 32)
    fake = torch.rand(2, 3, 32, 32, requires_grad=True)
    assert loss(real, real).item() == 0.0
    value = loss(fake, real)
    value.backward()
    assert value.item() > 0 and fake.grad.abs().sum() > 0
    assert architecture in loss.name


def test_load_reenactor_takes_the_aifd_encoder_for_models_trained_on_its_codes(tmp_path):
    from age_reenact.aifd.encoder import AIFDEncoder
    from age_reenact.reenact import DualGeneratorReenactor
    from age_reenact.weights import save_weights

    encoder = {"depth": [1, 1, 1, 1], "widths": [16, 32, 64, 128], "embedding_dim": 64, "input_size": 64}
    save_weights(tmp_path / "aifd.safetensors", AIFDEncoder(**encoder).state_dict(), "aifd_encoder", encoder)
    tiny = {"size": 64, "style_dim": 8, "identity_dim": 64, "identity_source": "aifd", "num_identities": 2, "base_channels": 4, "max_conv_dim": 8, "source_warp": True}
    save_weights(tmp_path / "dg.safetensors", DualGeneratorReenactor(**tiny).state_dict(), "dual_generator_reenactor", tiny)
    reenactor = load_reenactor(tmp_path / "dg.safetensors", tmp_path / "aifd.safetensors")
    codes = reenactor.identity(torch.rand(2, 64, 64, 3))
    assert codes.shape == (2, 64) and torch.allclose(codes.norm(dim=1), torch.ones(2), atol=1e-4)
    with pytest.raises(ValueError, match="AIFD identity encoder"):
        load_reenactor(tmp_path / "dg.safetensors").identity(torch.rand(1, 64, 64, 3))
    with pytest.raises(Exception, match="aifd_encoder"):
        load_reenactor(tmp_path / "dg.safetensors", tmp_path / "dg.safetensors")


def test_aifd_identity_takes_reenactor_crops():
    from age_reenact.aifd.encoder import AIFDEncoder
    from age_reenact.reenact.identity import AIFDIdentity

    identity = AIFDIdentity(AIFDEncoder(depth=[1, 1, 1, 1], widths=[16, 32, 64, 128], embedding_dim=64, input_size=64))
    codes = identity(torch.rand(3, 3, 128, 128))
    assert codes.shape == (3, identity.output_dim) == (3, 64)
    assert torch.allclose(codes.norm(dim=1), torch.ones(3), atol=1e-5)


def test_aifd_identity_code_and_perceptual_network_plug_into_training(tiny_data, straight_run, tmp_path):
    from age_reenact.aifd.encoder import AIFDEncoder
    from age_reenact.estimator.resnet import AgeResNet
    from age_reenact.evaluation.reenact_eval import load_for_evaluation
    from age_reenact.weights import WeightsError, save_weights

    aifd_config = {"depth": [1, 1, 1, 1], "widths": [16, 32, 64, 128], "embedding_dim": 64, "input_size": 64}
    aifd = save_weights(tmp_path / "aifd.safetensors", AIFDEncoder(**aifd_config).state_dict(), "aifd_encoder", aifd_config)
    age_config = {"block": "basic", "layers": [1, 1, 1, 1], "widths": [8, 16, 32, 64], "stem_width": 8, "num_ages": 102, "norm": "batch"}
    age = save_weights(tmp_path / "age.safetensors", AgeResNet(**age_config).state_dict(), "age_resnet", age_config, {"size": 64, "mean": [0.5] * 3, "std": [0.5] * 3})
    out = tmp_path / "run"
    train(tiny_data, out, "--steps", "1", "--aifd-encoder", str(aifd), "--perceptual", str(age), "--export-dtype", "fp16")
    card = (out / "MODEL_CARD.md").read_text()
    assert "age_resnet features (age.safetensors)" in card and "`aifd`" in card and "fp16" in card
    with pytest.raises(WeightsError, match="AIFD encoder"):
        load_for_evaluation(out / "reenactor.safetensors")
    reenactor = load_for_evaluation(out / "reenactor.safetensors", aifd)
    assert reenactor.model.identity_source == "aifd" and reenactor.identity(torch.rand(1, 32, 32, 3)).shape == (1, 64)


def test_evaluate_reenactment_on_any_face_folder(tmp_path, capsys):
    """The command's example run: a plain folder of photos, every file its own person, tiny random models."""
    from age_reenact.cli import main
    from age_reenact.evaluation.reenact_eval import evaluation_sets
    from benchmarks.bench_chain import write_models

    faces = tmp_path / "my_faces"
    faces.mkdir()
    for name in ("einstein.jpg", "astronaut.png"):
        shutil.copy(FIXTURES / name, faces / name)
    paths, people = evaluation_sets(None, None, faces)["folder my_faces"]
    assert [p.name for p in paths] == people == ["astronaut.png", "einstein.jpg"]
    (faces / "nested").mkdir()
    shutil.move(faces / "einstein.jpg", faces / "nested" / "einstein.jpg")
    assert evaluation_sets(None, None, faces)["folder my_faces"][1] == ["my_faces", "nested"]  # subfolders name the people
    shutil.move(faces / "nested" / "einstein.jpg", faces / "einstein.jpg")
    (faces / "nested").rmdir()
    (tmp_path / "alone").mkdir()
    shutil.copy(FIXTURES / "einstein.jpg", tmp_path / "alone" / "einstein.jpg")
    with pytest.raises(ValueError, match="one person only"):
        evaluation_sets(None, None, tmp_path / "alone")

    models = write_models(tmp_path / "models")
    out = tmp_path / "report"
    code = main(["evaluate", "reenactment", "--folder", str(faces), "--model", str(models / "reenactor" / "agereenact_reenactor_lfw.safetensors"),
                 "--identity-model", str(models / "aifd" / "agereenact_aifd_lfw.safetensors"), "--pairs", "2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "reenact_metrics.json").read_text())
    assert metrics["folder my_faces"]["pairs"] == 2 and (out / "reenact_examples.png").is_file()


def test_sources_give_train_items_with_their_people_and_no_test_split(tmp_path):
    """LFW train people, FG-NET train people (pairs across ages), two UTKFace layouts; val from the first UTKFace folder only."""
    lfw = tmp_path / "lfw"
    people = {"Ann_Able": ("train", 2), "Bob_Bold": ("train", 1), "Cid_Test": ("test", 2)}
    for person, (_, photos) in people.items():
        (lfw / "images" / person).mkdir(parents=True)
        for number in range(1, photos + 1):
            (lfw / "images" / person / f"{person}_{number:04d}.jpg").touch()
    (lfw / "people.csv").write_text("person,images,split\n" + "".join(f"{p},{n},{s}\n" for p, (s, n) in people.items()))
    fgnet_folder(tmp_path / "fgnet", [("001", 2, "train"), ("001", 30, "train"), ("002", 5, "test"), ("002", 9, "test"), ("003", 4, "train")])
    utkface_folder(tmp_path / "utkface-part1", [(20, "train"), (21, "val"), (22, "test")], in_images=False)
    utkface_folder(tmp_path / "utkface-extra", [(30, "train"), (31, "train"), (32, "val"), (33, "test")], in_images=True)

    items = reenactor_items(lfw, [tmp_path / "utkface-part1", tmp_path / "utkface-extra"], tmp_path / "fgnet")
    rows = [(i.path.relative_to(tmp_path).as_posix(), i.person, i.split, i.source) for i in items]
    assert rows == [
        ("lfw/images/Ann_Able/Ann_Able_0001.jpg", 0, "train", "lfw"),
        ("lfw/images/Ann_Able/Ann_Able_0002.jpg", 0, "train", "lfw"),
        ("lfw/images/Bob_Bold/Bob_Bold_0001.jpg", -1, "train", "lfw"),  # one photo: a self-reconstruction copy
        ("fgnet/images/001A02.jpg", 1, "train", "fgnet"),  # the same person at 2 and 30: a pair
        ("fgnet/images/001A30.jpg", 1, "train", "fgnet"),
        ("fgnet/images/003A04.jpg", -1, "train", "fgnet"),
        ("utkface-part1/20_0_0_0.jpg.chip.jpg", -1, "train", "utkface-part1"),
        ("utkface-part1/21_0_0_1.jpg.chip.jpg", -1, "val", "utkface-part1"),
        ("utkface-extra/images/30_0_0_0.jpg.chip.jpg", -1, "train", "utkface-extra"),
        ("utkface-extra/images/31_0_0_1.jpg.chip.jpg", -1, "train", "utkface-extra"),
    ]
    assert all(i.path.is_file() for i in items)
    limited = reenactor_items(lfw, [tmp_path / "utkface-extra"], tmp_path / "fgnet", limit=1)
    assert [(i.path.name, i.person, i.split) for i in limited] == [
        ("Ann_Able_0001.jpg", 0, "train"), ("Bob_Bold_0001.jpg", -1, "train"), ("001A02.jpg", 1, "train"), ("003A04.jpg", -1, "train"),
        ("30_0_0_0.jpg.chip.jpg", -1, "train"), ("32_0_0_2.jpg.chip.jpg", -1, "val"),
    ]


def dotted_faces(size=128):
    """Synthetic faces: 68 landmarks on a grid 10 px apart in the crop's middle, each a small bright dot."""
    canvas = size + 2 * (size // 8)  # AlignedFaces' default margin
    grid = np.stack(np.meshgrid(np.arange(9), np.arange(8)), -1).reshape(-1, 2)[:68] * 10.0 + 0.3
    points = np.stack([grid + (canvas - 80) / 2 + [0.2, -0.4], grid[::-1] + (canvas - 80) / 2])  # two faces, sub-pixel spots
    y, x = np.mgrid[:canvas, :canvas]
    images = np.zeros((2, canvas, canvas, 3), dtype=np.uint8)
    for face, spots in enumerate(points):
        glow = sum(np.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * 1.2**2)) for px, py in spots)
        images[face] = (np.clip(glow, 0, 1) * 255).round().astype(np.uint8)[..., None]
    return AlignedFaces.from_arrays([None, None], "reenactor", size, images, points)


def centroid_errors(crops, points, radius=4):
    """Distance from each landmark (inside the crop) to the centroid of the brightness around it, px."""
    errors = []
    for crop, spots in zip(crops[:, 0].numpy().astype(np.float64), points):
        for px, py in spots:
            cx, cy = int(round(px)), int(round(py))
            if radius <= min(cx, cy) and max(cx, cy) < crop.shape[0] - radius:
                patch = crop[cy - radius : cy + radius + 1, cx - radius : cx + radius + 1]
                y, x = np.mgrid[cy - radius : cy + radius + 1, cx - radius : cx + radius + 1]
                errors.append(np.hypot((patch * x).sum() / patch.sum() - px, (patch * y).sum() / patch.sum() - py))
    return np.array(errors)


def test_elastic_warp_moves_landmarks_with_the_image():
    from age_reenact.face.align import similarity_transform, transform_points

    faces = dotted_faces()
    jitter = {"rotate": 10, "scale": 0.08, "shift": 0.05, "flip": 0.5, "elastic": 0.04}
    for seed in range(3):
        crops, points = faces.crops_with_landmarks([0, 1], torch.Generator().manual_seed(seed), jitter)
        errors = centroid_errors(crops, points)
        assert len(errors) > 100 and errors.max() < 1.0, errors.max()

    def residual(elastic: float) -> float:
        """Landmarks' largest move (px) left after the best-fitting similarity: zero unless the warp bends."""
        _, points = faces.crops_with_landmarks([0, 1], torch.Generator().manual_seed(0), {**jitter, "flip": 0.0, "elastic": elastic})
        return min(np.abs(transform_points(similarity_transform(a, p), a) - p).max() for a, p in zip(faces.aligned_landmarks([0, 1]), points))

    assert residual(0.0) < 1e-6 and residual(0.04) > 1.0


def test_every_source_trains_two_steps(tiny_data, tmp_path):
    history = train(tiny_data, tmp_path / "run", "--steps", "2", "--utkface", str(tiny_data / "utk_extra"), "--fgnet", str(tiny_data / "fgnet"),
                    "--elastic", "0.03", "--self-share", "0.5", "--cache-dir", str(tmp_path / "cache"))
    assert [r["step"] for r in history] == [1, 2] and all(np.isfinite(r["l1"]) and np.isfinite(r["shape_rec"]) for r in history)
    card = (tmp_path / "run" / "MODEL_CARD.md").read_text()
    # LFW: 2 people x 3 photos; FG-NET: train people 001 and 002 (not 003, a test person); copies from both UTKFace folders.
    assert "lfw 6 faces of 2 people, fgnet 4 faces of 2 people" in card and "utk 2, utk_extra 2" in card
    assert "elastic warp amplitude 0.03" in card and "2 UTKFace `val` faces" in card
    weights = read_weights(tmp_path / "run" / "reenactor.safetensors", ("dual_generator_reenactor",))
    assert weights.config["num_identities"] == 4 and weights.provenance["data"]["copies"] == {"utk": 2, "utk_extra": 2}


def test_patch_discriminator_learns_under_its_r1_penalty():
    """Sharp faces against blurred ones, R1 every 4 steps at the run's gamma: the loss must leave chance.
    (With the penalty on summed patch logits, 256x the intended scale, it stayed at 1.386.)"""
    torch.manual_seed(0)
    real = torch.rand(8, 3, 64, 64) * 2 - 1
    fake = torch.nn.functional.avg_pool2d(real, 5, 1, 2)
    sketches = torch.zeros_like(real)
    disc = PatchDiscriminator(16)
    optimizer = torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.0, 0.99))
    for step in range(40):
        r1_due = step % 4 == 0
        seen = real.clone().requires_grad_(r1_due)
        real_logits, fake_logits = disc(torch.cat([seen, fake]), torch.cat([sketches, sketches])).chunk(2)
        loss = torch.nn.functional.softplus(-real_logits).mean() + torch.nn.functional.softplus(fake_logits).mean()
        if r1_due:
            loss = loss + 1.0 / 2 * 4 * r1_penalty(real_logits, seen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 1.2


def test_source_warp_run_starts_from_a_reenactor_file_and_exports_a_warp_guided_model(tiny_data, straight_run, tmp_path):
    start, _ = straight_run
    history = train(tiny_data, tmp_path, "--steps", "2", "--source-warp", "--init-reenactor", str(start / "reenactor.safetensors"),
                    "--shape-batch-size", "16", "--shape-steps", "2", "--lip-weight", "3")
    assert [r["step"] for r in history] == [1, 2] and all(np.isfinite(r["l1"]) and np.isfinite(r["shape_rec"]) for r in history)
    weights = read_weights(tmp_path / "reenactor.safetensors", ("dual_generator_reenactor",))
    assert weights.config["source_warp"] is True and weights.provenance["init_reenactor"] == "reenactor.safetensors"
    assert "warp-guided" in (tmp_path / "MODEL_CARD.md").read_text()
    reenactor = load_reenactor(tmp_path / "reenactor.safetensors")
    assert reenactor.model.rfg.generator.from_rgb.in_channels == 6
    # The shape generator came from the file (two steps at lr 0.003 move it only a little).
    initial = read_weights(start / "reenactor.safetensors", ("dual_generator_reenactor",)).state_dict
    key = "idsg.linear_decoder.main.0.weight"
    assert (weights.state_dict[key] - initial[key]).abs().mean() < (initial[key]).abs().mean()


def test_shape_batches_take_the_identity_code_of_another_photo():
    """A face's own code carries its pose: the shape generator must get another photo's (see _shape_batch)."""
    task = ReenactorTask.__new__(ReenactorTask)
    task.args = type("Args", (), {"shape_batch_size": 64, "self_share": 0.0})()
    people = [-1, 0, 0, 1, 1, 1]  # face 0 alone: pair rows 0..4 are faces 1..5
    items = [FaceItem(Path(f"{n}.jpg"), person, "train", "lfw") for n, person in enumerate(people)]
    landmarks = np.random.default_rng(0).uniform(40, 80, (len(people), 68, 2))
    task.index_faces(items, AlignedFaces.from_arrays(items, "reenactor", 32, np.zeros((len(people), 64, 64, 3), np.uint8), landmarks))
    task.aifd, task.pair_codes = object(), torch.arange(1, 6, dtype=torch.float32)[:, None] * 10  # code = 10 x the face's number
    index, codes = task._shape_batch(type("Ctx", (), {"device": torch.device("cpu")})(), torch.Generator().manual_seed(0))
    partner = codes[:, 0].numpy() / 10
    assert set(index) == {1, 2, 3, 4, 5} and not np.any(partner == index)
    assert all(people[int(a)] == people[int(b)] for a, b in zip(index, partner))


def test_mouth_gap_error_sees_the_mouth_opening_only():
    face = torch.from_numpy(np.random.default_rng(0).uniform(0.2, 0.8, (2, 68, 2))).float()
    moved = face + torch.tensor([0.05, -0.02])  # the whole face shifted: the same opening
    opened = face.clone()
    opened[:, [65, 66, 67], 1] += 0.03  # the lower inner lip drops 3 % of the crop
    assert mouth_gap_error(face.flatten(1), moved.flatten(1)) < 1e-6
    assert mouth_gap_error(face.flatten(1), opened.flatten(1)) == pytest.approx(0.03, abs=1e-6)


def test_shape_only_fine_tune_keeps_the_face_generator_and_trains_the_mouth_term(tiny_data, straight_run, tmp_path):
    start, _ = straight_run
    history = train(tiny_data, tmp_path, "--steps", "2", "--init-reenactor", str(start / "reenactor.safetensors"), "--shape-only",
                    "--mouth-weight", "100", "--shape-class-weight", "0.5", "--shape-batch-size", "16")
    assert [r["step"] for r in history] == [1, 2] and all(np.isfinite(r["shape_mouth"]) and "l1" not in r for r in history)
    initial = read_weights(start / "reenactor.safetensors", ("dual_generator_reenactor",)).state_dict
    tuned = read_weights(tmp_path / "reenactor.safetensors", ("dual_generator_reenactor",)).state_dict
    assert all(torch.equal(tuned[k], initial[k]) for k in initial if k.startswith("rfg."))
    assert any(not torch.equal(tuned[k], initial[k]) for k in initial if k.startswith("idsg."))
    assert read_weights(tmp_path / "reenactor.safetensors", ("dual_generator_reenactor",)).provenance["shape_only"] is True
    # Without the file to keep, or with one that does not fill the face generator, it refuses.
    for extra, message in (([], "give the file it comes from"), (["--init-reenactor", str(start / "reenactor.safetensors"), "--source-warp"], "partly untrained")):
        with pytest.raises(AssertionError, match=message):
            train(tiny_data, tmp_path / "refused", "--steps", "1", "--shape-only", *extra)

