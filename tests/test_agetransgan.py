"""AgeTransGAN generator: official state_dict layout, exact layers, codes, determinism, precision."""
from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from age_reenact.age_groups import FFHQ_AGING_4, FFHQ_AGING_10, groups_for
from age_reenact.agetransgan import AgeTransGAN, AgeTransGANGenerator, age_code, between_code, code_label, load_generator, sweep_codes
from age_reenact.agetransgan.convert import infer_config, preprocessing_for
from age_reenact.agetransgan.generator import fine_detail
from age_reenact.agetransgan.layers import ModulatedConv2d, upfirdn2d
from age_reenact.colour import keep_colourless
from age_reenact.weights import WeightsError, convert_checkpoint, read_weights, save_weights

TINY = dict(size=64, group=10, style_dim=32, n_mlp=2, channel_multiplier=1)


def official_shapes(size: int, group: int, style_dim: int = 512, multiplier: float = 2, n_mlp: int = 8) -> dict[str, tuple]:
    """Key -> shape of the official generator's state_dict, written out from the published module tree
    (docs/reference/paper-systems.md section 1.2), independently of the pack's module code."""
    ch = {r: style_dim if r <= 32 else int(style_dim * 32 * multiplier / r) for r in (4, 8, 16, 32, 64, 128, 256, 512, 1024)}
    k4, log = (4, 4), int(math.log2(size))
    shapes: dict[str, tuple] = {}
    for i in range(1, n_mlp + 1):
        shapes[f"style.{i}.weight"], shapes[f"style.{i}.bias"] = (style_dim, style_dim), (style_dim,)

    def resblock(prefix, cin, cout, down):
        shapes[f"{prefix}.conv1.0.weight"], shapes[f"{prefix}.conv1.1.bias"] = (cin, cin, 3, 3), (cin,)
        if down:
            shapes[f"{prefix}.conv2.0.kernel"], shapes[f"{prefix}.conv2.1.weight"], shapes[f"{prefix}.conv2.2.bias"] = k4, (cout, cin, 3, 3), (cout,)
            shapes[f"{prefix}.skip.0.kernel"], shapes[f"{prefix}.skip.1.weight"] = k4, (cout, cin, 1, 1)
        else:
            shapes[f"{prefix}.conv2.0.weight"], shapes[f"{prefix}.conv2.1.bias"] = (cout, cin, 3, 3), (cout,)
            shapes[f"{prefix}.skip.0.weight"] = (cout, cin, 1, 1)

    shapes["convs_e.0.0.weight"], shapes["convs_e.0.1.bias"] = (ch[size], 3 + group, 1, 1), (ch[size],)
    for n, res in enumerate(range(log, 4, -1), start=1):
        resblock(f"convs_e.{n}", ch[2**res], ch[2 ** (res - 1)], True)
    resblock("convs_ei.0", ch[16], ch[16], False)
    resblock("convs_ei.1", ch[16], ch[16], False)
    resblock("convs_es.0", ch[16], ch[8], True)
    resblock("convs_es.1", ch[8], ch[4], True)
    shapes["final_conv.0.weight"], shapes["final_conv.1.bias"] = (ch[4], ch[4], 3, 3), (ch[4],)

    def styled(prefix, cin, cout, up):
        shapes[f"{prefix}.conv.weight"] = (1, cout, cin, 3, 3)
        shapes[f"{prefix}.conv.modulation.weight"], shapes[f"{prefix}.conv.modulation.bias"] = (cin, style_dim), (cin,)
        if up:
            shapes[f"{prefix}.conv.blur.kernel"] = k4
        shapes[f"{prefix}.noise.weight"], shapes[f"{prefix}.activate.bias"] = (1,), (cout,)

    def to_rgb(prefix, cin, up):
        if up:
            shapes[f"{prefix}.upsample.kernel"] = k4
        shapes[f"{prefix}.conv.weight"] = (1, 3, cin, 1, 1)
        shapes[f"{prefix}.conv.modulation.weight"], shapes[f"{prefix}.conv.modulation.bias"] = (cin, style_dim), (cin,)
        shapes[f"{prefix}.bias"] = (1, 3, 1, 1)

    styled("conv1", ch[16], ch[16], False)
    to_rgb("to_rgb1", ch[16], False)
    cin = ch[16]
    for n, res in enumerate(range(5, log + 1)):
        styled(f"convs.{2 * n}", cin, ch[2**res], True)
        styled(f"convs.{2 * n + 1}", ch[2**res], ch[2**res], False)
        to_rgb(f"to_rgbs.{n}", ch[2**res], True)
        cin = ch[2**res]
    for i in range((log - 2) * 2 + 1):  # StyleGAN2's 4x4-start noise buffers, unused but stored
        shapes[f"noises.noise_{i}"] = (1, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2))
    return shapes


def tiny_model(seed: int = 0, **overrides) -> AgeTransGANGenerator:
    torch.manual_seed(seed)
    model = AgeTransGANGenerator(**{**TINY, **overrides}).eval()
    with torch.no_grad():  # fresh models add no noise (weights init 0); make noise matter for the tests
        for name, p in model.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.2)
    return model


def test_age_groups():
    assert FFHQ_AGING_10.names == ("0-2", "3-6", "7-9", "10-14", "15-19", "20-29", "30-39", "40-49", "50-69", "70+")
    assert FFHQ_AGING_4.names == ("15-29", "30-39", "40-49", "50+")
    assert FFHQ_AGING_10.group_of(np.array([0, 2.9, 3, 29, 30, 69, 70, 99])).tolist() == [0, 0, 1, 5, 6, 8, 9, 9]
    assert FFHQ_AGING_4.group_of(5) == 0 and FFHQ_AGING_4.group_of(55) == 3
    assert FFHQ_AGING_10.centres[5] == 25 and FFHQ_AGING_10.centres[-1] == 80
    np.testing.assert_allclose(FFHQ_AGING_10.soft_code(30.0)[5:7], [0.5, 0.5])  # halfway between 25 and 35
    assert FFHQ_AGING_10.soft_code(25.0)[5] == 1 and FFHQ_AGING_10.soft_code(95.0)[9] == 1
    assert groups_for(4) is FFHQ_AGING_4 and FFHQ_AGING_10.index("50-69") == 8
    with pytest.raises(ValueError, match="choose one of"):
        FFHQ_AGING_4.index("0-2")


def test_age_codes_and_official_sweep():
    codes = sweep_codes(FFHQ_AGING_10)
    assert codes.shape == (91, 10) and len(sweep_codes(FFHQ_AGING_4)) == 31
    torch.testing.assert_close(codes.sum(1), torch.ones(91))
    torch.testing.assert_close(codes[13], between_code(FFHQ_AGING_10, 1, 0.3))  # pair (1, 2), step 3
    assert codes[13, 1].item() == pytest.approx(0.7) and codes[-1, 9] == 1 and codes[0, 0] == 1
    assert code_label(FFHQ_AGING_10, codes[13]) == "3-6 70% / 7-9 30%"
    assert code_label(FFHQ_AGING_10, age_code(FFHQ_AGING_10, 35.0)) == "30-39"


def _upfirdn_by_definition(x, kernel, up, down, pad):
    """upfirdn2d written out with loops over output pixels (tiny inputs only)."""
    c, h, w = x.shape
    z = torch.zeros(c, h * up, w * up)
    z[:, ::up, ::up] = x
    z = F.pad(z, (pad[0], pad[1], pad[0], pad[1]))
    k = torch.flip(kernel, (0, 1))
    kh, kw = k.shape
    out = torch.zeros(c, z.shape[1] - kh + 1, z.shape[2] - kw + 1)
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            out[:, i, j] = (z[:, i : i + kh, j : j + kw] * k).sum((1, 2))
    return out[:, ::down, ::down]


@pytest.mark.parametrize("up,down,pad", [(2, 1, (2, 1)), (1, 2, (2, 2)), (1, 1, (1, 1)), (1, 2, (1, 1))])
def test_upfirdn2d_matches_its_definition(up, down, pad):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 7)
    kernel = torch.rand(4, 4)  # asymmetric, so a missing flip would show
    expected = torch.stack([_upfirdn_by_definition(xi, kernel, up, down, pad) for xi in x])
    torch.testing.assert_close(upfirdn2d(x, kernel, up, down, pad), expected, atol=1e-5, rtol=1e-5)


def _blur(x, kernel, pad, stride=1):
    c = x.shape[1]
    return F.conv2d(F.pad(x, (pad[0], pad[1], pad[0], pad[1])), torch.flip(kernel, (0, 1)).expand(c, 1, 4, 4), stride=stride, groups=c)


def _modulated(conv, x, style, demodulate=True):
    """The official op: modulate and demodulate a weight per sample, grouped (transposed) conv, blur."""
    b, cin, h, w = x.shape
    s = F.linear(style, conv.modulation.weight * conv.modulation.scale, conv.modulation.bias * conv.modulation.lr_mul)
    weight = conv.scale * conv.weight * s.view(b, 1, cin, 1, 1)
    if demodulate:
        weight = weight * torch.rsqrt(weight.pow(2).sum((2, 3, 4)) + 1e-8).view(b, -1, 1, 1, 1)
    cout, k = weight.shape[1], weight.shape[-1]
    if conv.upsample:
        weight = weight.transpose(1, 2).reshape(b * cin, cout, k, k)
        out = F.conv_transpose2d(x.reshape(1, b * cin, h, w), weight, stride=2, groups=b)
        return _blur(out.reshape(b, cout, *out.shape[2:]), conv.blur.kernel, (1, 1))
    out = F.conv2d(x.reshape(1, b * cin, h, w), weight.reshape(b * cout, cin, k, k), padding=k // 2, groups=b)
    return out.reshape(b, cout, h, w)


def _act(x, bias):
    return F.leaky_relu(x + bias.view(1, -1, *[1] * (x.ndim - 2)), 0.2) * math.sqrt(2)


def _conv_layer(layer, x):
    if layer.downsample:
        x = _blur(x, layer[0].kernel, layer[0].pad)
    conv = layer[1] if layer.downsample else layer[0]
    x = F.conv2d(x, conv.weight * conv.scale, stride=conv.stride, padding=conv.padding)
    return _act(x, layer[-1].bias) if layer.activate else x


def _resblock(block, x):
    return (_conv_layer(block.conv2, _conv_layer(block.conv1, x)) + _conv_layer(block.skip, x)) / math.sqrt(2)


def reference_forward(model, image, code, noise):
    """The official generator's forward, written plainly from its published description."""
    b, _, h, w = image.shape
    x = torch.cat([image, code[:, :, None, None].expand(b, -1, h, w)], 1)
    x = _conv_layer(model.convs_e[0], x)
    for block in model.convs_e[1:]:
        x = _resblock(block, x)
    style = x
    for block in model.convs_es:
        style = _resblock(block, style)
    latent = _conv_layer(model.final_conv, style).mean((2, 3))
    latent = latent * torch.rsqrt(latent.pow(2).mean(1, keepdim=True) + 1e-8)
    for layer in model.style[1:]:
        latent = _act(F.linear(latent, layer.weight * layer.scale), layer.bias * layer.lr_mul)
    out = x
    for block in model.convs_ei:
        out = _resblock(block, out)

    def styled(layer, out, n):
        out = _modulated(layer.conv, out, latent) + layer.noise.weight * n
        return _act(out, layer.activate.bias)

    def rgb(layer, out, skip):
        y = _modulated(layer.conv, out, latent, demodulate=False) + layer.bias
        return y if skip is None else y + _upsample(skip, layer.upsample.kernel)

    out = styled(model.conv1, out, noise[0])
    skip = rgb(model.to_rgb1, out, None)
    for i, to_rgb in enumerate(model.to_rgbs):
        out = styled(model.convs[2 * i], out, noise[1 + 2 * i])
        out = styled(model.convs[2 * i + 1], out, noise[2 + 2 * i])
        skip = rgb(to_rgb, out, skip)
    return skip


def _upsample(x, kernel):
    b, c, h, w = x.shape
    z = torch.zeros(b, c, 2 * h, 2 * w)
    z[:, :, ::2, ::2] = x
    return _blur(z, kernel, (2, 1))


@pytest.mark.parametrize("upsample", [False, True])
@pytest.mark.parametrize("side", [8, 3])  # 8: weights modulated per sample; 3: activations scaled instead
def test_modulated_conv_equals_the_official_per_sample_weight_form(upsample, side):
    torch.manual_seed(0)
    conv = ModulatedConv2d(6, 5, 3, style_dim=8, upsample=upsample)
    with torch.no_grad():
        conv.modulation.bias.normal_()
        x, style = torch.randn(3, 6, side, side), torch.randn(3, 8)
        torch.testing.assert_close(conv(x, style), _modulated(conv, x, style), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("grad", [False, True])
def test_generator_equals_the_plain_official_formulas(grad):
    """The pass-saving forward (folded gains and biases, in-place activations, cached weights) computes the
    official function; with gradients on (training) it also runs without in-place autograd errors."""
    model = tiny_model(seed=3)
    with torch.no_grad():
        for p in model.parameters():  # non-trivial biases everywhere
            if p.ndim == 1 or p.shape[0] == 1 and p.ndim == 4:
                p.add_(torch.randn_like(p) * 0.1)
    torch.manual_seed(1)
    image, code = torch.rand(2, 3, 64, 64) * 2 - 1, torch.eye(10)[[1, 7]]
    noise = model.make_noise([4, 5])
    with torch.set_grad_enabled(grad):
        out = model(image.requires_grad_(grad), code, noise)
        if grad:
            out.square().mean().backward()
    with torch.no_grad():
        torch.testing.assert_close(out.detach(), reference_forward(model, image.detach(), code, noise), atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize(
    "size,group,style_dim,multiplier",
    [(1024, 10, 512, 2), (1024, 4, 512, 2), (64, 10, 512, 2), (64, 4, 32, 1)],
)
def test_official_checkpoint_converts_and_loads_strictly(tmp_path, size, group, style_dim, multiplier):
    shapes = official_shapes(size, group, style_dim, multiplier, n_mlp=8)
    if size == 1024:
        assert len(shapes) == 208  # the count in the reference
    generator = torch.Generator().manual_seed(1)
    state = {k: torch.randn(shape, generator=generator) for k, shape in shapes.items()}
    source = tmp_path / f"ffhq_{group}group.pt"
    # The official layout: generator under 'g_ema' next to other trainer entries (and argparse options).
    torch.save({"g_ema": state, "g_optim": {"state": {}, "param_groups": []}, "args": argparse.Namespace(size=size)}, source)

    target = convert_checkpoint("agetransgan", source, tmp_path / "converted.safetensors")
    weights = read_weights(target, "agetransgan_generator")
    assert weights.config == {"size": size, "group": group, "style_dim": style_dim, "n_mlp": 8, "channel_multiplier": multiplier, "lr_mlp": 0.01}
    assert weights.preprocessing["crop_convention"] == "agetransgan" and len(weights.preprocessing["group_names"]) == group
    assert weights.provenance["converted_from"] == source.name

    model = load_generator(target)
    loaded = model.state_dict()
    assert {k: tuple(v.shape) for k, v in loaded.items()} == shapes
    assert all(torch.equal(loaded[k], state[k]) for k in shapes)
    del model, loaded

    direct = load_generator(source)  # the official file, converted in memory
    assert torch.equal(direct.state_dict()["convs_e.0.0.weight"], state["convs_e.0.0.weight"])


def test_wrong_checkpoints_fail_clearly(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, bad)
    with pytest.raises(WeightsError, match="g_ema"):
        load_generator(bad)
    shapes = official_shapes(64, 10, 32, 1)
    state = {k: torch.zeros(s) for k, s in shapes.items()}
    state["convs.0.conv.weight"] = torch.zeros(1, 3, 3, 3, 3)
    torch.save({"g_ema": state}, bad)
    with pytest.raises(WeightsError, match="wrong shape"):
        load_generator(bad)


def test_loading_the_official_file_directly_says_to_convert(tmp_path, caplog):
    path = tmp_path / "ffhq_10group_910k.pt"
    torch.save({"g_ema": tiny_model().state_dict()}, path)
    with caplog.at_level("WARNING"):
        model = load_generator(path)
    assert "age-reenact convert agetransgan" in caplog.text and model.group == 10


def test_same_seed_same_image_and_batch_equals_one_by_one():
    runner = AgeTransGAN.create(tiny_model(), "cpu", "fp32")
    torch.manual_seed(0)
    crops = torch.rand(3, 64, 64, 3)
    codes = torch.eye(10)[[2, 5, 9]]
    batch = runner.generate(crops, codes, [7, 8, 9], chunk=3)
    assert batch.shape == (3, 64, 64, 3) and 0 <= batch.min() and batch.max() <= 1
    singles = torch.cat([runner.generate(crops[i : i + 1], codes[i : i + 1], [7 + i]) for i in range(3)])
    torch.testing.assert_close(batch, singles, atol=1e-5, rtol=0)
    again = runner.generate(crops, codes, [7, 8, 9], chunk=2)
    torch.testing.assert_close(again, batch, atol=1e-5, rtol=0)
    other = runner.generate(crops, codes, [1, 2, 3])
    assert (other - batch).abs().max() > 1e-3  # noise matters, so the seed does too
    younger = runner.generate(crops[:1], torch.eye(10)[[0]], [7])
    assert (younger - batch[:1]).abs().max() > 1e-3  # and so does the age code


def test_grey_parts_of_a_crop_stay_grey():
    """A black-and-white face stays black-and-white (the model tints it), also beside colour (a grey face
    pasted into a colour photo); colour crops, with or without the black outside a photo, are left exactly as
    the model made them."""
    runner = AgeTransGAN.create(tiny_model(), "cpu", "fp32")
    torch.manual_seed(0)
    colour = torch.rand(1, 64, 64, 3) * 0.8 + 0.2
    grey = torch.rand(1, 64, 64, 1).expand(-1, -1, -1, 3)
    half = torch.cat([grey[:, :, :32], colour[:, :, 32:]], 2)
    off_photo = F.pad(colour[:, 10:, 12:], (0, 0, 0, 12, 0, 10))  # the crop ran over the photo's corner: black
    pale = torch.full((1, 64, 64, 3), 0.8)  # a pale face (spread 15/255) on a light-grey background
    pale[:, 16:48, 16:48] += torch.tensor([15, 7, 0]) / 255
    crops = torch.cat([colour, grey, half, off_photo, pale])
    codes, seeds = torch.eye(10)[[9] * 5], [1] * 5
    out = runner.generate(crops, codes, seeds)
    raw = runner.model(crops.permute(0, 3, 1, 2) * 2 - 1, codes, runner.model.make_noise(seeds, "cpu", torch.float32))
    raw = ((raw.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)
    assert (raw[1].amax(-1) - raw[1].amin(-1)).mean() > 0.01  # the tint the rule takes out
    torch.testing.assert_close(out[[0, 3]], raw[[0, 3]], atol=1e-5, rtol=0)
    spread = out.amax(-1) - out.amin(-1)
    assert spread[1].max() < 1e-5 and spread[2, :, :24].max() < 1e-5
    torch.testing.assert_close(out[2, :, 40:], raw[2, :, 40:], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[4, 24:40, 24:40], raw[4, 24:40, 24:40], atol=1e-5, rtol=0)  # the pale face keeps its colour
    assert spread[4, :8].max() < 1e-5  # and the grey background stays grey
    luma = raw[1] @ torch.tensor([0.299, 0.587, 0.114])
    torch.testing.assert_close(out[1, ..., 0], luma, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="B, H, W, 3"):
        keep_colourless(crops[:1], out)


def test_sweep_of_one_face():
    runner = AgeTransGAN.create(tiny_model(), "cpu", "fp32")
    crop = torch.rand(1, 48, 48, 3)  # another size: resampled to the model's
    out = runner.sweep(crop, sweep_codes(FFHQ_AGING_10), seed=3, chunk=16)
    assert out.shape == (91, 64, 64, 3)
    first = runner.generate(runner.to_model_size(crop), torch.eye(10)[[0]], [3])
    torch.testing.assert_close(out[:1], first, atol=1e-5, rtol=0)


def test_crops_of_frames_without_a_face_pass_through():
    from age_reenact.face.crop import crops_from_points

    points = [[[35.0, 40.0], [65.0, 40.0], [50.0, 55.0], [38.0, 72.0], [62.0, 72.0]]] * 2
    record = crops_from_points((100, 100), 2, [0, 1], points, points, "agetransgan", 64, valid=[True, False])
    runner = AgeTransGAN.create(tiny_model(), "cpu", "fp32")
    crops = torch.rand(2, 64, 64, 3)
    out = runner.transform_crops(crops, record, torch.eye(10)[4], seed=0)
    assert torch.equal(out[1], crops[1]) and not torch.allclose(out[0], crops[0])


# The stated bf16 tolerance, on output images in 0..1: mean |diff| < 0.01 (2.5/255), max |diff| < 0.1.
# Measured on the full 1024 architecture (benchmarks/bench_agetransgan.py): about 0.006 mean, 0.09 max.
BF16_MEAN_TOL, BF16_MAX_TOL = 0.01, 0.1


def test_bf16_close_to_fp32():
    model = tiny_model(seed=1)
    torch.manual_seed(0)
    crops = torch.rand(2, 64, 64, 3)
    codes = torch.eye(10)[[3, 8]]
    reference = AgeTransGAN.create(model, "cpu", "fp32").generate(crops, codes, [0, 1])
    fast = AgeTransGAN.create(model, "cpu", "bf16")
    assert fast.channels_last
    low = fast.generate(crops, codes, [0, 1])
    diff = (low - reference).abs()
    assert diff.mean() < BF16_MEAN_TOL and diff.max() < BF16_MAX_TOL, (diff.mean().item(), diff.max().item())


def test_fp16_path_runs_in_fp16():
    """The GPU path's dtype handling, checked on the CPU (no GPU here): fp16 activations, fp32 styles."""
    model = tiny_model(seed=1)
    torch.manual_seed(0)
    image, code, noise = torch.rand(2, 3, 64, 64) * 2 - 1, torch.eye(10)[[0, 6]], model.make_noise([0, 1])
    with torch.inference_mode():
        reference = model(image, code, noise)
        half = model(image.half(), code, [n.half() for n in noise])
    assert half.dtype == torch.float16
    diff = (half.float() - reference).abs() / 2  # in 0..1 image units
    assert diff.mean() < BF16_MEAN_TOL and diff.max() < BF16_MAX_TOL


def test_precision_choices():
    model = tiny_model()
    with pytest.raises(ValueError, match="GPU path"):
        AgeTransGAN.create(model, "cpu", "fp16")
    assert AgeTransGAN.create(model, "cpu", "auto").dtype in (torch.bfloat16, torch.float32)
    assert not AgeTransGAN.create(model, "cpu", "fp32").channels_last


def test_small_configs_share_the_code():
    for size, group in ((64, 4), (128, 10)):
        model = tiny_model(size=size, group=group)
        out = model(torch.zeros(1, 3, size, size), torch.eye(group)[:1], model.make_noise([0]))
        assert out.shape == (1, 3, size, size)
    with pytest.raises(ValueError, match="size"):
        AgeTransGANGenerator(size=100)


def test_residual_output_adds_a_masked_change_and_round_trips(tmp_path):
    """The pack's training option: output = input + sigmoid(mask) * rgb. A new model and a closed mask return
    the input exactly; the option survives save and load, and official-layout weights never carry it."""
    model = tiny_model(size=64, group=10, residual_output=True).eval()
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    code, noise = torch.eye(10)[:2], model.make_noise([0, 1])
    with torch.no_grad():
        assert torch.equal(model(image, code, noise), image)  # the change starts at zero
        for to_rgb in (model.to_rgb1, *model.to_rgbs):
            to_rgb.conv.weight.normal_()
        model.to_mask.bias.fill_(-1e4)
        assert torch.equal(model(image, code, noise), image)
        model.to_mask.bias.fill_(1e4)  # fully open: the decoder's RGB added to the input
        plain = AgeTransGANGenerator(**TINY).eval()
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("to_mask.")})
        assert torch.allclose(model(image, code, noise), image + plain(image, code, noise), atol=1e-6)

    path = tmp_path / "residual.safetensors"
    config = {**TINY, "lr_mlp": 0.01, "residual_output": True}
    save_weights(path, model.state_dict(), "agetransgan_generator", config, preprocessing_for(config))
    loaded = load_generator(path)
    assert loaded.residual_output and infer_config(loaded.state_dict())["residual_output"] is True
    assert "residual_output" not in infer_config(plain.state_dict())


def test_detail_gain_scales_the_inputs_fine_detail_and_round_trips(tmp_path):
    """The pack's second option: output = residual output + gain * (input - blur(input)). A new head has gain 0
    (the output is the residual generator's); a constant gain scales exactly the input's high-pass part."""
    model = tiny_model(size=64, group=10, residual_output=True, detail_gain=True).eval()
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    code, noise = torch.eye(10)[:2], model.make_noise([0, 1])
    with torch.no_grad():
        for to_rgb in (model.to_rgb1, *model.to_rgbs):
            to_rgb.conv.weight.normal_()
        residual = AgeTransGANGenerator(**TINY, residual_output=True).eval()
        residual.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("to_gain.")})
        assert torch.equal(model(image, code, noise), residual(image, code, noise))
        model.to_gain.bias.fill_(0.5)
        assert torch.allclose(model(image, code, noise), residual(image, code, noise) + 0.5 * fine_detail(image), atol=1e-6)
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert fine_detail(flat).abs().max() < 1e-6  # no detail in a flat patch, borders included

    path = tmp_path / "detail.safetensors"
    config = {**TINY, "lr_mlp": 0.01, "residual_output": True, "detail_gain": True}
    save_weights(path, model.state_dict(), "agetransgan_generator", config, preprocessing_for(config))
    loaded = load_generator(path)
    assert loaded.detail_gain and infer_config(loaded.state_dict())["detail_gain"] is True
    assert "detail_gain" not in infer_config(residual.state_dict())
    with pytest.raises(ValueError, match="residual_output"):
        AgeTransGANGenerator(**TINY, detail_gain=True)
