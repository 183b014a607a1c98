"""Paste processed face crops back into their frames through the exact inverse warp, with a feathered mask."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..filters import gaussian_blur
from ..images import to_image_batch
from .align import similarity_transform, transform_points, warp_affine
from .crop import FaceCrops, extract_crops
from .mean_shape import MEAN_SHAPE_68
from .templates import five_points_from_68

COLOR_MATCH = ("none", "mean_std")


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Monotone-chain convex hull, counter-clockwise."""
    pts = sorted(map(tuple, points))

    def half(seq):
        hull = []
        for p in seq:
            while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) <= 0:
                hull.pop()
            hull.append(p)
        return hull[:-1]

    return np.array(half(pts) + half(pts[::-1]))


def face_outline(landmarks: np.ndarray, points5: np.ndarray) -> np.ndarray:
    """Polygon around the face including the forehead, from 68 landmarks (or the mean shape fitted to 5 points)."""
    if len(landmarks) != 68 or not np.isfinite(landmarks).all():
        landmarks = transform_points(similarity_transform(five_points_from_68(MEAN_SHAPE_68), points5), MEAN_SHAPE_68)
    eyes = (points5[0] + points5[1]) / 2
    mouth = (points5[3] + points5[4]) / 2
    up = eyes - mouth  # the brows to the hairline is about the eyes-to-mouth distance
    forehead = landmarks[17:27] + 0.9 * up
    return _convex_hull(np.concatenate([landmarks[:17], landmarks[17:27], forehead]))


def crop_masks(crops: FaceCrops, size: int | None = None, feather: float = 0.06) -> torch.Tensor:
    """Soft face masks in crop space [N, 1, size, size]: 1 inside the face outline, fading to 0 at its edge.

    feather: width of the fade as a fraction of the crop size. The fade lies inside the outline and
    inside the crop's borders, so no hard crop edge can show after paste-back.
    """
    from PIL import Image, ImageDraw

    size = size or crops.size
    scale = size / crops.size
    masks = []
    for matrix, landmarks, points5, ok in zip(crops.matrices, crops.landmarks, crops.points5, crops.valid):
        canvas = Image.new("L", (size, size), 0)
        if ok:
            outline = transform_points(matrix, face_outline(landmarks, points5)) * scale
            ImageDraw.Draw(canvas).polygon([tuple(p) for p in outline], fill=255)
        masks.append(torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0))
    mask = torch.stack(masks).unsqueeze(1) if masks else torch.zeros(0, 1, size, size)
    border = torch.zeros_like(mask)
    margin = max(1, int(round(feather * size)))
    border[..., margin:-margin, margin:-margin] = 1.0
    mask = mask * border
    if feather > 0 and len(mask):
        # Blurring then stretching [0.5, 1] to [0, 1] keeps the whole fade inside the shape.
        mask = (2.0 * gaussian_blur(mask, feather * size / 2.0) - 1.0).clamp(0.0, 1.0)
    return mask


def match_colors(processed: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-channel mean/std transfer from `reference` to `processed` inside `mask` (all [N, C, H, W])."""
    weight = mask / mask.sum(dim=(2, 3), keepdim=True).clamp(min=1e-6)

    def stats(x):
        mean = (x * weight).sum(dim=(2, 3), keepdim=True)
        std = (((x - mean) ** 2) * weight).sum(dim=(2, 3), keepdim=True).sqrt().clamp(min=1e-4)
        return mean, std

    p_mean, p_std = stats(processed)
    r_mean, r_std = stats(reference)
    return ((processed - p_mean) / p_std * r_std + r_mean).clamp(0.0, 1.0)


def _footprint(inverse: np.ndarray, size: int, frame_size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Integer frame box (x0, y0, x1, y1) covered by a crop of `size` px mapped through `inverse`."""
    corners = transform_points(inverse, np.array([[-1, -1], [size, -1], [-1, size], [size, size]], dtype=np.float64))
    h, w = frame_size
    x0, y0 = np.floor(corners.min(0)).astype(int)
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 1
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def paste_crops(
    frames: torch.Tensor,
    processed: torch.Tensor,
    crops: FaceCrops,
    feather: float = 0.06,
    color_match: str = "none",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste processed crops ([N, s, s, 3], any s) back into `frames`; returns (IMAGE, MASK [B, H, W])."""
    if color_match not in COLOR_MATCH:
        raise ValueError(f"color_match must be one of {COLOR_MATCH}, got {color_match!r}")
    frames = to_image_batch(frames, "frames")
    processed = to_image_batch(processed, "processed crops")
    if len(processed) != len(crops):
        raise ValueError(f"{len(processed)} processed crop(s) for {len(crops)} face crop record(s); they must match one to one.")
    if processed.shape[1] != processed.shape[2]:
        raise ValueError(f"processed crops must be square, got {processed.shape[2]}x{processed.shape[1]} px.")
    size = processed.shape[1]
    masks = crop_masks(crops, size, feather)
    sources = processed.permute(0, 3, 1, 2)
    if color_match == "mean_std":
        originals = extract_crops(frames, crops).permute(0, 3, 1, 2)
        if originals.shape[-1] != size:
            originals = F.interpolate(originals, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        sources = match_colors(sources, originals, masks)
    out = frames.clone()
    frame_masks = frames.new_zeros(frames.shape[:3])
    scale = np.diag([size / crops.size, size / crops.size, 1.0])
    for row in np.flatnonzero(crops.valid):
        frame = int(crops.frame_index[row])
        to_frame = np.linalg.inv(scale @ np.vstack([crops.matrices[row], [0, 0, 1]]))[:2]
        box = _footprint(to_frame, size, crops.frame_size)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        shifted = to_frame.copy()
        shifted[:, 2] -= (x0, y0)
        rgba = torch.cat([sources[row : row + 1], masks[row : row + 1]], 1)
        warped = warp_affine(rgba, shifted[None], (y1 - y0, x1 - x0))[0].permute(1, 2, 0)
        alpha = warped[..., 3:].clamp(0, 1)
        region = out[frame, y0:y1, x0:x1]
        out[frame, y0:y1, x0:x1] = region * (1 - alpha) + warped[..., :3].clamp(0, 1) * alpha
        frame_masks[frame, y0:y1, x0:x1] = torch.maximum(frame_masks[frame, y0:y1, x0:x1], alpha[..., 0])
    return out, frame_masks
