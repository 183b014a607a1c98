"""docs/official_models.md end to end: official-layout files under the page's names, every `age-reenact
convert` line of the page run as written, each result loaded with the function its node loads it with,
and run. (Key-by-key refusals and output equality are tests/test_converters_strict.py's.)"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

from age_reenact import cli
from age_reenact.agetransgan.convert import load_generator
from age_reenact.agetransgan.pipeline import AgeTransGAN
from age_reenact.aifd import identity_embedding, load_encoder
from age_reenact.estimator.predict import AgeEstimator
from age_reenact.estimator.resnet import AgeResNet
from age_reenact.reenact.pipeline import load_reenactor
from test_age_estimator import official_vggface2_state_dict
from test_agetransgan import official_shapes
from test_aifd_model import official_tpami_state_dict, save_official_cvpr_files
from test_reenact_models import _random, _vgg_dag, official_idsg, official_rfg

PAGE = Path(__file__).resolve().parents[1] / "docs" / "official_models.md"
IDENTITY_DIM = 4096  # VGG-Face's fc7, which the official shape generator takes (the converter insists)


def page_commands() -> dict[str, list[list[str]]]:
    """`age-reenact convert` lines of the page, by section heading."""
    sections: dict[str, list[list[str]]] = {}
    heading = ""
    for line in PAGE.read_text().splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
        elif line.startswith("age-reenact convert "):
            sections.setdefault(heading, []).append(shlex.split(line)[2:])
    return sections


def _benchmark_checkpoint() -> dict:
    reference = AgeResNet(block="basic", layers=(2, 2, 2, 2), widths=(64, 128, 256, 512), stem_width=64, num_ages=102)
    state = {"model." + k.removeprefix("backbone."): v for k, v in reference.state_dict().items() if k.startswith("backbone.")}
    state |= {"heads.age.weight": reference.head.weight.data, "heads.age.bias": reference.head.bias.data}
    return {"epoch": 3, "model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": []}}


# What each official file holds, by the name the page gives it: the official containers and key names.
OFFICIAL_FILES = {
    "ffhq_10group_910k.pt": lambda: {"g_ema": {k: torch.randn(s) * 0.1 for k, s in official_shapes(64, 10, 32, 1, n_mlp=2).items()}, "g": {}, "d": {}},
    "501500_nets_ema.ckpt": lambda: _random(official_rfg(base=8, widths=(16, 32), style=16, se_widths=(16, 32, 32, 32))),
    "30000_nets_ema.ckpt": lambda: _random(official_idsg(identity_dim=IDENTITY_DIM, num_identities=67)),
    "vgg_face_dag.pth": lambda: _vgg_dag(fc_dim=IDENTITY_DIM),
    "mtlface_checkpoints.tar": official_tpami_state_dict,
    "model_best_loss": official_vggface2_state_dict,
    "checkpoint_3.pth": _benchmark_checkpoint,
}


def _write_official_files(arguments: list[str], folder: Path) -> None:
    for argument in arguments:
        name = Path(argument).name
        if name in OFFICIAL_FILES:
            (folder / argument).parent.mkdir(parents=True, exist_ok=True)
            torch.save(OFFICIAL_FILES[name](), folder / argument)
        elif re.fullmatch(r"(backbone|estimation_network)-\d+", name) and not (folder / argument).exists():
            save_official_cvpr_files(folder, int(name.split("-")[1]))


def _run_agetransgan(paths: dict[str, Path]) -> None:
    runner = AgeTransGAN.create(load_generator(paths["agetransgan"]), "cpu", "fp32")
    out = runner.generate(torch.rand(1, runner.size, runner.size, 3), torch.eye(runner.group_count)[[3]], [0])
    assert out.shape == (1, 64, 64, 3) and torch.isfinite(out).all()


def _run_reenactor(paths: dict[str, Path]) -> None:
    reenactor = load_reenactor(paths["dual_generator"], paths["vggface_dag"])
    crops = torch.rand(1, reenactor.size, reenactor.size, 3)
    assert reenactor.identity(crops).shape == (1, IDENTITY_DIM)
    faces = reenactor.generate(torch.rand(2, 3, reenactor.size, reenactor.size), reenactor.style(crops))
    assert faces.shape == (2, 64, 64, 3) and 0 <= faces.min() and faces.max() <= 1


def _run_mtlface(paths: dict[str, Path]) -> None:
    faces = torch.rand(2, 3, 112, 112)
    for converter in ("mtlface_tpami", "mtlface_cvpr"):
        encoder = load_encoder(paths[converter])
        with torch.no_grad():
            age, groups = encoder.estimate_age(faces * 2 - 1)
            embedding = identity_embedding(encoder, faces, (0.0, 1.0), flip_average=True, dtype=torch.bfloat16)
        assert ((0 <= age) & (age <= 100)).all() and groups.shape == (2, 7)
        assert torch.allclose(embedding.norm(dim=1), torch.ones(2), atol=1e-4)
    full, identity_only = load_encoder(paths["mtlface_tpami"]), load_encoder(paths["aifd_identity"])
    with torch.no_grad():
        assert torch.equal(identity_embedding(identity_only, faces, (0.0, 1.0)), identity_embedding(full, faces, (0.0, 1.0)))
    assert not identity_only.has_age_head


def _run_estimators(paths: dict[str, Path]) -> None:
    for converter in ("agetransgan_age_estimator", "benchmark_age_resnet"):
        estimator = AgeEstimator.load(paths[converter])
        size = estimator.preprocessing["size"]
        prediction = estimator.estimate_crops(torch.rand(1, size, size, 3))
        assert prediction.expectation.shape == (1,) and 0 <= float(prediction.expectation[0]) <= 101


RUNS = {
    "AgeTransGAN": _run_agetransgan,
    "Dual-generator reenactor and VGG-Face": _run_reenactor,
    "MTLFace (AIFD identity encoder and age head)": _run_mtlface,
    "Age estimators": _run_estimators,
}


def test_every_family_of_the_page_is_followed():
    assert set(page_commands()) == set(RUNS)


@pytest.mark.parametrize("section", list(RUNS))
def test_page_commands_convert_official_files_that_the_nodes_load_and_run(tmp_path, monkeypatch, capsys, section):
    torch.manual_seed(0)
    monkeypatch.chdir(tmp_path)  # the page's relative paths, as a user would run them
    paths = {}
    for arguments in page_commands()[section]:
        _write_official_files(arguments[1:-1], tmp_path)
        assert cli.main(["convert", *arguments]) == 0, capsys.readouterr().err
        assert f"wrote {arguments[-1]}" in capsys.readouterr().out
        paths[arguments[0]] = tmp_path / arguments[-1]
    RUNS[section](paths)
