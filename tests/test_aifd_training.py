"""AIFD encoder training on the shared engine: a few steps on tiny LFW/UTKFace-style folders."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import FIXTURES, ROOT
from age_reenact.aifd.encoder import load_encoder


def make_folders(root):
    lfw, utk = root / "lfw", root / "utk"
    portraits = {"Ann_Person": FIXTURES / "astronaut.png", "Bob_Person": FIXTURES / "einstein.jpg"}
    lfw.mkdir(parents=True)
    with open(lfw / "people.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["person", "images", "split"])
        for person, source in portraits.items():
            writer.writerow([person, 2, "train"])
            (lfw / "images" / person).mkdir(parents=True)
            image = Image.open(source).convert("RGB")
            image.save(lfw / "images" / person / f"{person}_0001.jpg")
            image.transpose(Image.FLIP_LEFT_RIGHT).save(lfw / "images" / person / f"{person}_0002.jpg")
    utk.mkdir()
    with open(utk / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "age", "split"])
        for i, age in enumerate((20, 40, 60)):
            Image.open(FIXTURES / "astronaut.png").convert("RGB").save(utk / f"{age}_1_0_{i}.jpg")
            writer.writerow([f"{age}_1_0_{i}.jpg", age, "train"])
    return lfw, utk


def test_aifd_training_runs_and_exports_a_loadable_encoder(tmp_path):
    lfw, utk = make_folders(tmp_path)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "training", "aifd", "--lfw", str(lfw), "--utkface", str(utk), "--out", str(out),
               "--preset", "tiny", "--steps", "4", "--batch-size", "8", "--log-every", "1", "--lr", "0.01",
               "--no-distill", "--cache-dir", str(tmp_path / "cache"), "--threads", "1", "--eval-every", "1000"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history] == [1, 2, 3, 4]
    assert all(np.isfinite(row[k]) for row in history for k in ("cosface", "age", "adversary"))
    encoder = load_encoder(out / "aifd_encoder.safetensors")
    import torch

    embedding = encoder(torch.rand(2, 3, 112, 112) * 2 - 1)
    assert embedding.shape == (2, 32) and torch.allclose(embedding.norm(dim=1), torch.ones(2), atol=1e-4)
