"""AgeTransGAN training: the CMP discriminator, the data layouts, the losses (MI included), steps that lower
the losses, the launcher's exported files, resume and DDP. Tiny random models on copies of a fixture face."""
import copy
import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import FIXTURES, ROOT
from age_reenact.agetransgan.convert import load_generator
from age_reenact.agetransgan.discriminator import AgeTransGANDiscriminator
from age_reenact.aifd.encoder import PREPROCESSING as AIFD_PREPROCESSING
from age_reenact.aifd.encoder import AIFDEncoder
from age_reenact.estimator.resnet import AgeResNet
from age_reenact.weights import build_model, read_weights, save_weights
from training.__main__ import build_parser
from training.age_group_data import parse_group, read_group_items
from training.agetransgan import AgeTransGANTask
from training.agetransgan_losses import discriminator_losses, generator_losses
from training.engine import Context, RunConfig

ESTIMATOR = {"block": "basic", "layers": [1, 1, 1, 1], "widths": [8, 16, 32, 64], "stem_width": 8, "num_ages": 102, "norm": "batch"}
ESTIMATOR_PREPROCESSING = {"convention": "agetransgan", "size": 64, "channels": "rgb", "scale": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3, "readout": "median"}
ENCODER = {"depth": [1, 1, 1, 1], "widths": [8, 16, 32, 32], "embedding_dim": 32}
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def setup_files(tmp_path_factory):
    """UTKFace-style faces (one per age) and tiny random frozen networks."""
    root = tmp_path_factory.mktemp("agetransgan")
    faces = root / "faces"
    faces.mkdir()
    for i, age in enumerate((1, 25, 45, 75)):
        shutil.copy(FIXTURES / "astronaut.png", faces / f"{age}_1_0_{i}.png")
    torch.manual_seed(0)
    save_weights(root / "estimator.safetensors", AgeResNet(**ESTIMATOR).state_dict(), "age_resnet", ESTIMATOR, ESTIMATOR_PREPROCESSING)
    save_weights(root / "aifd.safetensors", AIFDEncoder(**ENCODER).state_dict(), "aifd_encoder", ENCODER, AIFD_PREPROCESSING)
    return root


def options(root, out, *extra):
    return ["agetransgan", "--images", str(root / "faces"), "--out", str(out), "--preset", "tiny", "--batch-size", "4", "--log-every", "1",
            "--eval-every", "1000", "--cache-dir", str(root / "cache"), "--estimator", str(root / "estimator.safetensors"),
            "--identity-encoder", str(root / "aifd.safetensors"), "--threads", "1", "--sample-faces", "2", *extra]


def launch(root, out, *extra):
    result = subprocess.run([sys.executable, "-m", "training", *options(root, out, *extra)], cwd=ROOT, capture_output=True, text=True, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()], result.stdout


def test_discriminator_outputs_projection_and_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    d = AgeTransGANDiscriminator(size=64, group=10, width=16, channel_multiplier=1).eval()
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    a, b = torch.eye(10)[[0, 3, 5, 9]], torch.eye(10)[[1, 2, 6, 8]]
    score, logits = d(x, a)
    assert score.shape == (4,) and logits.shape == (4, 10)
    # The label enters by projection, linearly: a soft code scores in between, the classifier ignores it.
    mixed, mixed_logits = d(x, 0.3 * a + 0.7 * b)
    assert torch.allclose(mixed, 0.3 * score + 0.7 * d(x, b)[0], atol=1e-5)
    assert torch.allclose(mixed_logits, logits)
    assert [len(s) for s in AgeTransGANDiscriminator(size=128, width=16, channel_multiplier=1).stages] == [2, 1, 1, 1]
    save_weights(tmp_path / "d.safetensors", d.state_dict(), "agetransgan_discriminator", {"size": 64, "group": 10, "width": 16, "channel_multiplier": 1})
    again = build_model(read_weights(tmp_path / "d.safetensors", "agetransgan_discriminator"))
    assert torch.equal(again(x, a)[0], score)


def test_data_layouts(tmp_path):
    # FFHQ-Aging: labels CSV + the download script's thousands folders; low-confidence rows dropped.
    ffhq = tmp_path / "ffhq"
    for number in (5, 69001):
        (ffhq / f"{number // 1000 * 1000:05d}").mkdir(parents=True, exist_ok=True)
        (ffhq / f"{number // 1000 * 1000:05d}" / f"{number:05d}.png").touch()
    with open(tmp_path / "ffhq_aging_labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_number", "age_group", "age_group_confidence", "gender"])
        writer.writerows([[5, "70-120", 0.9, "male"], [6, "3-6", 0.3, "male"], [69001, "20-29", 1.0, "female"]])
    items = read_group_items(ffhq, tmp_path / "ffhq_aging_labels.csv", split=None)
    assert [(i.path.name, i.group, i.split) for i in items] == [("00005.png", 9, "train"), ("69001.png", 5, "test")]
    assert items[0].path.is_file()
    # The relabel CSV: group column wins, rows without a face are skipped, no split column = train.
    with open(tmp_path / "relabel.csv", "w", newline="") as handle:
        handle.write("file,age,group,reason\na.png,33.5,30-39,\nb.png,,,no face found\nc.png,71,,\n")
    assert [(i.path.name, i.group, i.split) for i in read_group_items(tmp_path, tmp_path / "relabel.csv")] == [("a.png", 6, "train"), ("c.png", 9, "train")]
    # LATS-style group folders at any depth, and UTKFace names.
    for folder in ("males/train0-2", "males/test70-120", "females/train15-19"):
        (tmp_path / "lats" / folder).mkdir(parents=True)
        (tmp_path / "lats" / folder / "x.png").touch()
    assert sorted(i.group for i in read_group_items(tmp_path / "lats")) == [0, 4]
    assert [i.group for i in read_group_items(tmp_path / "lats", split="test")] == [9]
    (tmp_path / "utk").mkdir()
    (tmp_path / "utk" / "8_0_0_x.jpg").touch()
    assert [i.group for i in read_group_items(tmp_path / "utk")] == [2]
    assert parse_group("70+") == parse_group("70-120") == 9
    with pytest.raises(ValueError, match="not an age group"):
        parse_group("20-25")


def tiny_task(setup_files, tmp_path, seed=0, **overrides):
    args = build_parser().parse_args(options(setup_files, tmp_path / "run"))
    for key, value in overrides.items():
        setattr(args, key, value)
    ctx = Context(RunConfig(out_dir=str(tmp_path / "run"), steps=2, batch_size=4, bf16=False))
    torch.manual_seed(seed)
    task = AgeTransGANTask(args)
    task.setup(ctx)
    return task, ctx


def test_mi_loss_is_zero_for_identical_inputs_and_reaches_the_generator(setup_files, tmp_path):
    task, ctx = tiny_task(setup_files, tmp_path)
    real = task.faces.crops([0, 1, 2, 3]) * 2 - 1
    assert task.mi(real, real).item() == pytest.approx(0.0, abs=1e-6)
    groups = task.face_groups[:4]
    target, noise = task.draw(groups, torch.Generator().manual_seed(0))
    losses, _ = generator_losses(task.g, task.d, real, groups, target, noise, task.estimator, task.mi, 10)
    assert losses["mi"].item() > 1e-3
    losses["mi"].backward()
    grads = [p.grad.abs().sum() for p in task.g.parameters() if p.grad is not None]
    assert grads and sum(grads) > 0
    assert all(p.grad is None for p in task.mi.parameters())  # E_A stays frozen


@pytest.mark.parametrize("seed", [0, 1])
def test_two_steps_lower_the_losses(setup_files, tmp_path, seed):
    """Each player lowers its losses against the other held where it started."""
    task, ctx = tiny_task(setup_files, tmp_path, seed, lr=0.001)
    real = task.faces.crops([0, 1, 2, 3]) * 2 - 1
    groups = task.face_groups[:4]
    target, noise = task.draw(groups, torch.Generator().manual_seed(1))
    first_d = copy.deepcopy(task.d)
    _, first_fake = generator_losses(task.g, first_d, real, groups, target, noise, None, None, 10)

    def measure():
        g_losses, _ = generator_losses(task.g, first_d, real, groups, target, noise, task.estimator, task.mi, 10)
        d_losses = discriminator_losses(task.d, real, groups, first_fake, target, 10, r1=False)
        return {k: v.item() for k, v in {**g_losses, **d_losses}.items()}

    before = measure()
    for step in range(2):
        ctx.step = step
        task.update(ctx, real, groups, torch.Generator().manual_seed(1))  # the same targets and noise
    after = measure()
    weights = task.weights
    for losses in (before, after):
        losses["g_total"] = sum(losses[k] * getattr(weights, k) for k in ("adversarial", "age_d", "cycle", "age_estimator", "mi"))
        losses["d_total"] = losses["d_adversarial"] + weights.age_d_real * losses["d_age"]
    for name in ("g_total", "d_total", "cycle", "d_adversarial"):
        assert after[name] < before[name], (name, before, after)


def test_launcher_writes_loadable_files_and_resumes(setup_files, tmp_path):
    straight, _ = launch(setup_files, tmp_path / "straight", "--steps", "2")
    launch(setup_files, tmp_path / "resumed", "--steps", "2", "--stop-at", "1")
    assert not (tmp_path / "resumed" / "agetransgan.safetensors").exists()
    resumed, stdout = launch(setup_files, tmp_path / "resumed", "--steps", "2")
    assert "resuming agetransgan at step 1" in stdout
    assert [r["step"] for r in resumed] == [1, 2]
    for key in ("g_total", "d_total", "mi"):
        assert resumed[-1][key] == pytest.approx(straight[-1][key], rel=1e-4)

    out = tmp_path / "straight"
    generator = load_generator(out / "agetransgan.safetensors")
    weights = read_weights(out / "agetransgan.safetensors")
    assert weights.preprocessing["crop_convention"] == "agetransgan" and weights.provenance["mi_loss"] is True
    assert weights.provenance["steps"] == 2 and weights.provenance["loss_weights"]["cycle"] == 10.0
    with torch.no_grad():
        assert generator(torch.zeros(1, 3, 64, 64), torch.eye(10)[:1]).shape == (1, 3, 64, 64)
    assert isinstance(build_model(read_weights(out / "discriminator.safetensors")), AgeTransGANDiscriminator)
    assert (out / "samples" / "step_000002.png").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert -1 <= metrics["sample_age_spearman"] <= 1 and 0 <= metrics["sample_aifd_cosine"] <= 1

    # Fine-tuning: a loaded generator keeps its config; without an encoder the MI loss is off.
    tuned, _ = launch(setup_files, tmp_path / "tuned", "--steps", "1", "--init-generator", str(out / "agetransgan.safetensors"),
                      "--init-discriminator", str(out / "discriminator.safetensors"), "--mi-weight", "0")
    assert "mi" in tuned[0]  # logged for the comparison, not trained on
    assert read_weights(tmp_path / "tuned" / "agetransgan.safetensors").provenance["mi_loss"] is False


def test_ddp_two_processes(setup_files, tmp_path):
    history, _ = launch(setup_files, tmp_path / "ddp", "--steps", "1", "--nproc", "2", "--no-bf16")
    assert history[-1]["step"] == 1 and all(v == v for v in history[-1].values())
    load_generator(tmp_path / "ddp" / "agetransgan.safetensors")
