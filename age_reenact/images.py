"""Image batches as the pack passes them around: float32 [B, H, W, 3] in 0..1 (ComfyUI's IMAGE layout).

Everything that enters the core goes through `to_image_batch` (tensors) or `read_image` / `load_image`
(files), so odd modes and sizes fail here with a message that says what to do, never deep inside torch or
dlib, and every command and node reads files by the same rules.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

MIN_SIDE = 16
MAX_SIDE = 16384


class ImageInputError(ValueError):
    """An image the pack cannot use; the message says how to fix the input, `reason` names the problem in a
    few words for tables and CSV rows (truncated, not an image, too small: 12x9 px, ...)."""

    def __init__(self, message: str, reason: str = "unusable image"):
        super().__init__(message)
        self.reason = reason


def to_image_batch(images: torch.Tensor, name: str = "image", keep_uint8: bool = False) -> torch.Tensor:
    """Validate and normalise an IMAGE-like tensor to float32 [B, H, W, 3] in 0..1.

    Accepts [H, W, C] or [B, H, W, C] with C = 1 (grey, repeated), 3, or 4 (alpha dropped); integer
    dtypes are scaled by their range (uint8 /255, 16-bit /65535). keep_uint8: uint8 input comes back as a
    uint8 view instead, for callers that read only parts of the frames (a 24 MP photo is 288 MB as floats).
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
    _check_size(w, h, name)
    if keep_uint8 and images.dtype == torch.uint8:
        return images.expand(-1, -1, -1, 3) if c == 1 else images[..., :3]
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


def _check_size(w: int, h: int, name: str) -> None:
    if min(h, w) < MIN_SIDE:
        raise ImageInputError(f"{name}: {w}x{h} px is too small; faces need images of at least {MIN_SIDE} px a side.", f"too small: {w}x{h} px")
    if max(h, w) > MAX_SIDE:
        raise ImageInputError(f"{name}: {w}x{h} px exceeds {MAX_SIDE} px a side; downscale it first.", f"too large: {w}x{h} px")


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """One [H, W, 3] image (float in 0..1, or uint8 as it is) -> contiguous uint8 numpy array (what dlib wants)."""
    if image.dtype == torch.uint8:
        return np.ascontiguousarray(image.cpu().numpy())
    return np.ascontiguousarray((image.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy())


# EXIF orientation -> (the transpose that turns the stored pixels upright, whether the upright rows are the
# stored columns, whether they come from the far end), as ImageOps.exif_transpose turns them.
_ORIENTATIONS = {
    2: ("FLIP_LEFT_RIGHT", False, False),
    3: ("ROTATE_180", False, True),
    4: ("FLIP_TOP_BOTTOM", False, True),
    5: ("TRANSPOSE", True, False),
    6: ("ROTATE_270", True, False),
    7: ("TRANSVERSE", True, True),
    8: ("ROTATE_90", True, True),
}
# Pixels converted at a time: PIL keeps RGB at 4 bytes a pixel, so a whole 24 MP photo converted at once
# would hold PIL's 96 MB, a 72 MB bytes copy and the 72 MB array together; strips of this size add ~7 MB.
STRIP_PIXELS = 1 << 20
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I", "F")  # grey stored wider than 8 bits


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file into uint8 RGB [H, W, 3]: the one file reader of the pack (commands, evaluation, training).

    JPEG, PNG, GIF, WebP, TIFF, BMP (the first frame of animations and multi-page files), EXIF rotation
    applied. Transparent areas become black; 16-bit and 32-bit grey is scaled by its range; CMYK and other
    modes are converted to RGB. A file that cannot be used raises ImageInputError whose `reason` says why:
    not found, not an image, truncated, unreadable, too small, too large.

    The decoded image is turned and converted into the array a strip of rows at a time, so the peak is the
    decoded image plus the array (168 MB for a 24 MP JPEG), never a second full-size copy.
    """
    from PIL import ExifTags, Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"image file not found: {path}", "not found")
    try:
        with Image.open(path) as img:
            _check_size(*img.size, str(path))  # before decoding: no memory spent on a file that is refused anyway
            img.load()
            return _upright_rgb(img, img.getexif().get(ExifTags.Base.Orientation, 1))
    except ImageInputError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageInputError(f"{path} is not an image PIL can read ({exc}).", "not an image") from exc
    except Image.DecompressionBombError as exc:
        raise ImageInputError(f"{path}: {exc}", "too large") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # A cut-off download or copy reads as "image file is truncated"; other damage as decoder errors.
        reason = "truncated" if "truncated" in str(exc).lower() else f"unreadable: {exc}"
        raise ImageInputError(f"{path} could not be decoded ({exc}); the file is damaged or incomplete.", reason) from exc


def _upright_rgb(img, orientation: int) -> np.ndarray:
    """A decoded PIL image of any mode -> uint8 RGB [H, W, 3] turned by its EXIF orientation, strip by strip."""
    from PIL import Image

    transpose, swapped, from_end = _ORIENTATIONS.get(orientation, (None, False, False))
    w, h = img.size
    out_h, out_w = (w, h) if swapped else (h, w)
    # 16-bit data, or 8-bit values stored wide: told apart by the whole image's range, not each strip's.
    wide = 65535.0 if img.mode in WIDE_MODES and img.getextrema()[1] > 255 else 255.0
    frame = np.empty((out_h, out_w, 3), dtype=np.uint8)
    rows = max(1, STRIP_PIXELS // out_w)
    for y0 in range(0, out_h, rows):
        y1 = min(out_h, y0 + rows)
        s0, s1 = (out_h - y1, out_h - y0) if from_end else (y0, y1)
        strip = img.crop((s0, 0, s1, h) if swapped else (0, s0, w, s1))
        if transpose is not None:
            strip = strip.transpose(Image.Transpose[transpose])
        frame[y0:y1] = _rgb_array(strip, wide)
    return frame


def _rgb_array(img, wide: float) -> np.ndarray:
    """A decoded PIL image of any mode -> uint8 RGB [H, W, 3]; `wide` is the range of wide grey modes (WIDE_MODES)."""
    from PIL import Image

    if img.mode in WIDE_MODES:
        grey = (np.clip(np.asarray(img, dtype=np.float32) / wide, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info:
        # Composite on black so transparent areas do not bring garbage colours.
        rgba = img.convert("RGBA")
        img = Image.new("RGB", img.size)
        img.paste(rgba, mask=rgba)
    elif img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def load_image(path: str | Path) -> torch.Tensor:
    """Read an image file (see `read_image`) into a [1, H, W, 3] float batch."""
    return to_image_batch(torch.from_numpy(read_image(path)), name=str(path))


def save_image(image: torch.Tensor, path: str | Path) -> None:
    """Write one [H, W, 3] or [1, H, W, 3] float image as PNG/JPEG (by suffix)."""
    from PIL import Image

    if image.ndim == 4:
        image = image[0]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(image)).save(path)
