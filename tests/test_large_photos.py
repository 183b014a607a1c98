"""Large photos (issue 17): read once as uint8, turned and converted strip by strip, cropped without a
full-size float copy, and the results the same as converting the whole frame."""
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from age_reenact import images
from age_reenact.benchmark import PeakMemory
from age_reenact.face.align import warp_affine
from age_reenact.face.crop import _source_region, crops_from_points, extract_crops
from age_reenact.images import read_image

MiB = 2**20


def _can_reset_peak() -> bool:
    """PeakMemory reads the resident peak since /proc/self/clear_refs reset it: Linux, where allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _photo(height: int, width: int) -> np.ndarray:
    """Colour ramps (JPEG-friendly), built in uint8 so a large test frame costs no more than itself."""
    x = (np.arange(width) * 255 // width).astype(np.uint8)
    y = (np.arange(height) * 255 // height).astype(np.uint8)
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = x, y[:, None], x // 2 + y[:, None] // 2
    return frame


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_turned_as_pillow_turns_it(tmp_path, monkeypatch, orientation):
    # Strips of 5 rows and a bit: several strips a frame, and a last one cut short.
    monkeypatch.setattr(images, "STRIP_PIXELS", 53 * 5 + 7)
    stored = Image.fromarray(np.random.default_rng(orientation).integers(0, 256, (37, 53, 3), dtype=np.uint8))
    exif = stored.getexif()
    exif[0x0112] = orientation  # EXIF Orientation
    stored.save(tmp_path / "photo.png", exif=exif.tobytes())
    with Image.open(tmp_path / "photo.png") as img:
        expected = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    assert np.array_equal(read_image(tmp_path / "photo.png"), expected)


def test_wide_grey_is_scaled_by_the_whole_image_not_each_strip(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "STRIP_PIXELS", 64 * 4)
    grey = np.full((48, 64), 60000, dtype=np.uint16)
    grey[:4] = 200  # the first strip alone would look like 8-bit data stored wide
    Image.fromarray(grey).save(tmp_path / "sixteen.png")
    expected = (grey / 65535.0 * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(read_image(tmp_path / "sixteen.png")[..., 0], expected)


def test_reading_a_large_photo_holds_one_full_size_array(tmp_path):
    # Converting the decoded photo at once held a bytes copy beside the array (twice the frame, plus
    # PIL's own 4 bytes a pixel, which tracemalloc does not see); strips add a few MB.
    Image.fromarray(_photo(2000, 3000)).save(tmp_path / "large.jpg", quality=90)
    tracemalloc.start()
    try:
        frame = read_image(tmp_path / "large.jpg")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert frame.shape == (2000, 3000, 3)
    assert peak < frame.nbytes + 8 * MiB, f"{peak / MiB:.0f} MiB traced for an {frame.nbytes / MiB:.0f} MiB frame"
    with Image.open(tmp_path / "large.jpg") as img:
        assert np.array_equal(frame, np.asarray(img.convert("RGB")))


FACE = np.array([[1200.0, 800], [1800, 800], [1500, 1150], [1250, 1500], [1750, 1500]])  # 5 points, 3000x2000 px


def test_a_face_that_fills_a_large_photo_is_cropped_as_from_the_whole_float_frame():
    frame = torch.from_numpy(_photo(2000, 3000))[None]
    face_crop = crops_from_points((2000, 3000), 1, [0], [FACE], [FACE], "agetransgan", 112)
    whole = warp_affine(frame.float().div(255).permute(0, 3, 1, 2), face_crop.matrices, (112, 112)).clamp(0, 1).permute(0, 2, 3, 1)
    # The region's own pixel grid rounds a little differently from the frame's: within 1e-5, not bit for bit.
    assert torch.allclose(extract_crops(frame, face_crop), whole, atol=1e-5)


@pytest.mark.skipif(not _can_reset_peak(), reason="needs Linux's /proc/self/clear_refs to measure a peak")
def test_a_face_that_fills_a_large_photo_is_cropped_without_a_float_copy():
    # 6000x4000 uint8, a face crop that reads 4440x4000 px of it: that region as floats is 200 MiB (and it
    # cost 400 MiB when converted whole). It is pooled from uint8 through one band of 247 rows (13 MiB).
    frame = torch.full((1, 4000, 6000, 3), 128, dtype=torch.uint8)
    face_crop = crops_from_points((4000, 6000), 1, [0], [FACE * 2], [FACE * 2], "agetransgan", 112)
    x0, y0, x1, y1 = _source_region(face_crop.matrices[0], 112, (4000, 6000))
    region_floats = (x1 - x0) * (y1 - y0) * 3 * 4 / MiB
    with PeakMemory(torch.device("cpu")) as memory:
        extract_crops(frame, face_crop)
    assert region_floats > 150 and memory.added < region_floats / 6, f"{memory.added:.0f} MiB added; the region as floats is {region_floats:.0f} MiB"
