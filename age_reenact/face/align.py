"""Similarity alignment and batched affine warping in torch.

Matrices are 2x3, in pixel units with pixel centres at integer coordinates (OpenCV's convention), and map
*source* pixels to *destination* pixels. `warp_affine` samples the source for every destination pixel,
so the same matrix and its `invert_affine` give a crop and its exact geometric inverse.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .templates import CropConvention


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src points to dst (Umeyama)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(covariance)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rotation = u @ np.diag(d) @ vt
    variance = (src_c**2).sum() / len(src)
    scale = float((s * d).sum() / variance) if variance > 0 else 1.0
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def fit_to_convention(points5: np.ndarray, convention: CropConvention, size: int) -> tuple[np.ndarray, int]:
    """Best similarity from 5 face points to one of the convention's templates at `size` px.

    Returns the frame->crop matrix and the chosen template index; the fit with the smallest summed point
    distance wins, as in AgeTransGAN's own alignment.
    """
    best, best_error, best_index = None, math.inf, 0
    for index, template in enumerate(convention.scaled(size)):
        matrix = similarity_transform(points5, template)
        error = float(np.linalg.norm(transform_points(matrix, points5) - template, axis=1).sum())
        if error < best_error:
            best, best_error, best_index = matrix, error, index
    return best, best_index


def matrix_scale(matrix: np.ndarray) -> float:
    """Uniform scale of a similarity matrix (destination px per source px)."""
    return float(math.sqrt(abs(np.linalg.det(np.asarray(matrix)[:, :2]))))


def antialias_factor(matrix: np.ndarray) -> int:
    """The integer box-filter factor `warp_affine` applies before a warp that shrinks by `matrix` (1: none)."""
    return max(1, math.floor(0.5 / matrix_scale(matrix)))


def _normalise(size_hw: tuple[int, int]) -> torch.Tensor:
    """Pixel coords -> grid_sample's [-1, 1] coords (align_corners=False)."""
    h, w = size_hw
    return torch.tensor([[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _with_row(matrix: torch.Tensor) -> torch.Tensor:
    bottom = torch.tensor([0.0, 0.0, 1.0], dtype=matrix.dtype).expand(*matrix.shape[:-2], 1, 3)
    return torch.cat([matrix, bottom], dim=-2)


# Rows of source pooled at a time (rounded to the pool factor): only a band of a uint8 frame is ever float.
POOL_BAND_ROWS = 256


def _as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0 if images.dtype == torch.uint8 else images


def box_filter(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Mean of each factor x factor block of [B, C, H, W] (blocks cut by the right or bottom edge average
    the pixels they hold), as floats; uint8 images are read as 0..1. The source is converted a band of rows
    at a time, so a 24 MP uint8 frame costs its pooled copy and one band, not a 288 MB float copy."""
    b, c, h, w = images.shape
    dtype = torch.float32 if images.dtype == torch.uint8 else images.dtype
    pooled = torch.empty(b, c, -(-h // factor), -(-w // factor), dtype=dtype, device=images.device)
    rows = factor * max(1, POOL_BAND_ROWS // factor)  # whole blocks: the same blocks as pooling at once
    # One band buffer, filled again for every band: with a fresh tensor a band the heap grew by several
    # bands before freed ones were reused (50-60 MiB instead of one 13 MiB band for a face that fills a
    # 24 MP photo).
    buffer = torch.empty(b, c, min(rows, h), w, dtype=dtype, device=images.device)
    for y in range(0, h, rows):
        band = buffer[..., : min(rows, h - y), :]
        band.copy_(images[..., y : y + rows, :])
        if images.dtype == torch.uint8:
            band.div_(255.0)
        part = F.avg_pool2d(band, factor, ceil_mode=True, count_include_pad=False)
        pooled[..., y // factor : y // factor + part.shape[-2], :] = part
    return pooled


def warp_affine(
    images: torch.Tensor,
    matrices: np.ndarray | torch.Tensor,
    out_size: tuple[int, int],
    mode: str = "bicubic",
    antialias: bool = True,
) -> torch.Tensor:
    """Warp a batch [B, C, H, W] with per-image 2x3 source->destination matrices to float [B, C, h, w].

    uint8 images are read as 0..1. Outside the source is black (zeros), as the official crops pad with black.
    When a warp shrinks the image by 4x or more, the source is first box-filtered by half the shrink (an
    integer factor, `box_filter`) so faces in large frames do not alias; a full-factor box filter would blur a
    crop -> paste round trip. Images that share a factor are warped in one batched call. Bicubic (the default)
    keeps a crop -> paste round trip within 0.06 of the input where bilinear twice blurs edges by up to
    0.29; it can overshoot 0..1 slightly, so image callers clamp.
    """
    matrices = torch.as_tensor(np.asarray(matrices), dtype=torch.float64).reshape(-1, 2, 3)
    if matrices.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {matrices.shape[0]} matrices")
    factors = torch.tensor([antialias_factor(m) if antialias else 1 for m in matrices.numpy()], dtype=torch.long)
    dtype = torch.float32 if images.dtype == torch.uint8 else images.dtype
    output = torch.zeros(images.shape[0], images.shape[1], *out_size, dtype=dtype, device=images.device)
    for factor in factors.unique().tolist():
        index = (factors == factor).nonzero().squeeze(1)
        matrix = _with_row(matrices[index])
        # Indexing copies: a batch that shares one factor (a single frame, mostly) is used as it is.
        source = images if len(index) == len(images) else images[index]
        if factor >= 2:
            source = box_filter(source, factor)
            # pooled pixel j covers source pixels factor*j .. factor*j + factor-1, centred at:
            offset = (factor - 1) / 2.0
            to_source = torch.tensor([[factor, 0.0, offset], [0.0, factor, offset], [0.0, 0.0, 1.0]], dtype=torch.float64)
            matrix = matrix @ to_source
        else:
            source = _as_float(source)
        # theta maps normalised destination coords to normalised source coords.
        theta = _normalise(source.shape[-2:]) @ torch.linalg.inv(matrix) @ torch.linalg.inv(_normalise(out_size))
        grid = F.affine_grid(theta[:, :2].to(source.dtype), [len(index), source.shape[1], *out_size], align_corners=False)
        output[index] = F.grid_sample(source, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return output
