"""Bad input gets a clear error or a documented fallback: image modes and sizes, model names, weights files."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import bad_image_files
from age_reenact import model_paths
from age_reenact.face.align import warp_affine
from age_reenact.face.crop import crops_from_points, detect_crops, extract_crops
from age_reenact.face.detect import FaceDetector
from age_reenact.images import ImageInputError, load_image, read_image, to_image_batch
from age_reenact.weights import (
    WeightsError,
    build_model,
    read_weights,
    register_architecture,
    save_weights,
)


@register_architecture("test_tiny_net")
class TinyNet(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.layer = nn.Linear(3, width)


def test_image_modes_are_normalised(tmp_path, astronaut):
    rgb = (astronaut[0] * 255).round().byte().numpy()
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("L").save(tmp_path / "grey.png")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(tmp_path / "sixteen.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    for name in ("rgba", "grey", "sixteen", "palette"):
        image = load_image(tmp_path / f"{name}.png")
        assert image.shape == (1, 512, 512, 3) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    sixteen = load_image(tmp_path / "sixteen.png")
    assert torch.allclose(sixteen[0, ..., 0], astronaut[0, ..., 0], atol=1 / 255 + 1e-6)
    assert to_image_batch(torch.rand(2, 64, 64, 4)).shape == (2, 64, 64, 3)
    assert to_image_batch(torch.randint(0, 255, (64, 64, 1), dtype=torch.uint8)).shape == (1, 64, 64, 3)


@pytest.mark.parametrize(
    "tensor,message",
    [
        (torch.rand(2, 64, 64), "looks like a MASK"),
        (torch.rand(0, 64, 64, 3), "batch is empty"),
        (torch.rand(1, 1, 1, 3), "too small"),
        (torch.rand(1, 64, 64, 2), "expected 1, 3 or 4 channels"),
        (torch.full((1, 64, 64, 3), float("nan")), "NaN"),
    ],
)
def test_bad_tensors_get_clear_errors(tensor, message):
    with pytest.raises(ImageInputError, match=message):
        to_image_batch(tensor)


def test_unreadable_image_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ImageInputError, match="not an image"):
        load_image(tmp_path / "broken.png")


def test_bad_image_files_name_their_reason(tmp_path):
    for name, reason in bad_image_files(tmp_path).items():
        with pytest.raises(ImageInputError, match=name) as caught:
            read_image(tmp_path / name)
        assert caught.value.reason == reason


def test_every_format_and_mode_reads_as_rgb(tmp_path):
    grey = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (48, 1))  # 64 wide, 48 high: a left-to-right ramp
    rgb = Image.fromarray(grey).convert("RGB")
    second = Image.new("RGB", rgb.size, (255, 0, 0))
    rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(tmp_path / "anim.gif", save_all=True, append_images=[second])
    rgb.save(tmp_path / "pages.tiff", save_all=True, append_images=[second])
    rgb.convert("RGBA").save(tmp_path / "alpha.webp", lossless=True)
    rgb.save(tmp_path / "plain.bmp")
    rgb.convert("CMYK").save(tmp_path / "cmyk.tiff")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "sixteen.tiff")
    Image.fromarray(grey).convert("LA").save(tmp_path / "grey_alpha.png")
    for name in ("anim.gif", "pages.tiff", "alpha.webp", "plain.bmp", "cmyk.tiff", "sixteen.tiff", "grey_alpha.png"):
        array = read_image(tmp_path / name)
        assert array.shape == (48, 64, 3) and array.dtype == np.uint8, name
        # The first frame and page, converted from any mode to the same grey ramp.
        assert np.abs(array.astype(int) - grey[..., None]).max() <= 1, name
    half = np.zeros((20, 20, 4), dtype=np.uint8)
    half[..., 0], half[:, 10:, 3] = 255, 255  # red, transparent on the left: black there, not red
    Image.fromarray(half).save(tmp_path / "half.png")
    assert read_image(tmp_path / "half.png")[:, :10].max() == 0 and (read_image(tmp_path / "half.png")[:, 10:, 0] == 255).all()


def test_huge_frame_is_detected_on_a_downscaled_copy(astronaut):
    # 10000x10000: detection and landmarks run on a copy scaled to detect_max_side (face.crop.detect_faces); the crop at full resolution.
    big = torch.nn.functional.interpolate(astronaut.permute(0, 3, 1, 2), size=(10000, 10000), mode="nearest").permute(0, 2, 3, 1)
    face_crop = detect_crops(big, FaceDetector(upsample=0, detect_max_side=512), "arcface", 112)
    small = detect_crops(astronaut, FaceDetector(upsample=0), "arcface", 112)
    assert np.abs(face_crop.points5 / (10000 / 512) - small.points5).max() < 3.0


def test_crops_read_only_their_region_and_match_the_whole_frame(astronaut):
    # A uint8 frame is cropped region by region, never converted whole; the crops equal whole-frame warps.
    big = torch.nn.functional.interpolate(astronaut.permute(0, 3, 1, 2), size=(3000, 3000), mode="bilinear").permute(0, 2, 3, 1)
    frame = (big * 255).round().byte()
    points = np.array([[220.0, 190], [290, 190], [255, 235], [225, 275], [285, 275]])  # a face's 5 points, 512 px frame
    # The face at full size, a face a tenth as big (a strong anti-alias factor), and one half outside the frame.
    faces = [points * 3000 / 512, points * 0.6 + 1000, points * 3000 / 512 + 1500]
    face_crop = crops_from_points((3000, 3000), 1, [0] * 3, faces, faces, "arcface", 112)
    whole = warp_affine(frame.float().div(255).permute(0, 3, 1, 2).expand(3, -1, -1, -1), face_crop.matrices, (112, 112)).clamp(0, 1).permute(0, 2, 3, 1)
    assert torch.allclose(extract_crops(frame, face_crop), whole, atol=1e-4)


@pytest.mark.parametrize("name", ["../secret.safetensors", "/etc/passwd", "a/../../b.safetensors", "C:\\models\\x.safetensors", "..\\x.sft", ""])
def test_model_names_cannot_escape_the_folders(name):
    with pytest.raises(ValueError):
        model_paths.validate_model_name(name)


def test_missing_model_names_the_file_and_folders(tmp_path, monkeypatch):
    monkeypatch.setenv(model_paths.ENV_VAR, str(tmp_path))
    with pytest.raises(model_paths.ModelNotFoundError, match=r"'nothere.safetensors' not found.*age_estimator"):
        model_paths.resolve_model("age_estimator", "nothere.safetensors")
    (tmp_path / "age_estimator" / "sub").mkdir(parents=True)
    save_weights(tmp_path / "age_estimator" / "sub" / "m.safetensors", TinyNet().state_dict(), "test_tiny_net", {"width": 4})
    assert "sub/m.safetensors" in model_paths.list_models("age_estimator")
    assert model_paths.resolve_model("age_estimator", "sub/m.safetensors").is_file()


def test_weights_round_trip_with_metadata(tmp_path):
    model = TinyNet(width=5)
    path = save_weights(tmp_path / "tiny.safetensors", model.state_dict(), "test_tiny_net", {"width": 5}, {"input": "rgb"}, {"data": "none"})
    weights = read_weights(path, "test_tiny_net")
    assert weights.config == {"width": 5} and weights.preprocessing == {"input": "rgb"}
    rebuilt = build_model(weights)
    assert torch.equal(rebuilt.layer.weight, model.layer.weight)
    assert not list(tmp_path.glob("*.partial"))


def test_truncated_and_foreign_weights_get_clear_errors(tmp_path):
    path = save_weights(tmp_path / "tiny.safetensors", TinyNet().state_dict(), "test_tiny_net", {"width": 4})
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="corrupt or truncated"):
        read_weights(tmp_path / "cut.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(WeightsError, match="corrupt or truncated"):
        read_weights(tmp_path / "garbage.safetensors")
    with pytest.raises(WeightsError, match="holds a 'test_tiny_net' model, but this loader needs 'agetransgan_generator'"):
        read_weights(path, "agetransgan_generator")
    (tmp_path / "model.pt").write_bytes(b"pickle")
    with pytest.raises(WeightsError, match="only .safetensors"):
        read_weights(tmp_path / "model.pt")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(WeightsError, match="no AgeReenact metadata"):
        read_weights(tmp_path / "plain.safetensors")


def test_wrong_shapes_are_listed(tmp_path):
    path = save_weights(tmp_path / "w.safetensors", TinyNet(width=4).state_dict(), "test_tiny_net", {"width": 6})
    with pytest.raises(WeightsError, match=r"2 wrong shape: layer.weight: file \(4, 3\) vs model \(6, 3\)"):
        build_model(read_weights(path))
