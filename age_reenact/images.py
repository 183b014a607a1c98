"""Image batches as the pack passes them around: float32 [B, H, W, 3] in 0..1 (ComfyUI's IMAGE layout).

Everything that enters the core goes through `to_image_batch` (tensors) or `load_image` (files), so odd
modes and sizes fail here with a message that says what to do, never deep inside torch or dlib.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

MIN_SIDE = 16
MAX_SIDE = 16384


class ImageInputError(ValueError):
    """An image the pack cannot use; the message says how to fix the input."""


def to_image_batch(images: torch.Tensor, name: str = "image") -> torch.Tensor:
    """Validate and normalise an IMAGE-like tensor to float32 [B, H, W, 3] in 0..1.

    Accepts [H, W, C] or [B, H, W, C] with C = 1 (grey, repeated), 3, or 4 (alpha dropped); integer
    dtypes are scaled by their range (uint8 /255, 16-bit /65535).
    """
    if not isinstance(images, torch.Tensor):
        raise ImageInputError(f"{name}: expected an IMAGE tensor, got {type(images).__name__}.")
    if images.ndim == 3 and images.shape[-1] not in (1, 3, 4):
        raise ImageInputError(
            f"{name}: got a tensor of shape {tuple(images.shape)}, which looks like a MASK [B, H, W]. "
            "Connect an IMAGE instead (convert a mask with a 'Convert Mask to Image' node)."
        )
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4:
        raise ImageInputError(f"{name}: expected [B, H, W, C], got shape {tuple(images.shape)}.")
    b, h, w, c = images.shape
    if b == 0:
        raise ImageInputError(f"{name}: the batch is empty; connect at least one image.")
    if c not in (1, 3, 4):
        raise ImageInputError(f"{name}: expected 1, 3 or 4 channels in the last axis, got {c} (shape {tuple(images.shape)}).")
    if min(h, w) < MIN_SIDE:
        raise ImageInputError(f"{name}: {w}x{h} px is too small; faces need images of at least {MIN_SIDE} px a side.")
    if max(h, w) > MAX_SIDE:
        raise ImageInputError(f"{name}: {w}x{h} px exceeds {MAX_SIDE} px a side; downscale it first.")
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    elif images.dtype in (torch.int16, torch.int32, torch.uint16, torch.int64):
        images = images.float() / 65535.0
    elif images.dtype == torch.bool:
        images = images.float()
    else:
        images = images.float()
    if c == 1:
        images = images.expand(-1, -1, -1, 3)
    elif c == 4:
        images = images[..., :3]
    if not torch.isfinite(images).all():
        raise ImageInputError(f"{name}: contains NaN or infinite values.")
    return images.clamp(0.0, 1.0).contiguous()


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """One [H, W, 3] float image in 0..1 -> contiguous uint8 numpy array (what dlib wants)."""
    return np.ascontiguousarray((image.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy())


def load_image(path: str | Path) -> torch.Tensor:
    """Read an image file into a [1, H, W, 3] float batch; any PIL mode, 8 or 16 bit."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(img, dtype=np.float32)
                scale = 65535.0 if array.max() > 255 else 255.0
                tensor = torch.from_numpy(array / scale)[..., None]
            else:
                if img.mode in ("RGBA", "LA", "P", "PA"):
                    # Composite on black so transparent areas do not bring garbage colours.
                    img = img.convert("RGBA")
                    background = Image.new("RGBA", img.size, (0, 0, 0, 255))
                    img = Image.alpha_composite(background, img)
                tensor = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy())
    except UnidentifiedImageError as exc:
        raise ImageInputError(f"{path} is not an image PIL can read ({exc}).") from exc
    return to_image_batch(tensor, name=str(path))


def save_image(image: torch.Tensor, path: str | Path) -> None:
    """Write one [H, W, 3] or [1, H, W, 3] float image as PNG/JPEG (by suffix)."""
    from PIL import Image

    if image.ndim == 4:
        image = image[0]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(image)).save(path)
