"""AIFD encoder: MTLFace TPAMI checkpoint conversion (official names and shapes), both AFD variants, IO."""
import pytest
import torch

from age_reenact.aifd import AFD_VARIANTS, AIFDEncoder, AttentionDecomposition, load_encoder
from age_reenact.weights import WeightsError, convert_checkpoint, read_weights, save_weights

TINY = {"depth": [1, 1, 1, 1], "widths": [16, 32, 64, 128], "embedding_dim": 64}
IR50_UNITS, IR50_WIDTHS = (3, 4, 14, 3), (64, 128, 256, 512)


def _bn(prefix, n, state, one_d=False):
    state[f"{prefix}.weight"] = torch.rand(n) + 0.5
    state[f"{prefix}.bias"] = torch.randn(n) * 0.1
    state[f"{prefix}.running_mean"] = torch.randn(n) * 0.1
    state[f"{prefix}.running_var"] = torch.rand(n) + 0.5
    state[f"{prefix}.num_batches_tracked"] = torch.tensor(100)


def official_tpami_state_dict():
    """The released MTLFace state_dict as paper-systems.md §3.2-3.4 and §9 list it (written from the
    documented names and shapes, not from our modules), with a few synthesis keys the converter drops."""
    s = {}
    s["encoder.input_layer.0.weight"] = torch.randn(64, 3, 3, 3) * 0.1
    _bn("encoder.input_layer.1", 64, s)
    s["encoder.input_layer.2.weight"] = torch.full((64,), 0.25)
    channels = 64
    for block, (units, width) in enumerate(zip(IR50_UNITS, IR50_WIDTHS), start=1):
        for unit in range(units):
            p = f"encoder.block{block}.{unit}"
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
    s["encoder.fsm.spatial.0.weight"] = torch.randn(1, 2, 7, 7) * 0.1
    _bn("encoder.fsm.spatial.1", 1, s)
    s["encoder.fsm.channel.0.weight"] = torch.randn(896, 14336, 1, 1) * 0.01
    s["encoder.fsm.channel.2.weight"] = torch.randn(512, 896, 1, 1) * 0.03
    _bn("encoder.fsm.channel.3", 512, s)
    _bn("encoder.output_layer.0", 512, s)
    s["encoder.output_layer.3.weight"] = torch.randn(512, 25088) * 0.006
    s["encoder.output_layer.3.bias"] = torch.zeros(512)
    _bn("encoder.output_layer.4", 512, s)
    _bn("age_estimator.age_output_layer.0", 512, s)
    s["age_estimator.age_output_layer.2.weight"] = torch.randn(512, 25088) * 0.006
    s["age_estimator.age_output_layer.2.bias"] = torch.zeros(512)
    s["age_estimator.age_output_layer.4.weight"] = torch.randn(101, 512) * 0.04
    s["age_estimator.age_output_layer.4.bias"] = torch.zeros(101)
    s["age_estimator.group_output_layer.weight"] = torch.randn(7, 101) * 0.1
    s["age_estimator.group_output_layer.bias"] = torch.zeros(7)
    s["age_estimator.expectation"] = torch.arange(101).float()
    # Synthesis parts that E_A does not use.
    s["encoder.styles.0.linear.weight"] = torch.zeros(4, 4)
    s["encoder.aging1.router._unit_mapping"] = torch.zeros(7, 800)
    s["encoder.latlayer1.weight"] = torch.zeros(2, 2, 3, 3)
    s["decoder.latent_avg"] = torch.zeros(1, 1, 512)
    return s


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
