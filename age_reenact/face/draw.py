"""Landmark previews: points, 5-point anchors and face boxes drawn on frames."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..images import to_image_batch, to_uint8
from .crop import FaceCrops


def draw_landmarks(images: torch.Tensor, crops: FaceCrops, radius: float | None = None, show_outline: bool = True) -> torch.Tensor:
    """Frames with each face's landmarks (green), 5 alignment points (red) and mask outline (yellow)."""
    from .paste import face_outline

    images = to_image_batch(images)
    out = []
    for frame in range(images.shape[0]):
        canvas = Image.fromarray(to_uint8(images[frame]))
        draw = ImageDraw.Draw(canvas)
        r = radius or max(1.0, max(canvas.size) / 400)
        for row in np.flatnonzero((crops.frame_index == frame) & crops.valid):
            if show_outline:
                outline = face_outline(crops.landmarks[row], crops.points5[row])
                draw.line([tuple(p) for p in np.vstack([outline, outline[:1]])], fill=(255, 220, 0), width=max(1, int(r)))
            for color, points in (((0, 255, 0), crops.landmarks[row]), ((255, 0, 0), crops.points5[row])):
                for x, y in points:
                    draw.ellipse([x - r, y - r, x + r, y + r], fill=color)
        out.append(torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0))
    return torch.stack(out)
