"""AIFD encoder: MTLFace TPAMI checkpoint conversion (official names and shapes), both AFD variants, IO."""
import copy

import pytest
import torch

from age_reenact.aifd import AFD_VARIANTS, AIFDEncoder, AttentionDecomposition, identity_embedding, load_encoder
from age_reenact.aifd.similarity import UNIT
from age_reenact.weights import WeightsError, convert_checkpoint, read_weights, save_weights

TINY = {"depth": [1, 1, 1, 1], "widths": [16, 32, 64, 128], "embedding_dim": 64}
IR50_UNITS, IR50_WIDTHS = (3, 4, 14, 3), (64, 128, 256, 512)


def _bn(prefix, n, state, one_d=False):
    state[f"{prefix}.weight"] = torch.rand(n) + 0.5
    state[f"{prefix}.bias"] = torch.randn(n) * 0.1
    state[f"{prefix}.running_mean"] = torch.randn(n) * 0.1
    state[f"{prefix}.running_var"] = torch.rand(n) + 0.5
    state[f"{prefix}.num_batches_tracked"] = torch.tensor(100)


def official_encoder_state(prefix: str, fsm_width: int) -> dict:
    """MTLFace's IR-50 + fsm + output_layer keys as paper-systems.md §3.2-3.3 lists them (written from the
    documented names and shapes, not from our modules); `fsm_width` 14336 is TPAMI's, 7168 CVPR's."""
    s = {}
    s[f"{prefix}input_layer.0.weight"] = torch.randn(64, 3, 3, 3) * 0.1
    _bn(f"{prefix}input_layer.1", 64, s)
    s[f"{prefix}input_layer.2.weight"] = torch.full((64,), 0.25)
    channels = 64
    for block, (units, width) in enumerate(zip(IR50_UNITS, IR50_WIDTHS), start=1):
        for unit in range(units):
            p = f"{prefix}block{block}.{unit}"
            _bn(f"{p}.res_layer.0", channels, s)
            s[f"{p}.res_layer.1.weight"] = torch.randn(width, channels, 3, 3) * 0.02
            _bn(f"{p}.res_layer.2", width, s)
            s[f"{p}.res_layer.3.weight"] = torch.full((width,), 0.25)
            s[f"{p}.res_layer.4.weight"] = torch.randn(width, width, 3, 3) * 0.02
            _bn(f"{p}.res_layer.5", width, s)
            if channels != width:  # a projection shortcut; equal widths use a key-less max-pool
                s[f"{p}.shortcut_layer.0.weight"] = torch.randn(width, channels, 1, 1) * 0.05
                _bn(f"{p}.shortcut_layer.1", width, s)
            channels = width
    s[f"{prefix}fsm.spatial.0.weight"] = torch.randn(1, 2, 7, 7) * 0.1
    _bn(f"{prefix}fsm.spatial.1", 1, s)
    s[f"{prefix}fsm.channel.0.weight"] = torch.randn(fsm_width // 16, fsm_width, 1, 1) * 0.01
    s[f"{prefix}fsm.channel.2.weight"] = torch.randn(512, fsm_width // 16, 1, 1) * 0.03
    _bn(f"{prefix}fsm.channel.3", 512, s)
    _bn(f"{prefix}output_layer.0", 512, s)
    s[f"{prefix}output_layer.3.weight"] = torch.randn(512, 25088) * 0.006
    s[f"{prefix}output_layer.3.bias"] = torch.zeros(512)
    _bn(f"{prefix}output_layer.4", 512, s)
    return s


def official_age_head_state(prefix: str) -> dict:
    """MTLFace's AgeEstimationModule keys (§3.3), without TPAMI's `expectation` buffer."""
    s = {}
    _bn(f"{prefix}age_output_layer.0", 512, s)
    s[f"{prefix}age_output_layer.2.weight"] = torch.randn(512, 25088) * 0.006
    s[f"{prefix}age_output_layer.2.bias"] = torch.zeros(512)
    s[f"{prefix}age_output_layer.4.weight"] = torch.randn(101, 512) * 0.04
    s[f"{prefix}age_output_layer.4.bias"] = torch.zeros(101)
    s[f"{prefix}group_output_layer.weight"] = torch.randn(7, 101) * 0.1
    s[f"{prefix}group_output_layer.bias"] = torch.zeros(7)
    return s


def official_tpami_state_dict():
    """The released MTLFace state_dict, with a few synthesis keys the converter drops."""
    s = {**official_encoder_state("encoder.", 14336), **official_age_head_state("age_estimator.")}
    s["age_estimator.expectation"] = torch.arange(101).float()
    # Synthesis parts that E_A does not use.
    s["encoder.styles.0.linear.weight"] = torch.zeros(4, 4)
    s["encoder.aging1.router._unit_mapping"] = torch.zeros(7, 800)
    s["encoder.latlayer1.weight"] = torch.zeros(2, 2, 3, 3)
    s["decoder.latent_avg"] = torch.zeros(1, 1, 512)
    return s


def save_official_cvpr_files(folder, iteration: int = 36000):
    """A CVPR training run's `backbone-ITER` and `estimation_network-ITER` (LoggerX, DDP `module.` keys)."""
    backbone, head = official_encoder_state("module.", 7168), official_age_head_state("module.")
    paths = folder / f"backbone-{iteration}", folder / f"estimation_network-{iteration}"
    torch.save(backbone, paths[0])
    torch.save(head, paths[1])
    return paths, backbone, head


def test_tpami_checkpoint_converts_and_loads_strictly(tmp_path):
    torch.manual_seed(0)
    official = official_tpami_state_dict()
    source = tmp_path / "mtlface_checkpoints.tar"
    torch.save(official, source)
    converted = convert_checkpoint("mtlface_tpami", source, tmp_path / "mtlface_tpami.safetensors")

    weights = read_weights(converted, "aifd_encoder")
    assert weights.config == {"depth": [3, 4, 14, 3], "widths": [64, 128, 256, 512], "embedding_dim": 512, "afd_variant": "tpami",
                              "input_size": 112, "num_age_classes": 101, "num_age_groups": 7}
    assert weights.preprocessing["size"] == 112 and weights.preprocessing["range"] == [-1.0, 1.0]
    assert weights.provenance["converter"] == "mtlface_tpami"
    kept = {k for k in official if k.startswith(("encoder.input_layer", "encoder.block", "encoder.fsm", "encoder.output_layer", "age_estimator"))}
    assert set(weights.state_dict) == {k.removeprefix("encoder.") for k in kept}
    assert torch.equal(weights.state_dict["fsm.channel.0.weight"], official["encoder.fsm.channel.0.weight"])

    encoder = load_encoder(converted)  # strict
    faces = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        embedding = encoder(faces)
        age, groups = encoder.estimate_age(faces)
        x_id, x_age = encoder.decompose(faces)
    assert embedding.shape == (2, 512) and torch.allclose(embedding.norm(dim=1), torch.ones(2))
    assert x_id.shape == (2, 512, 7, 7) and torch.allclose(x_id + x_age, encoder.features(faces), atol=1e-5)
    assert ((0 <= age) & (age <= 100)).all() and groups.shape == (2, 7)


def test_converter_rejects_other_checkpoints_clearly(tmp_path):
    torch.save({"backbone.conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="not MTLFace's TPAMI checkpoint"):
        convert_checkpoint("mtlface_tpami", tmp_path / "other.pth", tmp_path / "out.safetensors")
    broken = official_tpami_state_dict()
    broken["encoder.fsm.channel.0.weight"] = torch.zeros(448, 7168, 1, 1)  # a CVPR-shaped fsm
    torch.save(broken, tmp_path / "broken.tar")
    with pytest.raises(WeightsError, match="fsm.channel.0.weight"):
        convert_checkpoint("mtlface_tpami", tmp_path / "broken.tar", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("variant", AFD_VARIANTS)
def test_afd_parts_sum_to_the_features(variant):
    torch.manual_seed(0)
    fsm = AttentionDecomposition(64, variant).eval()
    x = torch.randn(3, 64, 7, 7)
    with torch.no_grad():
        x_id, x_age = fsm(x)
        attention = fsm.attention(x)
    assert torch.allclose(x_id + x_age, x, atol=1e-6)
    assert ((attention > 0) & (attention < 1)).all()
    attended = x_id if variant == "tpami" else x_age  # TPAMI attends to identity, CVPR to age
    assert torch.allclose(attended, x * attention, atol=1e-6)


def test_afd_channel_attention_widths_match_the_two_releases():
    # SPP bins (1, 2, 3) give 14 positions: CVPR sums avg and max pools, TPAMI concatenates them.
    assert AttentionDecomposition(512, "cvpr").channel[0].weight.shape == (448, 7168, 1, 1)
    assert AttentionDecomposition(512, "tpami").channel[0].weight.shape == (896, 14336, 1, 1)
    with pytest.raises(ValueError, match="AFD variant"):
        AttentionDecomposition(512, "eccv")


@pytest.mark.parametrize("variant", AFD_VARIANTS)
def test_tiny_encoder_round_trips_through_safetensors(tmp_path, variant):
    torch.manual_seed(0)
    config = {**TINY, "afd_variant": variant, "input_size": 64}
    model = AIFDEncoder(**config).eval()
    path = save_weights(tmp_path / "tiny.safetensors", model.state_dict(), "aifd_encoder", config)
    loaded = load_encoder(path)
    faces = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(faces), loaded(faces))
        x_id, x_age = loaded.decompose(faces)
    assert torch.allclose(x_id + x_age, loaded.features(faces), atol=1e-6)
    with pytest.raises(ValueError, match="64x64"):
        loaded(torch.zeros(1, 3, 112, 112))


def test_bad_configs_fail_clearly():
    with pytest.raises(ValueError, match="multiple of 16"):
        AIFDEncoder(**TINY, input_size=100)
    with pytest.raises(ValueError, match="IR depth 42"):
        AIFDEncoder(depth=42)
    with pytest.raises(ValueError, match="4 stages"):
        AIFDEncoder(depth=[1, 1, 1], widths=[8, 8, 8])


def test_cvpr_training_files_convert_and_load_strictly(tmp_path):
    torch.manual_seed(0)
    (backbone_file, head_file), backbone, head = save_official_cvpr_files(tmp_path)
    converted = convert_checkpoint("mtlface_cvpr", [backbone_file, head_file], tmp_path / "mtlface_cvpr.safetensors")
    weights = read_weights(converted, "aifd_encoder")
    assert weights.config["afd_variant"] == "cvpr" and weights.config["depth"] == [3, 4, 14, 3]
    assert weights.provenance["converted_from"] == "backbone-36000 + estimation_network-36000"
    assert torch.equal(weights.state_dict["fsm.channel.0.weight"], backbone["module.fsm.channel.0.weight"])
    assert torch.equal(weights.state_dict["age_estimator.group_output_layer.weight"], head["module.group_output_layer.weight"])
    assert torch.equal(weights.state_dict["age_estimator.expectation"], torch.arange(101).float())
    encoder = load_encoder(converted)
    with torch.no_grad():
        age, _ = encoder.estimate_age(torch.rand(1, 3, 112, 112) * 2 - 1)
    assert 0 <= age.item() <= 100


@pytest.mark.parametrize(
    "broken, role",
    [
        (lambda b, h: b.pop("module.block3.13.res_layer.4.weight"), "backbone"),  # missing
        (lambda b, h: b.__setitem__("module.head.kernel", torch.zeros(512, 10)), "backbone"),  # unexpected: the CosFace head
        (lambda b, h: b.__setitem__("module.fsm.channel.0.weight", torch.zeros(896, 14336, 1, 1)), "backbone"),  # TPAMI-shaped
        (lambda b, h: h.__setitem__("module.age_output_layer.2.weight", torch.zeros(512, 4608)), "estimation_network"),  # 48 px shape
    ],
)
def test_cvpr_converter_refuses_mismatches_naming_key_and_file(tmp_path, broken, role):
    torch.manual_seed(0)
    (backbone_file, head_file), backbone, head = save_official_cvpr_files(tmp_path)
    broken(backbone, head)
    torch.save(backbone, backbone_file)
    torch.save(head, head_file)
    with pytest.raises(WeightsError) as error:
        convert_checkpoint("mtlface_cvpr", [backbone_file, head_file], tmp_path / "out.safetensors")
    message = str(error.value)
    assert f"the {role} file" in message and "backbone backbone-36000" in message and "estimation_network estimation_network-36000" in message
    assert any(key in message for key in ("block3.13.res_layer.4.weight", "head.kernel", "fsm.channel.0.weight", "age_output_layer.2.weight"))
    assert not (tmp_path / "out.safetensors").exists()


def test_cvpr_converter_wants_both_files_in_order(tmp_path):
    (backbone_file, head_file), _, _ = save_official_cvpr_files(tmp_path)
    with pytest.raises(WeightsError, match="takes 2 file"):
        convert_checkpoint("mtlface_cvpr", [backbone_file], tmp_path / "out.safetensors")
    with pytest.raises(WeightsError, match="backbone file first"):
        convert_checkpoint("mtlface_cvpr", [head_file, backbone_file], tmp_path / "out.safetensors")


def test_age_is_flip_averaged_as_mtlface_encode_computes_it():
    torch.manual_seed(0)
    encoder = AIFDEncoder(**TINY, input_size=64).eval()
    faces = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        # MTLFace.encode: the age estimator on each view's x_age, ages and group logits averaged.
        views = [encoder.age_estimator(encoder.decompose(x)[1]) for x in (faces, faces.flip(3))]
        age, groups = encoder.estimate_age(faces)
        single, _ = encoder.estimate_age(faces, flip_average=False)
    assert torch.allclose(age, (views[0][0] + views[1][0]) / 2, atol=1e-5)
    assert torch.allclose(groups, (views[0][2] + views[1][2]) / 2, atol=1e-5)
    assert torch.allclose(single, views[0][0], atol=1e-5)


def test_channels_last_and_bf16_paths_agree_with_plain_fp32():
    torch.manual_seed(0)
    encoder = AIFDEncoder(**TINY, input_size=64).eval()
    plain = AIFDEncoder(**TINY, input_size=64).to(memory_format=torch.contiguous_format).eval()
    plain.load_state_dict(encoder.state_dict())
    assert encoder.input_layer[0].weight.is_contiguous(memory_format=torch.channels_last)
    faces = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        x = plain.input_layer(faces * 2 - 1)  # the official forward: contiguous NCHW throughout
        for stage in (plain.block1, plain.block2, plain.block3, plain.block4):
            x = stage(x)
        reference = torch.nn.functional.normalize(plain.output_layer(plain.fsm(x)[0]), dim=1)
        fp32 = identity_embedding(encoder, faces, UNIT)
        bf16 = identity_embedding(encoder, faces, UNIT, dtype=torch.bfloat16)
        age32, _ = encoder.estimate_age(faces * 2 - 1)
        age16, _ = encoder.estimate_age(faces * 2 - 1, dtype=torch.bfloat16)
        cast = identity_embedding(encoder.to(torch.bfloat16), faces, UNIT)  # bf16 weights, no autocast
    assert fp32.dtype == bf16.dtype == cast.dtype == torch.float32
    assert (fp32 - reference).abs().max() < 1e-5
    assert (fp32 * bf16).sum(1).min() > 0.99 and (fp32 * cast).sum(1).min() > 0.99  # cosines with fp32
    assert (age32 - age16).abs().max() < 1.0


@pytest.mark.parametrize("variant", AFD_VARIANTS)
def test_folded_encoder_gives_the_unfolded_embeddings_and_ages(variant):
    torch.manual_seed(0)
    # Equal widths in block1 (strided and plain max-pool shortcuts), projections after it.
    encoder = AIFDEncoder(depth=[2, 1, 1, 1], widths=[16, 16, 32, 64], embedding_dim=32, afd_variant=variant, input_size=64).eval()
    for module in encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # non-trivial statistics: a fold bug cannot hide
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
    folded = copy.deepcopy(encoder).fold_for_inference()
    faces = torch.rand(4, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        embeddings = encoder(faces)
        assert (folded(faces) - embeddings).abs().max() < 1e-5
        assert (folded(faces[:1]) - embeddings[:1]).abs().max() < 1e-5
        (age, groups), (age0, groups0) = folded.estimate_age(faces), encoder.estimate_age(faces)
        cast = identity_embedding(copy.deepcopy(folded).to(torch.bfloat16), faces)
    # The random age head turns x_age into logits of tens and group logits up to 90: relative tolerance.
    torch.testing.assert_close((age, groups), (age0, groups0), rtol=1e-4, atol=1e-4)
    assert (cast * embeddings).sum(1).min() > 0.99
    # Left: the pre-activation BN of each unit, and the heads'.
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules()) == 5 + 2
    assert not any(p.requires_grad for p in folded.parameters())


def _full_and_identity_only(tmp_path):
    """A tiny trained-layout encoder saved in fp16 as training exports it, and `age-reenact convert aifd_identity` of it."""
    from age_reenact import cli

    torch.manual_seed(0)
    config = {**TINY, "input_size": 64, "num_age_classes": 101, "num_age_groups": 7}
    state = {k: v.half() if v.is_floating_point() else v for k, v in AIFDEncoder(**config).state_dict().items()}
    full = save_weights(tmp_path / "aifd_encoder.safetensors", state, "aifd_encoder", config, {"size": 64}, {"steps": 7})
    slim = tmp_path / "identity.safetensors"
    assert cli.main(["convert", "aifd_identity", str(full), str(slim)]) == 0
    return full, slim


def test_identity_only_file_drops_the_age_head_and_keeps_the_embedding(tmp_path, capsys):
    full, slim = _full_and_identity_only(tmp_path)
    assert "age_estimator" in capsys.readouterr().out  # listed as left out
    source, weights = read_weights(full), read_weights(slim, "aifd_encoder")
    assert weights.config == {**source.config, "age_head": False} and weights.preprocessing == source.preprocessing
    assert set(weights.state_dict) == {k for k in source.state_dict if not k.startswith("age_estimator.")}
    assert all(torch.equal(v, source.state_dict[k]) and v.dtype == torch.float16 for k, v in weights.state_dict.items() if v.is_floating_point())
    assert weights.provenance["converted_from"] == "aifd_encoder.safetensors"
    assert weights.provenance["source_provenance"] == {"aifd_encoder.safetensors": {"steps": 7}}
    assert slim.stat().st_size < full.stat().st_size

    encoder, reference = load_encoder(slim), load_encoder(full)
    assert not encoder.has_age_head and reference.has_age_head
    assert not any(k.startswith("age_estimator") for k in encoder.state_dict())
    faces = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        for flip in (False, True):
            assert torch.equal(identity_embedding(encoder, faces, UNIT, flip), identity_embedding(reference, faces, UNIT, flip))


def test_identity_only_encoder_refuses_ages_naming_the_full_file(tmp_path):
    full, slim = _full_and_identity_only(tmp_path)
    encoder = load_encoder(slim)
    faces = torch.rand(1, 3, 64, 64) * 2 - 1
    for ask in (lambda: encoder.estimate_age(faces), lambda: encoder.age_estimator(encoder.decompose(faces)[1])):
        with pytest.raises(WeightsError, match=r"identity\.safetensors has no age head.*\(aifd_encoder\.safetensors\)"):
            ask()
    with pytest.raises(WeightsError, match="identity-only already"):
        convert_checkpoint("aifd_identity", slim, tmp_path / "again.safetensors")
    with pytest.raises(WeightsError, match="needs 'aifd_encoder'"):
        convert_checkpoint("aifd_identity", save_weights(tmp_path / "other.safetensors", {}, "age_resnet", {}), tmp_path / "x.safetensors")


def test_identity_evaluation_reports_no_age_head_for_an_identity_only_file(tmp_path):
    from age_reenact.evaluation.identity_eval import encoder_outputs, identity_table, probe_maes

    _, slim = _full_and_identity_only(tmp_path)
    encoder = load_encoder(slim)  # fp16 tensors load into the fp32 model
    crops = torch.randint(0, 256, (8, 64, 64, 3), dtype=torch.uint8)
    outputs = encoder_outputs(encoder, crops)
    assert set(outputs) == {"embedding", "identity_part", "age_part"}
    ages = torch.linspace(5, 70, 8)
    maes = probe_maes(outputs, ages, outputs, ages)
    assert "age_head_mae" not in maes and "embedding_probe_mae" in maes
    assert "| age part, the encoder's age head | none (identity-only file) |" in identity_table({"decomposition": maes})
