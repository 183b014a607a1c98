"""What real photos have and aligned dataset chips lack: low resolution, blur and JPEG artefacts.

Applied to a random share of each batch (settings from a jitter dict, see `degrade`), after the geometric and
colour jitter of `face_data.AlignedFaces`, so a model trained on clean chips also reads small, soft or
recompressed faces.
"""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from age_reenact.filters import gaussian_blur, through_resolution


def _chosen(b: int, share: float, generator: torch.Generator | None) -> list[int]:
    return torch.nonzero(torch.rand(b, generator=generator) < share).flatten().tolist()


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand(1, generator=generator))


def _jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    pixels = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    decoded = np.asarray(Image.open(buffer).convert("RGB"))
    return torch.from_numpy(decoded.copy()).permute(2, 0, 1).to(image.dtype) / 255.0


def degrade(crops: torch.Tensor, generator: torch.Generator | None, settings: dict) -> torch.Tensor:
    """Float crops [B, 3, S, S] in 0..1, each degraded with the probabilities in `settings`:

    downscale: share shrunk to `min_size`..S px (antialiased) and brought back, as a small face in a photo is;
    blur: share blurred with a Gaussian of sigma up to `max_sigma` px;
    jpeg: share recompressed at a quality in `quality` (low, high).
    """
    out = crops.clone()
    size = crops.shape[-1]
    for k in _chosen(len(out), settings.get("downscale", 0.0), generator):
        small = round(_uniform(settings.get("min_size", 24), size, generator))
        out[k] = through_resolution(out[k : k + 1], small)[0]
    for k in _chosen(len(out), settings.get("blur", 0.0), generator):
        out[k] = gaussian_blur(out[k][None], _uniform(0.3, settings.get("max_sigma", 1.5), generator), "reflect")[0]
    low, high = settings.get("quality", (30, 90))
    for k in _chosen(len(out), settings.get("jpeg", 0.0), generator):
        out[k] = _jpeg(out[k], round(_uniform(low, high, generator)))
    return out.clamp(0, 1)
