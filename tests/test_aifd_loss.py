"""MI loss and face similarity with tiny random-weight AIFD encoders on the fixture faces.

With random weights E_A knows nothing about identity, so "the MI loss grows with a face swap" is
checked in the only sense that holds for any smooth encoder: swapping Einstein for the astronaut
raises the loss from 0 to well above what mild changes of the same face cause (pixel noise, contrast,
a 3 px shift).
"""
import pytest
import torch

from age_reenact.aifd import AIFDEncoder, FaceSimilarity, MILoss, encoder_input
from age_reenact.face.crop import crops_from_points, detect_crops, extract_crops
from age_reenact.face.detect import FaceDetector
from age_reenact.face.templates import five_points_from_68
from age_reenact.weights import save_weights

TINY = {"depth": [1, 1, 1, 1], "widths": [16, 32, 64, 128], "embedding_dim": 128}


def tiny_encoder(seed=0, variant="cvpr"):
    torch.manual_seed(seed)
    return AIFDEncoder(**TINY, afd_variant=variant).eval()


@pytest.fixture(scope="module")
def faces(einstein, astronaut):
    """AgeTransGAN-aligned 256 crops, as the generator sees them: [2, 3, 256, 256] in [-1, 1] (Einstein, astronaut)."""
    image, labels = einstein
    crop = crops_from_points(image.shape[1:3], 1, [0], [labels], [five_points_from_68(labels)], "agetransgan", 256)
    other = detect_crops(astronaut, FaceDetector(), "agetransgan", 256)
    crops = torch.cat([extract_crops(image, crop), extract_crops(astronaut, other)])
    return crops.permute(0, 3, 1, 2) * 2 - 1


def test_mi_loss_is_zero_for_identical_faces(faces):
    loss = MILoss(tiny_encoder())
    assert abs(loss(faces, faces).item()) < 1e-6
    assert abs(MILoss(tiny_encoder(), value_range=(0.0, 1.0))(faces * 0.5 + 0.5, faces * 0.5 + 0.5).item()) < 1e-6


@pytest.mark.parametrize("seed,variant", [(0, "cvpr"), (1, "tpami"), (2, "cvpr"), (3, "tpami")])
def test_mi_loss_grows_with_a_face_swap(faces, seed, variant):
    loss = MILoss(tiny_encoder(seed, variant))
    source, swapped = faces[:1], faces[1:]
    generator = torch.Generator().manual_seed(seed)
    same_face = [
        (source + 0.03 * torch.randn(source.shape, generator=generator)).clamp(-1, 1),
        source * 0.9 + 0.05,
        torch.roll(source, 3, dims=3),
    ]
    with torch.no_grad():
        swap = loss(source, swapped).item()
        mild = max(loss(source, changed).item() for changed in same_face)
    assert swap > 2 * mild and swap > 0.1, (swap, mild)


def test_mi_loss_gradients_reach_the_target_only(faces):
    encoder = tiny_encoder()
    loss_fn = MILoss(encoder)
    source = faces.flip(0)  # pairs (astronaut, Einstein) and (Einstein, astronaut): a batch of 2
    # A 1024 generator output: the loss resizes it to 112 with antialiasing, differentiably.
    target = torch.nn.functional.interpolate(faces, size=1024, mode="bilinear").requires_grad_(True)
    loss = loss_fn(source, target)
    loss.backward()
    assert 0 < loss.item() <= 2
    assert torch.isfinite(target.grad).all() and target.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in encoder.parameters())
    assert loss_fn(source, target).shape == () and MILoss(encoder, reduction="none")(source, target).shape == (2,)


def test_mi_loss_keeps_the_encoder_frozen_in_training(faces):
    loss_fn = MILoss(tiny_encoder())
    holder = torch.nn.ModuleDict({"mi": loss_fn}).train()
    assert holder.training and not loss_fn.encoder.training
    before = loss_fn.encoder.block1[0].res_layer[0].running_mean.clone()
    loss_fn(faces, faces.flip(0))
    assert torch.equal(before, loss_fn.encoder.block1[0].res_layer[0].running_mean)


def test_mi_loss_runs_under_bf16_autocast(faces):
    loss_fn = MILoss(tiny_encoder())
    target = faces.flip(0).clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(faces, target)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(target.grad).all()
    assert abs(loss.item() - loss_fn(faces, target).item()) < 0.05


def test_encoder_input_maps_ranges_and_sizes():
    grey = torch.full((1, 3, 224, 224), 0.25)
    assert torch.allclose(encoder_input(grey, (0.0, 1.0)), torch.full((1, 3, 112, 112), -0.5))
    assert torch.allclose(encoder_input(grey * 4 - 1, (-1.0, 1.0)), torch.full((1, 3, 112, 112), 0.0), atol=1e-6)
    with pytest.raises(ValueError, match="square"):
        encoder_input(torch.zeros(1, 3, 100, 120))


def test_face_similarity_on_whole_frames_and_aligned_crops(einstein, astronaut, faces):
    similarity = FaceSimilarity(tiny_encoder(), FaceDetector(upsample=2))
    frames = torch.cat([astronaut, torch.flip(astronaut, dims=[2])])
    result = similarity(astronaut, frames, threshold=0.999)
    # The same frame, and its mirror image: flip averaging makes that nearly the same embedding.
    assert result.cosine.shape == (2,) and result.cosine[0] == pytest.approx(1.0, abs=1e-4) and result.cosine[1] > 0.95
    assert result.same[0] and "pair 1: cosine" in result.report()
    # Another person (the largest face of Einstein's frame) scores lower than the mirrored same person.
    other = similarity(einstein[0], astronaut).cosine
    assert other < result.cosine[1]

    aligned = FaceSimilarity(tiny_encoder(), detector=None, flip_average=False)
    crops = faces.permute(0, 2, 3, 1) * 0.5 + 0.5
    result = aligned(crops[:1], crops, threshold=0.999)
    assert result.same == [True, False] and result.cosine[1] < 0.99
    with pytest.raises(ValueError, match="same length"):
        aligned(crops, torch.cat([crops, crops[:1]]))


def test_identity_nodes(pack, tmp_path, monkeypatch, astronaut, faces):
    save_weights(tmp_path / "aifd" / "tiny.safetensors", tiny_encoder().state_dict(), "aifd_encoder", {**TINY, "afd_variant": "cvpr"})
    monkeypatch.setenv("AGE_REENACT_MODELS", str(tmp_path))
    nodes = pack.nodes.NODE_CLASS_MAPPINGS
    loader, compare = nodes["AgeReenactIdentityEncoderLoader"], nodes["AgeReenactFaceSimilarity"]
    assert "tiny.safetensors" in loader.INPUT_TYPES()["required"]["model_name"][0]
    assert all("tooltip" in spec[1] for spec in compare.INPUT_TYPES()["required"].values())
    (model,) = loader().load("tiny.safetensors")

    crops = faces.permute(0, 2, 3, 1) * 0.5 + 0.5
    out = compare().compare(model, crops[:1], crops, "already aligned crops", 1, 0.999, True)
    cosines, verdicts = out["result"]
    assert len(cosines) == 2 and cosines[0] == pytest.approx(1.0, abs=1e-4) and verdicts == ["true", "false"]
    assert "pair 0" in out["ui"]["text"][0]
    assert compare.OUTPUT_IS_LIST == (True, True) and compare.RETURN_TYPES == ("FLOAT", "STRING")

    out = compare().compare(model, astronaut, astronaut, "detect (5 landmarks)", 1, 0.5, False)
    assert out["result"][1] == ["true"]
