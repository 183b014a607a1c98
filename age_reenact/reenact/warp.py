"""Thin-plate-spline warp of a face crop from its own landmarks to target landmarks.

The warp-guided face generator (face_generator.py, `source_warp`) takes the source face already moved to the
target landmarks: it keeps the source's skin, hair and features pixel for pixel, and the generator only
corrects what a warp cannot know (an opened mouth, shading, the background the head uncovered).

The spline is fitted backwards, target -> source, so each output pixel reads the source where its point came
from (grid_sample). Besides the 68 landmarks, 12 fixed anchors on the crop's border keep the frame in place.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# Fixed border anchors (normalised crop coordinates): corners and thirds of each edge.
_EDGE = (0.0, 1 / 3, 2 / 3, 1.0)
ANCHORS = torch.tensor(
    [[x, 0.0] for x in _EDGE] + [[x, 1.0] for x in _EDGE] + [[0.0, y] for y in _EDGE[1:3]] + [[1.0, y] for y in _EDGE[1:3]]
)
GRID_STEPS = 32  # the spline's evaluation lattice (per side)
REGULARISATION = 1e-3  # smoothing of the spline: landmark sets with crossed or coincident points still solve


def _kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """TPS radial basis r^2 log r^2 between point sets a [B, N, 2] and b [B, M, 2] -> [B, N, M]."""
    squared = (a[:, :, None] - b[:, None]).pow(2).sum(-1)
    return squared * torch.log(squared.clamp(min=1e-12))


def tps_sampling_grid(target: torch.Tensor, source: torch.Tensor, size: int) -> torch.Tensor:
    """For landmarks target, source [B, K, 2] (0..1 of the crop): grid_sample's grid [B, S, S, 2] that moves
    an image's `source` points onto `target`, with the crop border held in place.

    The spline is solved in float64 and evaluated on at most a GRID_STEPS x GRID_STEPS lattice of pixel centres,
    then interpolated to S x S: the map is smooth, and a full 128 px evaluation cost 1 s per 8 faces here.
    """
    with torch.autocast(target.device.type, enabled=False):  # coordinates in bf16 would be off by a quarter pixel
        return _tps_grid(target.float(), source.float(), size).to(target.dtype)


def _tps_grid(target: torch.Tensor, source: torch.Tensor, size: int) -> torch.Tensor:
    batch = len(target)
    anchors = ANCHORS.to(target)[None].expand(batch, -1, -1)
    control = torch.cat([target, anchors], 1).double()  # where the spline is pinned (output space)
    values = torch.cat([source, anchors], 1).double()  # where those points read from (input space)
    count = control.shape[1]
    affine = torch.cat([torch.ones_like(control[..., :1]), control], -1)  # [B, K, 3]
    system = control.new_zeros(batch, count + 3, count + 3)
    system[:, :count, :count] = _kernel(control, control) + REGULARISATION * torch.eye(count, dtype=control.dtype, device=control.device)
    system[:, :count, count:] = affine
    system[:, count:, :count] = affine.transpose(1, 2)
    rhs = torch.cat([values, values.new_zeros(batch, 3, 2)], 1)
    coefficients = torch.linalg.solve(system, rhs).float()  # [B, K + 3, 2]

    steps = min(size, GRID_STEPS)
    # From the first output pixel's centre to the last's: interpolation between them reproduces affine maps exactly.
    axis = torch.linspace(0.5 / size, 1 - 0.5 / size, steps, dtype=torch.float32, device=target.device)
    pixels = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(1, -1, 2).expand(batch, -1, -1)
    basis = torch.cat([_kernel(pixels, control.float()), torch.ones_like(pixels[..., :1]), pixels], -1)
    mapped = (basis @ coefficients).transpose(1, 2).reshape(batch, 2, steps, steps)  # 0..1 of the input image
    if steps < size:
        mapped = F.interpolate(mapped, size=(size, size), mode="bilinear", align_corners=True)
    return mapped.permute(0, 2, 3, 1) * 2 - 1


def warp_to_landmarks(images: torch.Tensor, source: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Images [B, C, S, S] whose faces have landmarks `source` [B, 68, 2] -> the same images warped so those
    points land on `target` [B, 68, 2]. Landmarks in crop pixels, pixel centres at whole numbers (as the
    detector and the crops give them). Outside the image: its edge pixels."""
    size = images.shape[-1]
    unit = lambda p: (torch.as_tensor(p, dtype=torch.float32, device=images.device) + 0.5) / size  # noqa: E731
    grid = tps_sampling_grid(unit(target), unit(source), size).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
