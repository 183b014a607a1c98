"""Converters check at conversion exactly what the loaders check, name the key and the file, and list what
they leave out; a pickle renamed .safetensors is recognised as one."""
from __future__ import annotations

import argparse

import pytest
import torch

from age_reenact import cli
from age_reenact.agetransgan import AgeTransGANGenerator
from age_reenact.estimator.resnet import AgeResNet
from age_reenact.weights import WeightsError, build_model, convert_checkpoint, read_weights
from test_agetransgan import official_shapes
from test_aifd_model import official_tpami_state_dict
from test_reenact_models import _vgg_dag


def _official_agetransgan(path, edit=None) -> dict[str, torch.Tensor]:
    """rosinality's trainer layout: the generator under 'g_ema' beside g, d, their optimisers and args."""
    generator = torch.Generator().manual_seed(2)
    state = {k: torch.randn(shape, generator=generator) * 0.1 for k, shape in official_shapes(64, 10, 32, 1, n_mlp=2).items()}
    if edit:
        edit(state)
    trainer = {"g": {}, "d": {}, "g_optim": {"state": {}, "param_groups": []}, "d_optim": {"state": {}, "param_groups": []}}
    torch.save({"g_ema": state, **trainer, "args": argparse.Namespace(size=64)}, path)
    return state


def test_agetransgan_converts_lists_the_trainer_entries_and_computes_as_the_pack_module(tmp_path, capsys):
    official = _official_agetransgan(tmp_path / "ffhq_10group.pt")
    assert cli.main(["convert", "agetransgan", str(tmp_path / "ffhq_10group.pt"), str(tmp_path / "g.safetensors")]) == 0
    printed = capsys.readouterr().out
    assert "left out" in printed and "args, d, d_optim, g, g_optim" in printed
    weights = read_weights(tmp_path / "g.safetensors")
    assert weights.provenance["left_out"] == ["args", "d", "d_optim", "g", "g_optim"]
    converted = build_model(weights)
    own = AgeTransGANGenerator(**weights.config).eval()
    own.load_state_dict(official)
    image, code = torch.rand(1, 3, 64, 64) * 2 - 1, torch.eye(10)[[3]]
    with torch.no_grad():
        noise = own.make_noise([0])
        assert torch.equal(converted(image, code, noise), own(image, code, noise))


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda s: s.pop("convs.0.conv.modulation.bias"), r"1 missing: convs\.0\.conv\.modulation\.bias"),
        (lambda s: s.update({"convs_ei.7.conv1.0.weight": torch.zeros(1)}), r"1 unexpected: convs_ei\.7\.conv1\.0\.weight"),
        (lambda s: s.update({"final_conv.0.weight": torch.zeros(3, 3)}), r"1 wrong shape: final_conv\.0\.weight: file \(3, 3\)"),
    ],
    ids=["missing", "unexpected", "wrong_shape"],
)
def test_agetransgan_refusals_name_the_key_and_the_file(tmp_path, edit, expected):
    _official_agetransgan(tmp_path / "ffhq_10group.pt", edit)
    with pytest.raises(WeightsError, match=r"^agetransgan \(checkpoint ffhq_10group\.pt\): .*" + expected):
        convert_checkpoint("agetransgan", tmp_path / "ffhq_10group.pt", tmp_path / "g.safetensors")
    assert not (tmp_path / "g.safetensors").exists()


def test_vggface_dag_lists_fc8_and_refuses_unexpected_keys_and_wrong_shapes(tmp_path):
    torch.save(_vgg_dag(fc_dim=32), tmp_path / "vgg_face_dag.pth")
    reports = []
    out = convert_checkpoint("vggface_dag", tmp_path / "vgg_face_dag.pth", tmp_path / "vgg.safetensors", report=reports.append)
    assert reports == ["left out (the source files hold them, the pack does not use them): fc8 (the 2622-way face classifier)"]
    assert read_weights(out).provenance["left_out"] == ["fc8 (the 2622-way face classifier)"]
    for edit, expected in (
        ({"conv6_1.weight": torch.zeros(1)}, r"1 unexpected: conv6_1\.weight"),
        ({"conv3_1.bias": torch.zeros(255)}, r"1 wrong shape: features\.10\.bias: file \(255,\) vs model \(256,\)"),
    ):
        torch.save(_vgg_dag(fc_dim=32) | edit, tmp_path / "bad_dag.pth")
        with pytest.raises(WeightsError, match=r"^vggface_dag \(checkpoint bad_dag\.pth\): .*" + expected):
            convert_checkpoint("vggface_dag", tmp_path / "bad_dag.pth", tmp_path / "bad.safetensors")


def test_benchmark_estimator_lists_the_training_state_and_refuses_unknown_keys(tmp_path):
    reference = AgeResNet(block="basic", layers=(2, 2, 2, 2), widths=(64, 128, 256, 512), stem_width=64, num_ages=102)  # ResNet-18
    official = {"model." + k.removeprefix("backbone."): v for k, v in reference.state_dict().items() if k.startswith("backbone.")}
    official |= {"heads.age.weight": reference.head.weight.data, "heads.age.bias": reference.head.bias.data}
    official |= {"heads.gender.weight": torch.zeros(2, 512), "heads.gender.bias": torch.zeros(2)}
    torch.save({"epoch": 3, "model_state_dict": official, "optimizer_state_dict": {"state": {}, "param_groups": []}}, tmp_path / "checkpoint_3.pth")
    reports = []
    convert_checkpoint("benchmark_age_resnet", tmp_path / "checkpoint_3.pth", tmp_path / "b.safetensors", report=reports.append)
    assert reports[0].endswith("epoch, heads.gender, optimizer_state_dict")
    torch.save({"model_state_dict": official | {"neck.weight": torch.zeros(3)}}, tmp_path / "checkpoint_4.pth")
    with pytest.raises(WeightsError, match=r"^benchmark_age_resnet \(checkpoint checkpoint_4\.pth\): .*1 unexpected: neck\.weight"):
        convert_checkpoint("benchmark_age_resnet", tmp_path / "checkpoint_4.pth", tmp_path / "c.safetensors")


def test_mtlface_tpami_lists_the_synthesis_parts(tmp_path):
    torch.save(official_tpami_state_dict(), tmp_path / "mtlface_checkpoints.tar")
    out = convert_checkpoint("mtlface_tpami", tmp_path / "mtlface_checkpoints.tar", tmp_path / "m.safetensors")
    assert read_weights(out).provenance["left_out"] == ["decoder.latent_avg", "encoder.aging1", "encoder.latlayer1", "encoder.styles"]


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_pickle_renamed_safetensors_says_so_and_how_to_convert(tmp_path, zip_format):
    path = tmp_path / "ffhq_10group_910k.safetensors"
    torch.save({"g_ema": {"w": torch.zeros(2)}}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(WeightsError, match=r"ffhq_10group_910k\.safetensors: a pickled PyTorch checkpoint .*`age-reenact convert <converter> ffhq_10group_910k\.safetensors out\.safetensors`"):
        read_weights(path)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")  # a real safetensors header gone bad stays "corrupt"
    with pytest.raises(WeightsError, match="corrupt or truncated"):
        read_weights(path)
