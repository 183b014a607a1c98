"""Dual-generator networks: official names and shapes, converters from the official files, strict loading."""
from __future__ import annotations

import copy

import pytest
import torch

from age_reenact import cli
from age_reenact.reenact import DualGeneratorReenactor, VGGFaceIdentity
from age_reenact.reenact.pipeline import Reenactor, load_reenactor
from age_reenact.weights import WeightsError, build_model, convert_checkpoint, read_weights, save_weights


def _conv(prefix: str, cout: int, cin: int, k: int, bias: bool = True) -> dict[str, tuple]:
    return {f"{prefix}.weight": (cout, cin, k, k), **({f"{prefix}.bias": (cout,)} if bias else {})}


def _linear(prefix: str, cout: int, cin: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (cout, cin), f"{prefix}.bias": (cout,)}


def _norm(prefix: str, c: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,)}


def official_rfg(base: int = 64, widths=(128, 256, 512, 512), style: int = 128, se_widths=(128, 256, 512, 512, 512, 512)) -> dict[str, dict[str, tuple]]:
    """The RFG key -> shape layout of paper-systems.md 2.3, written out from the documented structure."""
    g = {**_conv("from_rgb", base, 3, 3)}
    chans = [base, *widths]
    for i, (cin, cout) in enumerate(zip(chans, chans[1:])):
        g |= _conv(f"encode.{i}.conv1", cin, cin, 3) | _conv(f"encode.{i}.conv2", cout, cin, 3)
        g |= _norm(f"encode.{i}.norm1", cin) | _norm(f"encode.{i}.norm2", cin)
        if cin != cout:
            g |= _conv(f"encode.{i}.conv1x1", cout, cin, 1, bias=False)
    ups = list(zip(chans[::-1], chans[::-1][1:]))  # e.g. 512->512, 512->256, 256->128, 128->64
    blocks = [(chans[-1], chans[-1])] * 4 + ups
    for i, (cin, cout) in enumerate(blocks):
        g |= _conv(f"decode.{i}.conv1", cout, cin, 3) | _conv(f"decode.{i}.conv2", cout, cout, 3)
        g |= _linear(f"decode.{i}.norm1.fc", 2 * cin, style) | _linear(f"decode.{i}.norm2.fc", 2 * cout, style)
        if cin != cout:
            g |= _conv(f"decode.{i}.conv1x1", cout, cin, 1, bias=False)
    g |= _norm("to_rgb.0", base) | _conv("to_rgb.2", 3, base, 1) | _norm("to_rgb_lm.0", base) | _conv("to_rgb_lm.2", 4, base, 1)
    s = {**_conv("shared.0", base, 3, 3)}
    chans = [base, *se_widths]
    for i, (cin, cout) in enumerate(zip(chans, chans[1:]), start=1):
        s |= _conv(f"shared.{i}.conv1", cin, cin, 3) | _conv(f"shared.{i}.conv2", cout, cin, 3)
        if cin != cout:
            s |= _conv(f"shared.{i}.conv1x1", cout, cin, 1, bias=False)
    s |= _conv(f"shared.{len(se_widths) + 2}", chans[-1], chans[-1], 4) | _linear("fc", style, chans[-1])
    return {"generator": g, "style_encoder": s}


def official_idsg(identity_dim: int = 4096, num_identities: int = 1454) -> dict[str, dict[str, tuple]]:
    """The IDSG layout of paper-systems.md 2.2."""
    body = {k: v for i in range(5) for k, v in _linear(f"main.{2 * i}", 136, 136).items()}
    decoder = _linear("main.0", 512, 136 + identity_dim) | {k: v for i in range(1, 5) for k, v in _linear(f"main.{2 * i}", 512, 512).items()}
    return {
        "lm_linear_encoder": body | _linear("main.10", 136, 136),
        "linear_decoder": decoder | _linear("main.10", 136, 512),
        "linear_discriminator": body | _linear("main_2.0", 1, 136),
        "linear_classfier": body | _linear("main_3.0", num_identities, 136),
    }


def _layout(module: torch.nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _millions(module: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in module.parameters()) / 1e6, 2)


def _random(layout: dict[str, dict[str, tuple]]) -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return {net: {k: torch.randn(shape, generator=generator) for k, shape in keys.items()} for net, keys in layout.items()}


@pytest.fixture(scope="module")
def official_model():
    return DualGeneratorReenactor()


def test_official_names_shapes_and_sizes(official_model):
    rfg, idsg = official_rfg(), official_idsg()
    assert _layout(official_model.rfg.generator) == rfg["generator"]
    assert _layout(official_model.rfg.style_encoder) == rfg["style_encoder"]
    for name, layout in idsg.items():
        assert _layout(getattr(official_model.idsg, name)) == layout, name
    # Parameter counts from the reference (official modules instantiated on CPU).
    assert _millions(official_model.rfg.generator) == 34.98
    assert _millions(official_model.rfg.style_encoder) == 20.92
    assert _millions(official_model.idsg.linear_decoder) == 3.29
    assert _millions(official_model.idsg.lm_linear_encoder) == 0.11
    sd = official_model.rfg.generator.state_dict()
    assert sd["decode.0.norm1.fc.weight"].shape == (1024, 128) and sd["decode.7.norm1.fc.weight"].shape == (256, 128)
    assert not any(k.startswith("hpf") for k in sd)  # no high-pass filter module when w_hpf = 0


def test_forward_shapes_and_ranges():
    torch.manual_seed(0)
    model = DualGeneratorReenactor(size=128, style_dim=16, identity_dim=8, num_identities=3, base_channels=8, max_conv_dim=32).eval()
    with torch.no_grad():
        style = model.rfg.style_encoder(torch.rand(2, 3, 128, 128))
        face = model.rfg.generator(torch.rand(2, 3, 128, 128).round(), style)
        landmarks = model.idsg(torch.rand(2, 136), torch.randn(2, 8))
    assert style.shape == (2, 16) and face.shape == (2, 3, 128, 128) and landmarks.shape == (2, 136)
    assert 0 <= face.min() and face.max() <= 1 and 0 <= landmarks.min() and landmarks.max() <= 1
    assert len(model.rfg.generator.encode) == 3 and len(model.rfg.generator.decode) == 7  # down to 16x16


def test_convert_official_checkpoints_and_load_strictly(tmp_path, official_model):
    rfg, idsg = _random(official_rfg()), _random(official_idsg())
    torch.save(rfg, tmp_path / "501500_nets_ema.ckpt")
    # DataParallel-saved copies carry a "module." prefix; the converter strips it.
    torch.save({k: {f"module.{n}": t for n, t in sd.items()} for k, sd in idsg.items()}, tmp_path / "30000_nets_ema.ckpt")
    out = convert_checkpoint("dual_generator", [tmp_path / "501500_nets_ema.ckpt", tmp_path / "30000_nets_ema.ckpt"], tmp_path / "dg.safetensors")
    weights = read_weights(out, "dual_generator_reenactor")
    assert weights.config == {"size": 256, "style_dim": 128, "identity_dim": 4096, "identity_source": "vggface", "num_identities": 1454, "base_channels": None, "max_conv_dim": 512}
    assert weights.preprocessing["crop_convention"] == "reenactor"
    assert weights.provenance["converted_from"] == "501500_nets_ema.ckpt + 30000_nets_ema.ckpt"
    model = build_model(weights)  # strict
    assert torch.equal(model.rfg.generator.decode[3].norm2.fc.weight, rfg["generator"]["decode.3.norm2.fc.weight"])
    assert torch.equal(model.rfg.style_encoder.fc.bias, rfg["style_encoder"]["fc.bias"])
    assert torch.equal(model.idsg.linear_classfier.main_3[0].weight, idsg["linear_classfier"]["main_3.0.weight"])
    assert set(model.state_dict()) == set(weights.state_dict)
    assert {k.split(".")[0] for k in weights.state_dict} == {"idsg", "rfg"}


def _small_official_files(tmp_path, **extra_rfg_networks):
    """A 64 px official pair of CheckpointIO files (RFG, IDSG), optionally with more RFG networks."""
    small = _random(official_rfg(base=8, widths=(16, 32), style=16, se_widths=(16, 32, 32, 32)))
    torch.save(small | extra_rfg_networks, tmp_path / "rfg.ckpt")
    torch.save(_random(official_idsg(num_identities=67)), tmp_path / "idsg.ckpt")
    return small


def test_converter_reads_config_from_shapes_lists_left_out_networks_and_needs_both_files(tmp_path, capsys):
    small = _small_official_files(tmp_path, mlp={"0.weight": torch.randn(16, 8)})  # the id-embedding variant's network
    assert cli.main(["convert", "dual_generator", str(tmp_path / "rfg.ckpt"), str(tmp_path / "idsg.ckpt"), str(tmp_path / "small.safetensors")]) == 0
    printed = capsys.readouterr().out
    assert "left out" in printed and "rfg mlp" in printed and "small.safetensors" in printed
    weights = read_weights(tmp_path / "small.safetensors")
    assert weights.provenance["left_out"] == ["rfg mlp"]
    model = build_model(weights)
    assert (model.size, model.style_dim, model.identity_dim) == (64, 16, 4096)
    assert model.idsg.linear_classfier.main_3[0].out_features == 67
    # The converted model computes exactly what the official tensors, loaded into the pack's own modules, compute.
    own = DualGeneratorReenactor(**weights.config).eval()
    own.rfg.generator.load_state_dict(small["generator"])
    own.rfg.style_encoder.load_state_dict(small["style_encoder"])
    sketch, face = torch.rand(1, 3, 64, 64).round(), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.rfg.generator(sketch, model.rfg.style_encoder(face)), own.rfg.generator(sketch, own.rfg.style_encoder(face)))
    with pytest.raises(WeightsError, match=r"takes 2 file\(s\) \(rfg, idsg"):
        convert_checkpoint("dual_generator", tmp_path / "rfg.ckpt", tmp_path / "x.safetensors")
    with pytest.raises(WeightsError, match=r"rfg idsg\.ckpt, idsg rfg\.ckpt\): the rfg file lacks the networks \['generator', 'style_encoder'\]"):
        convert_checkpoint("dual_generator", [tmp_path / "idsg.ckpt", tmp_path / "rfg.ckpt"], tmp_path / "x.safetensors")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda rfg, idsg: rfg["generator"].pop("decode.1.conv2.bias"), r"1 missing: rfg\.generator\.decode\.1\.conv2\.bias"),
        (lambda rfg, idsg: idsg["linear_decoder"].update({"main.12.weight": torch.zeros(1)}), r"1 unexpected: idsg\.linear_decoder\.main\.12\.weight"),
        (lambda rfg, idsg: rfg["style_encoder"].update({"fc.bias": torch.zeros(15)}), r"1 wrong shape: rfg\.style_encoder\.fc\.bias: file \(15,\) vs model \(16,\)"),
        (lambda rfg, idsg: rfg["generator"].pop("from_rgb.weight"), r"'from_rgb\.weight' is missing"),
    ],
    ids=["missing", "unexpected", "wrong_shape", "missing_config_key"],
)
def test_dual_generator_refusals_name_the_key_and_the_files(tmp_path, edit, expected):
    _small_official_files(tmp_path)
    rfg, idsg = (torch.load(tmp_path / name, weights_only=True) for name in ("rfg.ckpt", "idsg.ckpt"))
    edit(rfg, idsg)
    torch.save(rfg, tmp_path / "rfg.ckpt")
    torch.save(idsg, tmp_path / "idsg.ckpt")
    with pytest.raises(WeightsError, match=r"^dual_generator \(rfg rfg\.ckpt, idsg idsg\.ckpt\): .*" + expected):
        convert_checkpoint("dual_generator", [tmp_path / "rfg.ckpt", tmp_path / "idsg.ckpt"], tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def _vgg_dag(fc_dim: int) -> dict[str, torch.Tensor]:
    """A vgg_face_dag.pth-style state dict (pytorch-mcn names), fc6 stored as a 7x7 convolution."""
    generator = torch.Generator().manual_seed(1)
    sd, cin = {}, 3
    for block, (count, width) in enumerate(((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)), start=1):
        for i in range(1, count + 1):
            sd[f"conv{block}_{i}.weight"] = torch.randn(width, cin, 3, 3, generator=generator) * 0.05
            sd[f"conv{block}_{i}.bias"] = torch.zeros(width)
            cin = width
    sd["fc6.weight"], sd["fc6.bias"] = torch.randn(fc_dim, 512, 7, 7, generator=generator) * 0.01, torch.zeros(fc_dim)
    sd["fc7.weight"], sd["fc7.bias"] = torch.randn(fc_dim, fc_dim, generator=generator) * 0.1, torch.zeros(fc_dim)
    sd["fc8.weight"], sd["fc8.bias"] = torch.randn(2622, fc_dim, generator=generator), torch.zeros(2622)
    return sd


def test_vggface_converter_torchvision_layout(tmp_path):
    dag = _vgg_dag(fc_dim=32)
    torch.save(dag, tmp_path / "vgg_face_dag.pth")
    out = convert_checkpoint("vggface_dag", tmp_path / "vgg_face_dag.pth", tmp_path / "vggface.safetensors")
    weights = read_weights(out, "vggface_fc7")
    convs = sorted({int(k.split(".")[1]) for k in weights.state_dict if k.startswith("features.")})
    assert convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # torchvision VGG16 indices
    assert sorted(k for k in weights.state_dict if k.startswith("classifier")) == ["classifier.0.bias", "classifier.0.weight", "classifier.3.bias", "classifier.3.weight"]
    model = build_model(weights)
    assert isinstance(model, VGGFaceIdentity) and model.output_dim == 32
    assert torch.equal(model.features[28].weight, dag["conv5_3.weight"])
    assert torch.equal(model.classifier[0].weight, dag["fc6.weight"].reshape(32, -1))
    with torch.no_grad():
        code = model(torch.rand(2, 3, 64, 64))
    assert code.shape == (2, 32) and (code >= 0).all()  # after the fc7 ReLU


def test_load_reenactor_checks_the_identity_file(tmp_path):
    torch.manual_seed(0)
    tiny = {"size": 64, "style_dim": 8, "identity_dim": 32, "identity_source": "vggface", "num_identities": 2, "base_channels": 4, "max_conv_dim": 8}
    save_weights(tmp_path / "dg.safetensors", DualGeneratorReenactor(**tiny).state_dict(), "dual_generator_reenactor", tiny)
    save_weights(tmp_path / "vgg.safetensors", VGGFaceIdentity(fc_dim=32).state_dict(), "vggface_fc7", {"fc_dim": 32})
    save_weights(tmp_path / "vgg16.safetensors", VGGFaceIdentity(fc_dim=16).state_dict(), "vggface_fc7", {"fc_dim": 16})
    reenactor = load_reenactor(tmp_path / "dg.safetensors", tmp_path / "vgg.safetensors")
    assert reenactor.identity(torch.rand(1, 64, 64, 3)).shape == (1, 32)
    with pytest.raises(WeightsError, match="16-d codes"):
        load_reenactor(tmp_path / "dg.safetensors", tmp_path / "vgg16.safetensors")
    with pytest.raises(WeightsError, match="vggface_fc7"):
        load_reenactor(tmp_path / "dg.safetensors", tmp_path / "dg.safetensors")
    with pytest.raises(ValueError, match="relative mode"):
        load_reenactor(tmp_path / "dg.safetensors").identity(torch.rand(1, 64, 64, 3))


def _randomise_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial instance-norm affines, so that a fold cannot hide behind weight 1, bias 0."""
    for module in model.modules():
        if isinstance(module, torch.nn.InstanceNorm2d) and module.affine:
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.2)
    return model


def test_folded_rfg_computes_the_unfolded_function():
    torch.manual_seed(0)
    # max_conv_dim 16 caps widths: blocks with and without a 1x1 shortcut, downsampling and upsampling.
    rfg = _randomise_norms(DualGeneratorReenactor(size=64, style_dim=16, identity_dim=8, base_channels=8, max_conv_dim=16).rfg.eval())
    folded = copy.deepcopy(rfg).fold_for_inference()
    sketch, face = torch.rand(3, 3, 64, 64).round(), torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        style = rfg.style_encoder(face)
        faces = rfg.generator(sketch, style)
        assert (folded.style_encoder(face) - style).abs().max() < 1e-5
        assert (folded.generator(sketch, style) - faces).abs().max() < 1e-5
        assert (folded.generator(sketch[:1], style[:1]) - faces[:1]).abs().max() < 1e-5
        bf16 = copy.deepcopy(folded).to(torch.bfloat16)
        assert (bf16.generator(sketch, style).float() - faces).abs().max() < 0.05  # fp32 in, cast to the weights' dtype
    kinds = [(type(b.conv1).__name__, b.conv1.stride) for b in (*folded.generator.encode, *folded.generator.decode)]
    assert kinds == [("Conv2d", (2, 2))] * 2 + [("Conv2d", (1, 1))] * 4 + [("ConvTranspose2d", (2, 2))] * 2
    assert not any(p.requires_grad for p in folded.parameters())
    assert folded.generator.from_rgb.weight.is_contiguous(memory_format=torch.channels_last)


def test_load_reenactor_folds_the_rfg_in_its_precision(tmp_path):
    torch.manual_seed(0)
    tiny = {"size": 64, "style_dim": 8, "identity_dim": 8, "identity_source": "style", "num_identities": 2, "base_channels": 4, "max_conv_dim": 8}
    save_weights(tmp_path / "dg.safetensors", _randomise_norms(DualGeneratorReenactor(**tiny)).state_dict(), "dual_generator_reenactor", tiny)
    plain = Reenactor(build_model(read_weights(tmp_path / "dg.safetensors")))
    fp32, bf16 = load_reenactor(tmp_path / "dg.safetensors"), load_reenactor(tmp_path / "dg.safetensors", precision="bf16")
    crops, sketches = torch.rand(2, 64, 64, 3), torch.rand(3, 3, 64, 64).round()
    style = plain.style(crops)
    faces = plain.generate(sketches, style[:1])
    assert (fp32.style(crops) - style).abs().max() < 1e-5 and (fp32.identity(crops) - style).abs().max() < 1e-5
    assert (fp32.generate(sketches, style[:1]) - faces).abs().max() < 1e-5
    assert bf16.model.rfg.generator.from_rgb.weight.dtype == torch.bfloat16 and bf16.model.idsg.linear_decoder.main[0].weight.dtype == torch.float32
    assert (bf16.generate(sketches, style[:1]) - faces).abs().max() < 0.05 and bf16.style(crops).dtype == torch.float32
