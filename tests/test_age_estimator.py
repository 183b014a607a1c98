"""Age estimator: readouts, converters, training on the shared engine (steps, reload, DDP), node, relabel."""
import json
import os
import csv
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import FIXTURES, ROOT, bad_image_files
from age_reenact.estimator.predict import AgeEstimator, readouts
from age_reenact.estimator.resnet import AgeResNet
from age_reenact.estimator.vggface2 import VGGFace2AgeResNet50
from age_reenact.weights import WeightsError, build_model, convert_checkpoint, read_weights, save_weights

TINY = {"block": "basic", "layers": [1, 1, 1, 1], "widths": [8, 16, 32, 64], "stem_width": 8, "num_ages": 102, "norm": "batch"}
PREPROCESSING = {"convention": "agetransgan", "size": 64, "channels": "rgb", "scale": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3, "readout": "median"}


def test_readouts_expectation_median_and_groups():
    logits = torch.full((2, 102), -1e4)
    logits[0, 30] = 0.0
    logits[1, [1, 71]] = 0.0  # half the mass at 1, half at 71
    prediction = readouts(logits, torch.arange(102.0))
    assert prediction.expectation.tolist() == pytest.approx([30.0, 36.0])
    assert prediction.median[0] == pytest.approx(30.0)
    assert prediction.group_probabilities[0, 6] == pytest.approx(1.0)  # 30-39
    assert prediction.group_probabilities[1, [0, 9]].tolist() == pytest.approx([0.5, 0.5])


def official_vggface2_state_dict():
    """Key names and shapes of the lab's Resnet50_ft (paper-systems.md 1.6), built from the naming rule."""
    sd = {}

    def conv_bn(name, cin, cout, k):
        sd[f"{name}.weight"] = torch.randn(cout, cin, k, k) * 0.01
        for suffix, value in (("weight", torch.ones(cout)), ("bias", torch.zeros(cout)), ("running_mean", torch.zeros(cout)), ("running_var", torch.ones(cout))):
            sd[f"{name}_bn.{suffix}"] = value

    conv_bn("conv1_7x7_s2", 3, 64, 7)
    cin = 64
    for stage, blocks, width in ((2, 3, 64), (3, 4, 128), (4, 6, 256), (5, 3, 512)):
        for i in range(1, blocks + 1):
            conv_bn(f"conv{stage}_{i}_1x1_reduce", cin, width, 1)
            conv_bn(f"conv{stage}_{i}_3x3", width, width, 3)
            conv_bn(f"conv{stage}_{i}_1x1_increase", width, width * 4, 1)
            if i == 1:
                conv_bn(f"conv{stage}_{i}_1x1_proj", cin, width * 4, 1)
            cin = width * 4
    sd.update({
        "classifier.weight": torch.zeros(8631, 2048, 1, 1), "classifier.bias": torch.zeros(8631),
        "classage.weight": torch.randn(101, 2048, 1, 1), "classage.bias": torch.zeros(101),
        "classgage.weight": torch.zeros(164, 2048, 1, 1), "classgage.bias": torch.zeros(164),
        "fc.weight": torch.zeros(101, 101), "fc.bias": torch.zeros(101),
    })
    return sd


def test_vggface2_converter_round_trip(tmp_path):
    official = official_vggface2_state_dict()
    torch.save(official, tmp_path / "model_best_loss")
    path = convert_checkpoint("agetransgan_age_estimator", tmp_path / "model_best_loss", tmp_path / "lab.safetensors")
    weights = read_weights(path, "vggface2_age_resnet50")
    assert weights.preprocessing["channels"] == "bgr" and weights.preprocessing["scale"] == 255.0
    model = build_model(weights)
    assert isinstance(model, VGGFace2AgeResNet50)
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, official[key]), key
    assert model(torch.rand(1, 3, 224, 224) * 255).shape == (1, 101)


def test_benchmark_converter_round_trip(tmp_path):
    reference = AgeResNet(block="bottleneck", layers=(3, 4, 6, 3), widths=(64, 128, 256, 512), stem_width=64, num_ages=102)
    official = {"model." + k.removeprefix("backbone."): v for k, v in reference.state_dict().items() if k.startswith("backbone.")}
    official["heads.age.weight"], official["heads.age.bias"] = reference.head.weight.data, reference.head.bias.data
    assert official["heads.age.weight"].shape == (102, 2048)
    torch.save({"epoch": 3, "model_state_dict": official}, tmp_path / "checkpoint_3.pth")
    model = build_model(read_weights(convert_checkpoint("benchmark_age_resnet", tmp_path / "checkpoint_3.pth", tmp_path / "b.safetensors")))
    x = torch.randn(1, 3, 128, 128)
    assert torch.allclose(model(x), reference.eval()(x))


@pytest.fixture(scope="module")
def tiny_faces(tmp_path_factory):
    """A UTKFace-style folder of fixture faces (age first in the name)."""
    folder = tmp_path_factory.mktemp("faces")
    for i, age in enumerate((25, 35, 45, 55)):
        shutil.copy(FIXTURES / "astronaut.png", folder / f"{age}_1_0_{i}.png")
    return folder


def train(tiny_faces, out, *extra):
    command = [sys.executable, "-m", "training", "age_estimator", "--images", str(tiny_faces), "--out", str(out),
               "--preset", "tiny", "--size", "64", "--batch-size", "4", "--log-every", "1", "--eval-every", "1000",
               "--cache-dir", str(tiny_faces.parent / "cache"), "--no-augment", "--dropout", "0", "--threads", "1", *extra]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_training_steps_lower_the_loss_and_export_reloads(tiny_faces, tmp_path):
    history = train(tiny_faces, tmp_path / "run", "--steps", "3", "--lr", "0.01")
    assert history[-1]["loss"] < history[0]["loss"]
    estimator = AgeEstimator.load(tmp_path / "run" / "age_estimator.safetensors")
    again = AgeEstimator.load(tmp_path / "run" / "age_estimator.safetensors")
    crops = torch.rand(3, 64, 64, 3)
    assert torch.equal(estimator.estimate_crops(crops).median, again.estimate_crops(crops).median)
    assert (tmp_path / "run" / "curves.png").is_file() and json.loads((tmp_path / "run" / "metrics.json").read_text())["step"] == 3


def test_resume_continues_from_the_checkpoint(tiny_faces, tmp_path):
    straight = train(tiny_faces, tmp_path / "straight", "--steps", "4")
    train(tiny_faces, tmp_path / "resumed", "--steps", "4", "--stop-at", "2")
    assert not (tmp_path / "resumed" / "age_estimator.safetensors").exists()  # paused, not finished
    resumed = train(tiny_faces, tmp_path / "resumed", "--steps", "4")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert resumed[-1]["loss"] == pytest.approx(straight[-1]["loss"], rel=1e-5)


def test_evaluation_steps_are_logged_even_off_the_logging_cadence(tiny_faces, tmp_path):
    history = train(tiny_faces, tmp_path / "run", "--steps", "4", "--log-every", "3", "--eval-every", "2")
    assert [r["step"] for r in history] == [2, 3, 4]  # eval at 2 and 4, log at 3
    assert all(r["images_per_s"] > 0 for r in history)


def test_ddp_two_processes_match_one(tiny_faces, tmp_path):
    # GroupNorm: BatchNorm statistics are per process by design, so they would differ.
    one = train(tiny_faces, tmp_path / "one", "--steps", "2", "--norm", "group", "--no-bf16")
    two = train(tiny_faces, tmp_path / "two", "--steps", "2", "--norm", "group", "--no-bf16", "--nproc", "2")
    for a, b in zip(one, two):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    # The provenance gives the command as typed, --nproc included (torchrun's workers never see it).
    command = read_weights(tmp_path / "two" / "age_estimator.safetensors").provenance["command"]
    assert command.startswith("python -m training age_estimator") and command.endswith("--nproc 2")


@pytest.fixture(scope="module")
def tiny_estimator_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "age_estimator" / "tiny.safetensors"
    save_weights(path, AgeResNet(**TINY).state_dict(), "age_resnet", TINY, PREPROCESSING)
    return path


def test_estimate_age_node_one_age_per_face_and_ui_text(pack, astronaut, tiny_estimator_file, monkeypatch):
    monkeypatch.setenv("AGE_REENACT_MODELS", str(tiny_estimator_file.parent.parent))
    nodes = pack.NODE_CLASS_MAPPINGS
    assert "tiny.safetensors" in nodes["AgeReenactAgeEstimatorLoader"].INPUT_TYPES()["required"]["model_name"][0]
    (estimator,) = nodes["AgeReenactAgeEstimatorLoader"]().load("tiny.safetensors")
    frames = torch.cat([astronaut, torch.zeros_like(astronaut)])
    out = nodes["AgeReenactEstimateAge"]().estimate(estimator, frames, "largest")
    ages, summary = out["result"]
    assert len(ages) == 2 and np.isfinite(ages[0]) and np.isnan(ages[1])
    assert out["ui"]["text"] == [summary] and "frame 1: no face found" in summary
    _, face_crop = nodes["AgeReenactFaceCrop"]().crop(astronaut, "reenactor", 256, "largest", 0, "error", 0, "68", False)
    again = nodes["AgeReenactEstimateAge"]().estimate(estimator, astronaut, "all", face_crop)
    assert again["result"][0][0] == pytest.approx(ages[0], abs=0.5)


def test_estimator_rejects_other_architectures(tmp_path):
    path = save_weights(tmp_path / "other.safetensors", {"w": torch.zeros(1)}, "agetransgan_generator", {})
    with pytest.raises(WeightsError, match="needs 'age_resnet' or 'vggface2_age_resnet50'"):
        AgeEstimator.load(path)


def test_relabel_writes_and_resumes(tmp_path, tiny_estimator_file):
    from age_reenact.estimator.relabel import relabel_folder

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(FIXTURES / "astronaut.png", folder / "a.png")
    (folder / "broken.jpg").write_bytes(b"x")
    estimator = AgeEstimator.load(tiny_estimator_file)
    out = tmp_path / "labels.csv"
    assert relabel_folder(estimator, folder, out) == 2
    shutil.copy(FIXTURES / "astronaut.png", folder / "b.png")
    assert relabel_folder(estimator, folder, out) == 1  # only the new image
    rows = out.read_text().splitlines()
    assert rows[0] == "file,age,group,reason" and len(rows) == 4
    assert any(r.startswith("broken.jpg,,,") for r in rows)


def test_photo_degradations_keep_shape_and_range_and_do_what_they_say():
    from training.photo_degrade import degrade

    torch.manual_seed(0)
    crops = torch.rand(4, 3, 64, 64)
    assert torch.equal(degrade(crops, None, {}), crops)  # nothing asked, nothing changed
    for setting in ({"downscale": 1.0, "min_size": 16}, {"blur": 1.0, "max_sigma": 1.5}, {"jpeg": 1.0, "quality": (20, 30)}):
        out = degrade(crops, torch.Generator().manual_seed(1), setting)
        assert out.shape == crops.shape and 0.0 <= out.min() and out.max() <= 1.0
        # Noise has all its energy at high frequencies: each degradation removes some of it.
        assert (out[..., 1:] - out[..., :-1]).abs().mean() < 0.9 * (crops[..., 1:] - crops[..., :-1]).abs().mean(), setting


def test_training_on_several_labelled_folders(tiny_faces, tmp_path):
    from age_reenact.labels import labelled_sources

    other = tmp_path / "other"
    (other / "images").mkdir(parents=True)
    shutil.copy(FIXTURES / "astronaut.png", other / "images" / "a.png")
    (other / "labels.csv").write_text("file,age,split\na.png,70,train\n")
    first = tmp_path / "first.csv"
    first.write_text("file,age,split\n" + "".join(f"{p.name},{p.name.split('_')[0]},train\n" for p in sorted(tiny_faces.glob("*.png"))))
    items = labelled_sources([str(tiny_faces), str(other / "images")], [str(first), str(other / "labels.csv")])
    assert [i.age for i in items] == [25, 35, 45, 55, 70]
    with pytest.raises(ValueError, match="one --labels per --images"):
        labelled_sources([str(tiny_faces), str(other / "images")], [str(other / "labels.csv")])
    history = train(tiny_faces, tmp_path / "run", "--labels", str(first), "--images", str(other / "images"), "--labels", str(other / "labels.csv"),
                    "--steps", "2", "--photo-augment")
    assert len(history) == 2


def read_rows(path) -> dict[str, dict]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len({r["file"] for r in rows}) == len(rows), "a file has two rows"
    return {r["file"]: r for r in rows}


def test_relabel_gives_bad_files_a_row_and_reads_every_format(tmp_path, tiny_estimator_file):
    from PIL import Image

    from age_reenact.estimator.relabel import relabel_folder

    folder = tmp_path / "in"
    folder.mkdir()
    reasons = bad_image_files(folder)
    with Image.open(FIXTURES / "astronaut.png") as astronaut:
        for suffix in ("gif", "webp", "tiff", "bmp"):
            astronaut.save(folder / f"astronaut.{suffix}")
    out = tmp_path / "ages.csv"
    assert relabel_folder(AgeEstimator.load(tiny_estimator_file), folder, out) == 7
    rows = read_rows(out)
    assert {name: rows[name]["reason"] for name in reasons} == reasons
    assert all(rows[f"astronaut.{suffix}"]["age"] and not rows[f"astronaut.{suffix}"]["reason"] for suffix in ("gif", "webp", "tiff", "bmp"))


def test_relabel_retries_no_face_rows_when_detection_changes(tmp_path, tiny_estimator_file):
    from PIL import Image

    from age_reenact.estimator.relabel import NO_FACE, relabel_folder, settings_path
    from age_reenact.face.detect import FaceDetector

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(FIXTURES / "astronaut.png", folder / "a.png")
    Image.new("RGB", (64, 64), (128, 128, 128)).save(folder / "blank.png")
    estimator, out = AgeEstimator.load(tiny_estimator_file), tmp_path / "ages.csv"
    assert relabel_folder(estimator, folder, out, FaceDetector(upsample=1)) == 2
    assert relabel_folder(estimator, folder, out, FaceDetector(upsample=1)) == 0  # same settings: nothing to redo
    before = read_rows(out)
    assert before["blank.png"]["reason"] == NO_FACE
    assert relabel_folder(estimator, folder, out, FaceDetector(upsample=0)) == 1  # only the no-face row
    assert read_rows(out) == before and json.loads(settings_path(out).read_text())["detection"]["upsample"] == 0
    assert relabel_folder(estimator, folder, out, FaceDetector(upsample=0)) == 0


def test_relabel_refuses_another_model_unless_forced(tmp_path, tiny_estimator_file):
    from age_reenact.estimator.relabel import SettingsMismatch, relabel_folder, settings_path

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(FIXTURES / "astronaut.png", folder / "a.png")
    out = tmp_path / "ages.csv"
    assert relabel_folder(AgeEstimator.load(tiny_estimator_file), folder, out) == 1
    renamed = shutil.copy(tiny_estimator_file, tmp_path / "renamed.safetensors")
    assert relabel_folder(AgeEstimator.load(renamed), folder, out) == 0  # the same weights under another name
    torch.manual_seed(1)
    other = save_weights(tmp_path / "other.safetensors", AgeResNet(**TINY).state_dict(), "age_resnet", TINY, PREPROCESSING)
    shutil.copy(FIXTURES / "astronaut.png", folder / "b.png")
    with pytest.raises(SettingsMismatch, match=r"1 row\(s\) may come from another model or alignment \(model: renamed.safetensors"):
        relabel_folder(AgeEstimator.load(other), folder, out)
    assert set(read_rows(out)) == {"a.png"}  # refused before writing anything
    assert relabel_folder(AgeEstimator.load(other), folder, out, force=True) == 1
    assert json.loads(settings_path(out).read_text())["model"]["name"] == "other.safetensors"
    settings_path(out).unlink()  # a CSV from before the record existed
    with pytest.raises(SettingsMismatch, match="ages.csv.json, the record of their model and settings, is missing"):
        relabel_folder(AgeEstimator.load(other), folder, out)


def test_relabel_redoes_a_row_cut_off_by_a_kill(tmp_path, tiny_estimator_file):
    from age_reenact.estimator.relabel import relabel_folder

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        shutil.copy(FIXTURES / "astronaut.png", folder / name)
    estimator, out = AgeEstimator.load(tiny_estimator_file), tmp_path / "ages.csv"
    relabel_folder(estimator, folder, out)
    complete = out.read_bytes()
    out.write_bytes(complete[: complete.rindex(b"b.png") + 8])  # killed while writing b's row
    assert relabel_folder(estimator, folder, out) == 1
    assert out.read_bytes() == complete


def test_relabel_ctrl_c_prints_one_line_and_leaves_a_resumable_csv(tmp_path, tiny_estimator_file):
    from PIL import Image

    from age_reenact.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (300, 48, 48, 3), dtype=np.uint8)
    for i, image in enumerate(noise):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    out = tmp_path / "ages.csv"
    command = ["relabel", str(folder), "--out", str(out), "--model", str(tiny_estimator_file)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "age_reenact.cli", *command], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while (not out.is_file() or len(out.read_text().splitlines()) < 4) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == f"age-reenact: interrupted; {out} holds every image done so far; run the same command again to resume"
    done = read_rows(out)
    assert 3 <= len(done) < 300
    assert main(command) == 0
    rows = read_rows(out)
    assert len(rows) == 300 and all(rows[name] == row for name, row in done.items())
