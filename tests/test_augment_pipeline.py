"""The ControlNet augmenter with tiny random diffusers models built from config (as diffusers' own tests do).

Everything loads from files these tests write: an SD1.5-layout checkpoint in the original single-file
(LDM) layout, ControlNets in lllyasviel's and diffusers' layouts, a diffusers folder, and a byte-level
CLIP tokenizer. A socket guard fails any test that tries to reach the network.
"""
from __future__ import annotations

import json
import re
import shutil
import socket

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers", reason="the augmenter needs the 'augment' extra (diffusers, transformers)")
pytest.importorskip("transformers", reason="the augmenter needs the 'augment' extra (diffusers, transformers)")

from safetensors.torch import save_file  # noqa: E402

from age_reenact.augment.augmenter import AugmentSettings, PoseAugmenter  # noqa: E402
from age_reenact.devices import cpu_has_fast_bf16, resolve_dtype  # noqa: E402
from age_reenact.augment.diffusers_loading import (  # noqa: E402
    SD15,
    SD15_TINY,
    AugmenterLoadError,
    build_random_pipeline,
    load_pipeline,
    load_tokenizer,
    write_byte_tokenizer,
)

SIZE = 64
FAST = AugmentSettings(prompt="a face", negative_prompt="", strength=0.75, steps=4, guidance=5.0, size=SIZE, seed=3)


# --- diffusers -> original (LDM) single-file layout, the inverse of what diffusers converts on load ----------


def _unet_key(key: str, layers: int) -> str:
    """UNet/ControlNet diffusers key -> LDM key (SD1.x block layout)."""
    step = layers + 1
    rules = [
        (r"^down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda i, j: f"input_blocks.{i * step + j + 1}.0.", True),
        (r"^down_blocks\.(\d+)\.attentions\.(\d+)\.", lambda i, j: f"input_blocks.{i * step + j + 1}.1.", False),
        (r"^down_blocks\.(\d+)\.downsamplers\.0\.conv\.", lambda i: f"input_blocks.{(i + 1) * step}.0.op.", False),
        (r"^mid_block\.resnets\.(\d+)\.", lambda j: f"middle_block.{2 * j}.", True),
        (r"^mid_block\.attentions\.0\.", lambda: "middle_block.1.", False),
        (r"^up_blocks\.(\d+)\.resnets\.(\d+)\.", lambda i, j: f"output_blocks.{i * step + j}.0.", True),
        (r"^up_blocks\.(\d+)\.attentions\.(\d+)\.", lambda i, j: f"output_blocks.{i * step + j}.1.", False),
        (r"^up_blocks\.(\d+)\.upsamplers\.0\.", lambda i: f"output_blocks.{i * step + layers}.{1 if i == 0 else 2}.", False),
        (r"^time_embedding\.linear_(\d)\.", lambda n: f"time_embed.{2 * (n - 1)}.", False),
        (r"^conv_in\.", lambda: "input_blocks.0.0.", False),
        (r"^conv_norm_out\.", lambda: "out.0.", False),
        (r"^conv_out\.", lambda: "out.2.", False),
        (r"^controlnet_down_blocks\.(\d+)\.", lambda i: f"zero_convs.{i}.0.", False),
        (r"^controlnet_mid_block\.", lambda: "middle_block_out.0.", False),
        (r"^controlnet_cond_embedding\.conv_in\.", lambda: "input_hint_block.0.", False),
        (r"^controlnet_cond_embedding\.blocks\.(\d+)\.", lambda i: f"input_hint_block.{2 * i + 2}.", False),
        (r"^controlnet_cond_embedding\.conv_out\.", lambda: "input_hint_block.14.", False),
    ]
    resnet_parts = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
                    "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
    for pattern, target, is_resnet in rules:
        match = re.match(pattern, key)
        if match:
            rest = key[match.end():]
            if is_resnet:
                head, _, tail = rest.partition(".")
                rest = f"{resnet_parts[head]}.{tail}"
            return target(*map(int, match.groups())) + rest
    raise KeyError(key)


def _vae_key(key: str, levels: int) -> str:
    key = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", key)
    key = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", key)
    key = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.", key)
    key = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.", key)
    key = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", key)
    for old, new in (("mid_block.attentions.0.group_norm.", "mid.attn_1.norm."), ("mid_block.attentions.0.to_q.", "mid.attn_1.q."),
                     ("mid_block.attentions.0.to_k.", "mid.attn_1.k."), ("mid_block.attentions.0.to_v.", "mid.attn_1.v."),
                     ("mid_block.attentions.0.to_out.0.", "mid.attn_1.proj_out."), ("conv_norm_out.", "norm_out."), ("conv_shortcut.", "nin_shortcut.")):
        key = key.replace(old, new)
    return key


def ldm_checkpoint(pipe) -> dict[str, torch.Tensor]:
    layers = pipe.unet.config.layers_per_block
    levels = len(pipe.vae.config.block_out_channels)
    out = {"model.diffusion_model." + _unet_key(k, layers): v for k, v in pipe.unet.state_dict().items()}
    for k, v in pipe.vae.state_dict().items():
        if ".attn_1." in _vae_key(k, levels) and v.ndim == 2:
            v = v[:, :, None, None]  # the original VAE attention uses 1x1 convolutions
        out["first_stage_model." + _vae_key(k, levels)] = v
    for k, v in pipe.text_encoder.state_dict().items():
        # transformers >= 5.6 flattened CLIPTextModel; the original layout keeps "text_model."
        out["cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k)] = v
    return {k: v.contiguous() for k, v in out.items()}


def ldm_controlnet(controlnet) -> dict[str, torch.Tensor]:
    layers = controlnet.config.layers_per_block
    return {"control_model." + _unet_key(k, layers): v.contiguous() for k, v in controlnet.state_dict().items()}


# --- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt fails the test at once (instead of a retry loop against the Hub)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield
    assert not attempts, f"tried to reach the network: {attempts[:3]}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random pipeline and its files: LDM checkpoint, ControlNets (two layouts), diffusers folder."""
    root = tmp_path_factory.mktemp("augment")
    tokenizer_dir = write_byte_tokenizer(root / "tokenizer")
    tokenizer = load_tokenizer(tokenizer_dir, SD15_TINY.vocab_size, SD15_TINY.max_length)
    pipe = build_random_pipeline(SD15_TINY, tokenizer, torch.float32, seed=0)
    with torch.no_grad():  # random init leaves ControlNet zero-convs at 0; give them weight so control matters
        for p in pipe.controlnet.parameters():
            if not p.any():
                p.normal_(0, 1.0)
    files = {"root": root, "tokenizer": tokenizer_dir, "pipe": pipe}
    files["checkpoint"] = root / "models" / "checkpoints" / "tiny_sd15.safetensors"
    files["controlnet_ldm"] = root / "models" / "controlnet" / "tiny_cn_ldm.safetensors"
    files["controlnet_diffusers"] = root / "models" / "controlnet" / "tiny_cn_diffusers.safetensors"
    for path in (files["checkpoint"], files["controlnet_ldm"]):
        path.parent.mkdir(parents=True, exist_ok=True)
    save_file(ldm_checkpoint(pipe), str(files["checkpoint"]))
    save_file(ldm_controlnet(pipe.controlnet), str(files["controlnet_ldm"]))
    save_file({k: v.contiguous() for k, v in pipe.controlnet.state_dict().items()}, str(files["controlnet_diffusers"]))
    files["folder"] = root / "models" / "diffusers" / "tiny_sd15"
    pipe.save_pretrained(files["folder"])
    return files


def generate(pipe, seed: int = 3) -> torch.Tensor:
    torch.manual_seed(0)
    source, control = torch.rand(1, 3, SIZE, SIZE), torch.rand(1, 3, SIZE, SIZE)
    return pipe(prompt="a face", image=source, control_image=control, strength=0.75, num_inference_steps=4, guidance_scale=5.0,
                generator=torch.Generator().manual_seed(seed), output_type="pt").images


# --- loading -------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("error:.*torch_dtype")  # diffusers' deprecation of torch_dtype: loads pass dtype
@pytest.mark.parametrize("controlnet", ["controlnet_ldm", "controlnet_diffusers"])
def test_single_files_load_offline_with_identical_weights(tiny, controlnet):
    pipe = load_pipeline(tiny["checkpoint"], tiny[controlnet], [tiny["tokenizer"]])
    reference = tiny["pipe"]
    for name in ("unet", "vae", "text_encoder", "controlnet"):
        loaded, original = getattr(pipe, name).state_dict(), getattr(reference, name).state_dict()
        common = [k for k in original if k in loaded]
        assert len(common) >= len(original) - 1, name  # CLIP may drop its position_ids buffer
        assert all(torch.equal(loaded[k].float(), original[k].float().reshape(loaded[k].shape)) for k in common), name
    assert torch.allclose(generate(pipe), generate(reference), atol=1e-5)


@pytest.mark.filterwarnings("error:.*torch_dtype")
def test_diffusers_folder_loads_offline_with_its_own_tokenizer(tiny):
    pipe = load_pipeline(tiny["folder"], tiny["folder"] / "controlnet")
    assert len(pipe.tokenizer) == SD15_TINY.vocab_size and pipe.tokenizer.model_max_length == 77
    assert torch.allclose(generate(pipe), generate(tiny["pipe"]), atol=1e-5)


def test_config_folder_matches_real_sd15_sizes(tmp_path):
    """The SD1.5 configs written from code build models of SD1.5's known sizes (on the meta device)."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    strip = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    with torch.device("meta"):
        sizes = {
            "unet": UNet2DConditionModel(**strip(SD15.unet)),
            "controlnet": ControlNetModel(**strip(SD15.controlnet)),
            "vae": AutoencoderKL(**strip(SD15.vae)),
            "text": CLIPTextModel(CLIPTextConfig(**{k: v for k, v in SD15.text_encoder.items() if k not in ("architectures", "model_type")})),
        }
    millions = {k: round(sum(p.numel() for p in m.parameters()) / 1e6, 2) for k, m in sizes.items()}
    assert millions == {"unet": 859.52, "controlnet": 361.28, "vae": 83.65, "text": 123.06}


def test_missing_or_broken_tokenizer_is_a_clear_error(tiny, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AugmenterLoadError, match="no CLIP tokenizer found"):
        load_pipeline(tiny["checkpoint"], tiny["controlnet_ldm"], [empty])
    stub = tmp_path / "stub"  # loads "fine" in transformers 5, with a handful of tokens
    stub.mkdir()
    (stub / "vocab.json").write_text(json.dumps({"a</w>": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}))
    (stub / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(AugmenterLoadError, match=r"has \d+ tokens but the text encoder expects 514"):
        load_pipeline(tiny["checkpoint"], tiny["controlnet_ldm"], [stub])
    folder = tmp_path / "folder"  # a diffusers folder whose tokenizer lost its vocabulary
    shutil.copytree(tiny["folder"], folder)
    for path in (folder / "tokenizer").iterdir():
        if path.name != "tokenizer_config.json":
            path.unlink()
    with pytest.raises(AugmenterLoadError, match="no CLIP tokenizer found"):
        load_pipeline(folder, folder / "controlnet")


def test_missing_or_broken_config_is_a_clear_error(tiny, tmp_path):
    folder = tmp_path / "folder"
    shutil.copytree(tiny["folder"], folder)
    (folder / "unet" / "config.json").write_text("{ not json")
    with pytest.raises(AugmenterLoadError, match=r"broken config file .*unet"):
        load_pipeline(folder, folder / "controlnet")
    (folder / "unet" / "config.json").unlink()
    with pytest.raises(AugmenterLoadError, match=r"missing config file .*unet"):
        load_pipeline(folder, folder / "controlnet")
    (folder / "controlnet" / "config.json").unlink()
    with pytest.raises(AugmenterLoadError, match=r"missing config file .*controlnet"):
        load_pipeline(tiny["folder"], folder / "controlnet", [tiny["tokenizer"]])


def test_hub_ids_wrong_and_damaged_files_are_refused(tiny, tmp_path):
    with pytest.raises(AugmenterLoadError, match="not a local file or folder"):
        load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5", tiny["controlnet_ldm"], [tiny["tokenizer"]])
    with pytest.raises(AugmenterLoadError, match="not a ControlNet"):
        load_pipeline(tiny["checkpoint"], tiny["checkpoint"], [tiny["tokenizer"]])
    with pytest.raises(AugmenterLoadError, match="not a Stable Diffusion 1.5 checkpoint"):
        load_pipeline(tiny["controlnet_ldm"], tiny["controlnet_ldm"], [tiny["tokenizer"]])
    sdxl = tmp_path / "sdxl.safetensors"
    save_file({"conditioner.embedders.0.transformer.text_model.embeddings.position_ids": torch.zeros(1, 77)}, str(sdxl))
    with pytest.raises(AugmenterLoadError, match="SDXL"):
        load_pipeline(sdxl, tiny["controlnet_ldm"], [tiny["tokenizer"]])
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(tiny["checkpoint"].read_bytes()[:1000])
    with pytest.raises(AugmenterLoadError, match="damaged"):
        load_pipeline(damaged, tiny["controlnet_ldm"], [tiny["tokenizer"]])
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"\x80")
    with pytest.raises(AugmenterLoadError, match="only .safetensors"):
        load_pipeline(pickle, tiny["controlnet_ldm"], [tiny["tokenizer"]])


# --- augmenter and nodes -------------------------------------------------------------------------------


def test_precision_policy():
    assert resolve_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if cpu_has_fast_bf16() else torch.float32)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("fp32", torch.device("cpu")) == torch.float32
    with pytest.raises(ValueError, match="no denoising step"):
        AugmentSettings(steps=2, strength=0.3).validate()


def test_augmenter_is_deterministic_pairs_batches_and_follows_the_pose_map(tiny):
    augmenter = PoseAugmenter(tiny["pipe"], "cpu")
    source = torch.rand(1, 80, 80, 3)  # any square size: resized to the working size
    maps = torch.zeros(2, SIZE, SIZE, 3)
    maps[1, 20:40, 20:40] = 1.0
    calls = []
    out = augmenter(source, maps, FAST, progress=lambda done, total: calls.append((done, total)))
    assert out.shape == (2, SIZE, SIZE, 3) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    assert calls[-1] == (2 * FAST.denoising_steps(), 2 * FAST.denoising_steps())
    next_seed = AugmentSettings(**{**FAST.__dict__, "seed": FAST.seed + 1})
    assert torch.allclose(augmenter(source, maps[1:], next_seed)[0], out[1], atol=1e-6)  # output i uses seed + i
    # Same seed and source, another pose map: another image (random decoders shrink differences, so the
    # bound is small, but far above the run-to-run noise checked just above).
    other_map = augmenter(source, maps[:1], next_seed)[0]
    assert (other_map - out[1]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="give equal counts"):
        augmenter(torch.rand(2, SIZE, SIZE, 3), torch.rand(3, SIZE, SIZE, 3), FAST)


def test_nodes_run_end_to_end_at_64px(pack, tiny, einstein, monkeypatch):
    from age_reenact.face.crop import crops_from_points, extract_crops
    from age_reenact.face.templates import five_points_from_68

    monkeypatch.setenv("AGE_REENACT_MODELS", str(tiny["root"] / "models"))
    nodes = pack.nodes.NODE_CLASS_MAPPINGS
    loader = nodes["AgeReenactAugmenterLoader"]
    choices = loader.INPUT_TYPES()["required"]
    assert "tiny_sd15.safetensors" in choices["checkpoint"][0] and "diffusers/tiny_sd15" in choices["checkpoint"][0]
    assert "tiny_cn_ldm.safetensors" in choices["controlnet"][0]
    (augmenter,) = loader().load("tiny_sd15.safetensors", "tiny_cn_ldm.safetensors", "fp32", "cpu", True, str(tiny["tokenizer"]))
    assert augmenter.dtype == torch.float32

    image, points = einstein
    face_crop = crops_from_points(image.shape[1:3], 1, [0], [points], [five_points_from_68(points)], "agetransgan", SIZE)
    crops = extract_crops(image, face_crop)
    pose = nodes["AgeReenactFacePoseMap"]().make(face_crop, "openpose_face", 30.0, 0.0, 0.0, True, 0)
    pose_map, face_pose = pose["result"]
    assert pose_map.shape == (1, SIZE, SIZE, 3) and pose_map.max() == 1.0
    assert "yaw" in pose["ui"]["text"][0]
    driven = nodes["AgeReenactFacePoseMap"]().make(face_crop, "mediapipe_face", 0.0, 0.0, 0.0, True, 0, face_crop, "landmarks")
    assert np.allclose(driven["result"][1].landmarks, face_crop.crop_landmarks())  # driven by itself: unchanged
    node = nodes["AgeReenactAugmentPose"]()
    out, pasted, mask = node.augment(augmenter, crops, pose_map, "a face", "", 0.75, 4, 5.0, 1.0, 0, SIZE, "unipc",
                                     frames=image, face_crop=face_crop, face_pose=face_pose)
    assert out.shape == (1, SIZE, SIZE, 3)
    assert pasted.shape == image.shape and mask.shape == image.shape[:3] and mask.max() > 0.5
    assert torch.equal(pasted[mask == 0], image[mask == 0])  # outside the face nothing changes
    alone = node.augment(augmenter, crops, pose_map, "a face", "", 0.75, 4, 5.0, 1.0, 0, SIZE, "ddim")
    assert alone[1].shape == (1, SIZE, SIZE, 3) and alone[2].shape == (1, SIZE, SIZE)


def test_loader_node_without_diffusers_says_what_to_install(pack, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_diffusers(name, *args, **kwargs):
        if name.split(".")[0] in ("diffusers", "transformers"):
            raise ImportError(f"No module named '{name}'", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_diffusers)
    loader = pack.nodes.NODE_CLASS_MAPPINGS["AgeReenactAugmenterLoader"]()
    with pytest.raises(ImportError, match="pip install diffusers transformers accelerate"):
        loader.load("sd15.safetensors", "openpose.safetensors", "auto", "auto", True)
