"""The reenact-and-age chain with tiny random models: equal to the single nodes wired by hand, chunking,
progress and cancellation, faceless frames, errors.

Random-weight generators draw no recognisable face, so a detector run on their output finds nothing. To
compare with the hand-wired nodes (which detect again after each stage), the detector is given the
geometry the chain shares between its stages for exactly those generated images (an oracle keyed by the
image bytes); every other image is detected for real.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from age_reenact.agetransgan import AgeTransGAN
from age_reenact.chain import ChainSettings, parse_targets, reenact_and_age
from age_reenact.face.detect import FaceDetector
from age_reenact.reenact import DualGeneratorReenactor, Reenactor
from benchmarks.bench_chain import BUNDLED, TINY, _random_agetransgan, write_models


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def loaded(pack, models, monkeypatch):
    """(reenactor, agetransgan) through the loader nodes, fp32 on the CPU."""
    monkeypatch.setenv("AGE_REENACT_MODELS", str(models))
    nodes = pack.NODE_CLASS_MAPPINGS
    (reenactor,) = nodes["AgeReenactReenactorLoader"]().load(BUNDLED["reenactor"], "none", "fp32", "cpu")
    (ager,) = nodes["AgeReenactAgeTransGANLoader"]().load(BUNDLED["agetransgan"], "cpu", "fp32")
    return reenactor, ager


@pytest.fixture(scope="module")
def source(einstein):
    image, _ = einstein
    small = F.interpolate(image.permute(0, 3, 1, 2), scale_factor=0.6, mode="bilinear", antialias=True).permute(0, 2, 3, 1)
    return small.clamp(0, 1).contiguous()


@pytest.fixture(scope="module")
def driving(astronaut):
    """Three driving frames: a face, the same face mirrored, a face moved and scaled."""
    moved = F.interpolate(astronaut.permute(0, 3, 1, 2), scale_factor=0.8, mode="bilinear", antialias=True)
    moved = F.pad(moved, (0, 512 - moved.shape[-1], 512 - moved.shape[-2], 0)).permute(0, 2, 3, 1)
    return torch.cat([astronaut, astronaut.flip(2), moved]).contiguous()


@pytest.fixture
def oracle(pack, monkeypatch):
    """register(image [H, W, 3], landmarks [68, 2]): detection of that exact image returns that face."""
    module = pack.age_reenact.face.detect
    known: dict[str, list] = {}
    detect = module.FaceDetector.detect

    def key(image: np.ndarray) -> str:
        return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()

    def patched(self, image):
        return known.get(key(image)) or detect(self, image)

    def register(image: torch.Tensor, landmarks: np.ndarray) -> None:
        box = np.concatenate([landmarks.min(0), landmarks.max(0)])
        face = module.Face(box=box, score=1.0, landmarks=landmarks, points5=module.five_points_from_68(landmarks))
        known[key(pack.age_reenact.images.to_uint8(image))] = [face]

    monkeypatch.setattr(module.FaceDetector, "detect", patched)
    return register


def run_chain(pack, reenactor, ager, source, driving, order, targets="20-29, 70+", chunk_size=16, **overrides):
    args = dict(order=order, target_groups=targets, mode="relative", smoothing=0.3, seed=7, chunk_size=chunk_size,
                on_no_face="error", upsample=1, feather=0.06, color_match="mean_std")
    args.update(overrides)
    return pack.NODE_CLASS_MAPPINGS["AgeReenactReenactAndAge"]().run(reenactor, ager, source, driving, **args)


def reenact_node(pack, reenactor, source, driving, on_no_face="error"):
    node = pack.NODE_CLASS_MAPPINGS["AgeReenactReenact"]()
    return node.reenact(reenactor, source, driving, "relative", 0.3, "paste", 16, on_no_face, 1, 0.06, "mean_std")[0]


def age_node(pack, ager, frames, group, on_no_face="error"):
    node = pack.NODE_CLASS_MAPPINGS["AgeReenactAgeTransform"]()
    return node.transform(ager, frames, "group", group, 0.0, 7, False, 4, "largest", 0, on_no_face, 0.06, "mean_std")["result"][0]


def test_reenact_then_age_equals_reenact_node_then_age_transform_node(pack, loaded, source, driving, oracle):
    reenactor, ager = loaded
    out = run_chain(pack, reenactor, ager, source, driving, "reenact_then_age")
    images, mask, face_crop, labels = out["result"]
    assert images.shape == (6, *driving.shape[1:]) and mask.shape == (6, *driving.shape[1:3])
    assert labels.splitlines() == [f"{g}, frame {t}" for g in ("20-29", "70+") for t in range(3)]
    assert out["ui"]["text"] == ["2 target(s) x 3 frame(s): 20-29, 70+ (reenact_then_age)"]

    reenacted = reenact_node(pack, reenactor, source, driving)
    for t in range(3):  # the aged stage finds each reenacted face where the chain knows it is
        oracle(reenacted[t], face_crop.landmarks[t])
    for g, group in enumerate(("20-29", "70+")):
        assert torch.equal(images[3 * g : 3 * g + 3], age_node(pack, ager, reenacted, group))
    assert not torch.equal(images[:3], images[3:])  # the targets differ
    assert (mask.amax(dim=(1, 2)) > 0.99).all()


def test_age_then_reenact_equals_age_transform_node_then_reenact_node(pack, loaded, source, driving, oracle):
    reenactor, ager = loaded
    images, _, face_crop, _ = run_chain(pack, reenactor, ager, source, driving, "age_then_reenact")["result"]
    source_face = FaceDetector().detect(pack.age_reenact.images.to_uint8(source[0]))[0]
    for g, group in enumerate(("20-29", "70+")):
        aged = age_node(pack, ager, source, group)
        oracle(aged[0], source_face.landmarks)  # an aged source keeps the source's geometry
        assert torch.equal(images[3 * g : 3 * g + 3], reenact_node(pack, reenactor, aged, driving))
    # The final faces' geometry is the reenacted one: the same for both targets.
    assert np.array_equal(face_crop.landmarks[:3], face_crop.landmarks[3:])


def test_faceless_frames_pass_through_or_stop_with_the_frame_index(pack, loaded, source, driving):
    reenactor, ager = loaded
    frames = torch.cat([driving[:1], torch.zeros_like(driving[:1]), driving[1:2]])
    no_face = pack.age_reenact.face.crop.NoFaceError  # the pack's own class (imported under the pack's name)
    with pytest.raises(no_face, match="driving frame 1"):
        run_chain(pack, reenactor, ager, source, frames, "reenact_then_age")
    images, mask, face_crop, _ = run_chain(pack, reenactor, ager, source, frames, "reenact_then_age", targets="70+", on_no_face="passthrough")["result"]
    assert torch.equal(images[1], frames[1]) and mask[1].amax() == 0
    assert face_crop.valid.tolist() == [True, False, True]
    with pytest.raises(no_face, match="source image"):
        run_chain(pack, reenactor, ager, torch.zeros_like(source), frames, "age_then_reenact")


@pytest.fixture(scope="module")
def core_models():
    torch.manual_seed(1)
    identity = lambda crops: F.adaptive_avg_pool2d(crops, (8, 8))[:, :1].flatten(1)  # noqa: E731 - any [B, 64] code plugs in
    reenactor = Reenactor(DualGeneratorReenactor(**TINY["reenactor"]), identity)
    return reenactor, AgeTransGAN.create(_random_agetransgan(TINY["agetransgan"]), "cpu", "fp32")


@pytest.mark.parametrize("mode", ["relative", "absolute"])
def test_chunks_progress_and_cancel(core_models, source, driving, mode, monkeypatch):
    reenactor, ager = core_models
    video = torch.cat([driving, torch.zeros_like(driving[:1]), driving[1:2]])  # 5 frames; the 4th has no face
    settings = dict(mode=mode, smoothing=0.5, on_no_face="passthrough", order="reenact_then_age")
    whole = reenact_and_age(reenactor, ager, source, video, ["50-69", "0-2"], ChainSettings(chunk_size=8, **settings))
    batches, calls = [], []
    generate = reenactor.generate
    monkeypatch.setattr(reenactor, "generate", lambda sketches, style, warped=None: batches.append(len(sketches)) or generate(sketches, style, warped))
    chunked = reenact_and_age(reenactor, ager, source, video, ["50-69", "0-2"], ChainSettings(chunk_size=3, **settings),
                              progress=lambda done, total: calls.append((done, total)))
    # Equal up to float rounding: convolutions over a different batch size round differently.
    torch.testing.assert_close(chunked.images, whole.images, rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked.masks, whole.masks, rtol=0, atol=1e-5)
    np.testing.assert_allclose(chunked.face_crops.landmarks, whole.face_crops.landmarks, rtol=0, atol=1e-4)
    # At most a chunk (+ the relative mode's reference frame) is generated at a time.
    assert batches == ([3, 1] if mode == "absolute" else [3, 2])
    assert calls == [(3, 10), (6, 10), (8, 10), (10, 10)]

    def cancel(done, total):
        raise InterruptedError("cancelled")

    with pytest.raises(InterruptedError):
        reenact_and_age(reenactor, ager, source, video, "50-69", ChainSettings(chunk_size=1, **settings), progress=cancel)


def test_targets_and_settings_are_checked(pack):
    validate = pack.NODE_CLASS_MAPPINGS["AgeReenactReenactAndAge"].VALIDATE_INPUTS
    assert validate("30-39, 70+") is True and validate("50+") is True and validate("all") is True
    assert "0-2, 3-6" in validate("80+")
    assert parse_targets("all", 4) == ["15-29", "30-39", "40-49", "50+"]
    assert parse_targets(" 0-2 ;70+ ", 10) == ["0-2", "70+"]
    with pytest.raises(ValueError, match="15-29, 30-39, 40-49, 50\\+"):
        parse_targets("70+", 4)
    with pytest.raises(ValueError, match="order"):
        ChainSettings(order="both").validate()
    with pytest.raises(ValueError, match="smoothing"):
        ChainSettings(smoothing=2.0).validate()


def test_demo_command_writes_results_and_sheet(models, tmp_path, monkeypatch, capsys):
    """The README's main job, on tiny models under the bundled names."""
    from PIL import Image

    from age_reenact import cli

    monkeypatch.setenv("AGE_REENACT_MODELS", str(models))
    assert cli.main(["demo", "--out", str(tmp_path), "--target", "20-29, 70+", "--sheet-size", "96"]) == 0
    assert "20-29, 70+" in capsys.readouterr().out
    assert Image.open(tmp_path / "result_70+.png").size == (512, 512)  # the driver's size
    assert Image.open(tmp_path / "sheet.png").size == (4 * 96, 16 + 96)
    # The default is the absolute mode, with the bundled AIFD encoder; the relative mode needs no identity file.
    absolute = Image.open(tmp_path / "result_70+.png").copy()
    assert cli.main(["demo", "--out", str(tmp_path), "--target", "70+", "--mode", "relative", "--sheet-size", "96"]) == 0
    assert Image.open(tmp_path / "result_70+.png").tobytes() != absolute.tobytes()
    assert cli.main(["demo", "--out", str(tmp_path), "--agetransgan", "missing.safetensors"]) == 1
    assert "missing.safetensors" in capsys.readouterr().err


@pytest.mark.parametrize("source", ["style", "vggface"])
def test_demo_absolute_mode_takes_the_identity_file_its_reenactor_needs(source, tmp_path, monkeypatch, capsys):
    """The bundled AIFD encoder is the default only for reenactors trained on AIFD codes: one that makes its own
    code needs none, an official one is told to give its VGG-Face file."""
    from age_reenact import cli

    reenactor = {**TINY["reenactor"], "identity_source": source, "identity_dim": TINY["reenactor"]["style_dim"] if source == "style" else 4096}
    monkeypatch.setenv("AGE_REENACT_MODELS", str(write_models(tmp_path / "models", {**TINY, "reenactor": reenactor})))
    code = cli.main(["demo", "--out", str(tmp_path / "out"), "--target", "70+", "--sheet-size", "96"])
    if source == "style":
        assert code == 0 and (tmp_path / "out" / "result_70+.png").is_file()
    else:
        assert code == 1 and "--identity-model vggface_fc7.safetensors" in capsys.readouterr().err

