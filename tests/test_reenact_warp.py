"""The thin-plate-spline warp and the warp-guided face generator (`source_warp`)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from age_reenact.face.crop import extract_crops
from age_reenact.reenact import DualGeneratorReenactor, Reenactor, reenact
from age_reenact.reenact.pipeline import _crops
from age_reenact.reenact.warp import warp_to_landmarks

TINY = {"size": 64, "style_dim": 8, "identity_dim": 8, "identity_source": "style", "num_identities": 2, "base_channels": 4, "max_conv_dim": 8}


def _grid_points(count: int = 68) -> torch.Tensor:
    """68 points spread over the middle of the crop, in no facial order (the warp does not need one)."""
    generator = torch.Generator().manual_seed(1)
    return 0.25 + 0.5 * torch.rand(1, count, 2, generator=generator)


def _dots(points: torch.Tensor, size: int, radius: float = 2.5) -> torch.Tensor:
    """[1, 1, S, S]: a round white dot at each point (0..1 coordinates)."""
    axis = (torch.arange(size) + 0.5) / size
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    distance = ((xs[None] - points[0, :, 0, None, None]) ** 2 + (ys[None] - points[0, :, 1, None, None]) ** 2).sqrt() * size
    return (distance < radius).any(0).float()[None, None]


def test_warp_to_the_same_landmarks_leaves_the_image():
    image = torch.rand(2, 3, 64, 64)
    points = _grid_points().expand(2, -1, -1)
    assert (warp_to_landmarks(image, points, points) - image).abs().max() < 1e-3


def test_warp_carries_each_landmark_to_its_target():
    size = 128
    source = torch.tensor([[[0.4, 0.4], [0.6, 0.4], [0.5, 0.55], [0.42, 0.68], [0.58, 0.68]]])
    target = source + torch.tensor([[[0.05, 0.02], [0.04, -0.03], [-0.03, 0.04], [0.02, 0.05], [-0.04, 0.03]]])
    warped = warp_to_landmarks(_dots(source, size), source * size - 0.5, target * size - 0.5)[0, 0]  # px, centres at whole numbers
    for x, y in target[0].tolist():  # a white dot now sits on each target
        assert warped[int(y * size), int(x * size)] > 0.5
    for x, y in source[0].tolist():  # and has left its source
        assert warped[int(y * size), int(x * size)] < 0.5


def test_warp_by_whole_pixels_moves_the_face_by_them_in_bf16_too():
    """Landmarks in crop pixels: every landmark moved by (3, -2) px, the border anchors held. Images that are
    coordinate ramps read back where each output pixel sampled: inside the landmarks, (x - 3, y + 2)."""
    size = 128
    axis = torch.arange(size, dtype=torch.float32)
    ramps = torch.stack([axis.expand(size, size), axis[:, None].expand(size, size)])[None] / size  # x, y
    source = 40 + 48 * _grid_points()  # px
    with torch.autocast("cpu", dtype=torch.bfloat16):
        warped = warp_to_landmarks(ramps, source, source + torch.tensor([3.0, -2.0]))
    assert warped.dtype == torch.float32
    read = warped[0, :, 55:75, 55:75] * size
    assert (read[0] - (axis[55:75] - 3)).abs().max() < 0.3 and (read[1] - (axis[55:75, None] + 2)).abs().max() < 0.3


def test_bright_pixels_stay_correctable_in_bf16():
    """The logit is taken in fp32: in bf16, 1 - eps rounds to 1 and white pixels would become +inf (no gradient)."""
    rfg = DualGeneratorReenactor(**TINY, source_warp=True).rfg
    torch.nn.init.normal_(rfg.generator.to_rgb[2].weight, std=0.1)
    warped = torch.ones(1, 3, 64, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = rfg.generator(torch.zeros(1, 3, 64, 64), torch.zeros(1, 8), warped)
    out.sum().backward()
    assert torch.isfinite(out).all() and out.max() < 1 and rfg.generator.to_rgb[2].weight.grad.abs().sum() > 0


def test_new_source_warp_generator_returns_the_warped_source_and_folds():
    torch.manual_seed(0)
    rfg = DualGeneratorReenactor(**TINY, source_warp=True).rfg.eval()
    sketch, face, warped = torch.rand(2, 3, 64, 64).round(), torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64) * 0.9 + 0.05
    with torch.no_grad():
        style = rfg.style_encoder(face)
        assert (rfg.generator(sketch, style, warped) - warped).abs().max() < 1e-5
        torch.nn.init.normal_(rfg.generator.to_rgb[2].weight, std=0.1)  # a trained correction
        out = rfg.generator(sketch, style, warped)
        assert (out - warped).abs().max() > 1e-3
        assert (copy.deepcopy(rfg).fold_for_inference().generator(sketch, style, warped) - out).abs().max() < 1e-5
    assert rfg.generator.from_rgb.in_channels == 6
    with pytest.raises(ValueError, match="warped source"):
        rfg.generator(sketch, style)
    with pytest.raises(ValueError, match="warped source"):
        DualGeneratorReenactor(**TINY).rfg.generator(sketch, style, warped)


def test_pipeline_feeds_the_warped_source(einstein):
    """Relative mode with the source as its own driver: the target is the source's landmarks, so a new
    warp-guided model gives the source crop back."""
    image, points = einstein
    torch.manual_seed(0)
    reenactor = Reenactor(DualGeneratorReenactor(**TINY, source_warp=True))
    result = reenact(reenactor, image, image, mode="relative", output="crops", source_landmarks=points, driving_landmarks=points[None])
    plain = reenact(Reenactor(DualGeneratorReenactor(**TINY)), image, image, mode="relative", output="crops", source_landmarks=points, driving_landmarks=points[None])
    expected = extract_crops(image, _crops(tuple(image.shape[1:3]), np.asarray(points)[None], 64))[0]
    assert (result.images[0] - expected).abs().mean() < 0.01
    assert (plain.images[0] - expected).abs().mean() > 0.1  # an untrained plain generator draws no face
