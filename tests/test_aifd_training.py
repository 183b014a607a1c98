"""AIFD encoder training on the shared engine: a few steps on tiny LFW/UTKFace-style folders."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from conftest import FIXTURES, ROOT
from age_reenact.aifd.encoder import load_encoder
from age_reenact.weights import convert_checkpoint, read_weights


def make_folders(root):
    """LFW-style train people Ann/Bob, test people Ann_T/Bob_T (the same photos) with pairs; UTKFace-style
    train faces aged 20, 40, 60 and a val face."""
    lfw, utk = root / "lfw", root / "utk"
    portraits = {"Ann_Person": FIXTURES / "astronaut.png", "Bob_Person": FIXTURES / "einstein.jpg"}
    lfw.mkdir(parents=True)
    with open(lfw / "people.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["person", "images", "split"])
        for person, source in portraits.items():
            for name, split in ((person, "train"), (f"{person}_T", "test")):
                writer.writerow([name, 2, split])
                (lfw / "images" / name).mkdir(parents=True)
                image = Image.open(source).convert("RGB")
                image.save(lfw / "images" / name / f"{name}_0001.jpg")
                image.transpose(Image.FLIP_LEFT_RIGHT).save(lfw / "images" / name / f"{name}_0002.jpg")
    with open(lfw / "pairs_test.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["person_a", "image_a", "person_b", "image_b", "same"])
        writer.writerows([["Ann_Person_T", 1, "Ann_Person_T", 2, 1], ["Ann_Person_T", 1, "Bob_Person_T", 2, 0]])
    utk.mkdir()
    with open(utk / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "age", "split"])
        for i, (age, split) in enumerate(((20, "train"), (40, "train"), (60, "train"), (30, "val"))):
            Image.open(FIXTURES / "astronaut.png").convert("RGB").save(utk / f"{age}_1_0_{i}.jpg")
            writer.writerow([f"{age}_1_0_{i}.jpg", age, split])
    return lfw, utk


def run_training(lfw, utk, out, *extra) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "training", "aifd", "--lfw", str(lfw), "--utkface", str(utk), "--out", str(out),
               "--preset", "tiny", "--steps", "4", "--batch-size", "8", "--log-every", "1", "--lr", "0.01",
               "--no-distill", "--cache-dir", str(out.parent / "cache"), "--threads", "1", "--eval-every", "1000", *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def train(lfw, utk, out, *extra):
    result = run_training(lfw, utk, out, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_aifd_training_runs_and_exports_a_loadable_encoder(tmp_path):
    lfw, utk = make_folders(tmp_path)
    history = train(lfw, utk, tmp_path / "run", "--eval-every", "4")
    assert [row["step"] for row in history] == [1, 2, 3, 4]
    # The evaluation step: LFW test pairs, and age probes on each part for UTKFace's val face.
    assert 0 <= history[-1]["lfw_test_accuracy"] <= 1
    assert all(np.isfinite(history[-1][f"val_{part}_mae"]) for part in ("identity_part_probe", "embedding_probe", "age_part_probe", "age_head"))
    assert all(np.isfinite(row[k]) for row in history for k in ("cosface", "age", "adversary", "embedding_adversary", "decorrelation"))
    encoder = load_encoder(tmp_path / "run" / "aifd_encoder.safetensors")
    embedding = encoder(torch.rand(2, 3, 112, 112) * 2 - 1)
    assert embedding.shape == (2, 32) and torch.allclose(embedding.norm(dim=1), torch.ones(2), atol=1e-4)


def test_aifd_fine_tuning_starts_from_an_encoder_file(tmp_path):
    lfw, utk = make_folders(tmp_path)
    train(lfw, utk, tmp_path / "base", "--steps", "2")
    base = tmp_path / "base" / "aifd_encoder.safetensors"
    # --preset small is ignored: the architecture comes from the file.
    history = train(lfw, utk, tmp_path / "tuned", "--init", str(base), "--preset", "small", "--steps", "2")
    assert all(np.isfinite(row["cosface"]) for row in history)
    before, after = read_weights(base), read_weights(tmp_path / "tuned" / "aifd_encoder.safetensors")
    assert after.config == before.config
    assert after.provenance["init"]["file"] == "aifd_encoder.safetensors" and after.provenance["init"]["steps"] == 2
    assert any(not torch.equal(before.state_dict[k], after.state_dict[k]) for k in before.state_dict)
    # The age loss trains the age head, so an identity-only file is refused before training, naming the full file.
    identity_only = convert_checkpoint("aifd_identity", base, tmp_path / "identity.safetensors")
    refused = run_training(lfw, utk, tmp_path / "from_identity", "--init", str(identity_only), "--steps", "2")
    assert refused.returncode != 0 and "identity.safetensors has no age head" in refused.stderr, refused.stderr[-3000:]
    assert "(aifd_encoder.safetensors)" in refused.stderr and not (tmp_path / "from_identity" / "metrics.jsonl").exists()


def test_age_neutral_teacher_keeps_identity_and_drops_the_age_mean():
    from training.aifd import age_neutral

    generator = torch.Generator().manual_seed(0)
    ages = torch.tensor([3.0, 4, 30, 31, 70, 72] * 20)
    age_direction = torch.zeros(16)
    age_direction[0] = 1
    teacher = torch.nn.functional.normalize(torch.randn(len(ages), 16, generator=generator) + ages[:, None] / 15 * age_direction, dim=1)
    teacher[5] = float("nan")  # a face dlib could not embed stays untaught
    neutral = age_neutral(teacher, ages)
    assert torch.isnan(neutral[5]).all()
    known = torch.isfinite(neutral[:, 0])
    assert torch.allclose(neutral[known].norm(dim=1), torch.ones(int(known.sum())), atol=1e-5)
    young, old = (ages < 10) & known, (ages > 60) & known
    gap_before = teacher[old, 0].mean() - teacher[young, 0].mean()
    gap_after = abs(neutral[old, 0].mean() - neutral[young, 0].mean())
    assert gap_before > 0.5 and gap_after < gap_before / 2  # what is left comes only from renormalising
    assert torch.nn.functional.cosine_similarity(neutral[known], teacher[known]).mean() > 0.5


def test_linear_age_readout_penalises_features_that_carry_age():
    from training.aifd import LinearAgeReadout

    generator = torch.Generator().manual_seed(0)
    ages = torch.randint(0, 90, (64 * 8,), generator=generator).float()
    noise = torch.randn(len(ages), 32, generator=generator)
    carrying, blind = LinearAgeReadout(memory=512, warmup=128), LinearAgeReadout(memory=512, warmup=128)
    assert carrying.penalty(noise[:64], ages[:64]).item() == 0  # nothing to fit on yet
    for k in range(0, len(ages), 64):
        batch = noise[k : k + 64].clone().requires_grad_()
        with_age = batch + torch.cat([ages[k : k + 64, None] / 30, torch.zeros(64, 31)], 1)
        high, low = carrying.penalty(with_age, ages[k : k + 64]), blind.penalty(batch, ages[k : k + 64])
    assert high.item() > 0.1 and high.item() > 3 * low.item()
    high.backward()
    assert torch.isfinite(batch.grad).all() and batch.grad.abs().sum() > 0
