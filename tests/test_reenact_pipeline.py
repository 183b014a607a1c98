"""The chunked reenactment pipeline and its nodes, with tiny random-weight models."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from age_reenact.face.crop import NoFaceError, crops_from_points
from age_reenact.face.templates import five_points_from_68
from age_reenact.reenact import DualGeneratorReenactor, Reenactor, reenact
from age_reenact.weights import save_weights
from benchmarks.bench_reenactor import synthetic_video

TINY = {"size": 64, "style_dim": 8, "identity_dim": 6, "identity_source": "aifd", "num_identities": 2, "base_channels": 4, "max_conv_dim": 8}


def _identity(crops: torch.Tensor) -> torch.Tensor:
    """A stand-in identity encoder: any callable crops [B, 3, S, S] -> [B, identity_dim] plugs in."""
    return F.adaptive_avg_pool2d(crops, (1, 2)).flatten(1)


@pytest.fixture(scope="module")
def reenactor():
    torch.manual_seed(0)
    return Reenactor(DualGeneratorReenactor(**TINY), _identity)


@pytest.fixture(scope="module")
def small_einstein(einstein):
    """Einstein at 0.6x (faster detection; the HOG detector still finds him)."""
    image, _ = einstein
    small = F.interpolate(image.permute(0, 3, 1, 2), scale_factor=0.6, mode="bilinear", antialias=True).permute(0, 2, 3, 1)
    return small.clamp(0, 1).contiguous()


def _source_crop_landmarks(image, points, size):
    crops = crops_from_points(tuple(image.shape[1:3]), 1, [0], [points], [five_points_from_68(points)], "reenactor", size)
    return crops.crop_landmarks()[0] / size


def test_relative_mode_with_the_source_as_driver_returns_the_source_landmarks(reenactor, einstein):
    image, points = einstein
    result = reenact(reenactor, image, image.expand(3, -1, -1, -1), mode="relative", source_landmarks=points, driving_landmarks=np.repeat(points[None], 3, 0))
    source = _source_crop_landmarks(image, points, TINY["size"])
    assert np.array_equal(result.landmarks, np.repeat(source[None], 3, 0))
    assert result.images.shape == (3, *image.shape[1:]) and result.masks.shape == (3, *image.shape[1:3])
    assert result.sketches.shape == (3, 64, 64, 3) and result.sketches.amax() == 1


def test_relative_mode_cancels_head_motion(reenactor, einstein):
    """A driver that is the source moved around: the aligned crop removes the motion, so nothing changes."""
    image, points = einstein
    video, tracks = synthetic_video(image, points, 20, size=256)
    result = reenact(reenactor, image, video, mode="relative", source_landmarks=points, driving_landmarks=tracks)
    assert np.abs(result.landmarks - _source_crop_landmarks(image, points, TINY["size"])[None]).max() < 1e-6


def test_300_frames_at_256_px_in_chunks(reenactor, einstein, monkeypatch):
    """A long video: generation never sees more than one chunk, progress per chunk, untouched background."""
    image, points = einstein
    video, tracks = synthetic_video(image, points, 300, size=256)  # uint8: converted one chunk at a time
    batches, calls = [], []
    generate = reenactor.generate

    def spy(sketches, style, warped=None):
        batches.append(len(sketches))
        return generate(sketches, style, warped)

    monkeypatch.setattr(reenactor, "generate", spy)
    result = reenact(reenactor, image, video, mode="absolute", smoothing=0.3, source_landmarks=points, driving_landmarks=tracks, chunk_size=16, progress=lambda done, total: calls.append((done, total)))
    assert result.images.shape == (300, 256, 256, 3) and result.images.dtype == torch.float32
    assert max(batches) == 16 and sum(batches) == 300
    assert calls == [(min(stop, 300), 300) for stop in range(16, 316, 16)]
    assert (result.masks.amax(dim=(1, 2)) > 0.99).all()
    background = result.masks == 0
    assert torch.equal(result.images[background], video[background].float() / 255)
    assert np.isfinite(result.landmarks).all()


def test_detection_no_face_frames_and_crops_output(reenactor, small_einstein):
    image = small_einstein
    driving = torch.cat([image, torch.zeros_like(image)])  # the second frame has no face
    with pytest.raises(NoFaceError, match="driving frame 1"):
        reenact(reenactor, image, driving, mode="relative")
    pasted = reenact(reenactor, image, driving, mode="relative", on_no_face="passthrough")
    assert pasted.masks[0].amax() > 0.99 and pasted.masks[1].amax() == 0
    assert torch.equal(pasted.images[1], driving[1])
    assert np.isfinite(pasted.landmarks[0]).all() and np.isnan(pasted.landmarks[1]).all()
    crops = reenact(reenactor, image, driving, mode="absolute", output="crops", on_no_face="passthrough")
    assert crops.images.shape == (2, 64, 64, 3) and crops.masks.shape == (2, 64, 64)
    assert crops.masks[1].amax() == 0 and crops.sketches[1].amax() == 0 and crops.images[1].amax() == 0  # a black frame's centre


def test_absolute_mode_needs_an_identity_code(einstein):
    image, points = einstein
    torch.manual_seed(0)
    bare = Reenactor(DualGeneratorReenactor(**TINY))
    with pytest.raises(ValueError, match="relative mode"):
        reenact(bare, image, image, mode="absolute", source_landmarks=points, driving_landmarks=points[None])
    with pytest.raises(ValueError, match="identity encoder gives"):
        reenact(Reenactor(DualGeneratorReenactor(**TINY), lambda x: x.new_zeros(len(x), 3)), image, image, source_landmarks=points, driving_landmarks=points[None])


def test_bf16_matches_fp32(reenactor, einstein):
    image, points = einstein
    low = Reenactor(reenactor.model, _identity, precision="bf16")
    kwargs = dict(mode="absolute", output="crops", source_landmarks=points, driving_landmarks=points[None])
    assert (reenact(low, image, image, **kwargs).images - reenact(reenactor, image, image, **kwargs).images).abs().mean() < 0.02


def test_nodes(pack, small_einstein, tmp_path, monkeypatch):
    image = small_einstein
    (tmp_path / "reenactor").mkdir()
    torch.manual_seed(0)
    tiny = dict(TINY, identity_source="vggface")
    save_weights(tmp_path / "reenactor" / "tiny.safetensors", DualGeneratorReenactor(**tiny).state_dict(), "dual_generator_reenactor", tiny)
    monkeypatch.setenv("AGE_REENACT_MODELS", str(tmp_path))
    loader = pack.nodes.NODE_CLASS_MAPPINGS["AgeReenactReenactorLoader"]
    node = pack.nodes.NODE_CLASS_MAPPINGS["AgeReenactReenact"]
    for cls in (loader, node):
        inputs = cls.INPUT_TYPES()["required"]
        assert all("tooltip" in options for _, options in inputs.values()), cls
    assert "tiny.safetensors" in loader.INPUT_TYPES()["required"]["model_name"][0]
    (model,) = loader().load("tiny.safetensors", "none", "fp32", "cpu")
    driving = torch.cat([image, image.flip(2)])
    images, mask, sketches = node().reenact(model, image, driving, "relative", 0.3, "paste", 16, "error", 1, 0.06, "none")
    assert images.shape == driving.shape and mask.shape == driving.shape[:3] and sketches.shape == (2, 64, 64, 3)
    crops, _, _ = node().reenact(model, image, driving, "relative", 0.0, "crops", 1, "error", 1, 0.06, "none")
    assert crops.shape == (2, 64, 64, 3)
    with pytest.raises(ValueError, match="relative mode"):
        node().reenact(model, image, driving, "absolute", 0.0, "crops", 1, "error", 1, 0.06, "none")
