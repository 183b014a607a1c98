"""Stable Diffusion 1.5 + ControlNet through diffusers, fully offline.

Where the weights come from:
- single files, as ComfyUI keeps them: an SD1.5 checkpoint in the original (LDM) layout from
  `models/checkpoints`, a ControlNet from `models/controlnet` (lllyasviel "control_model.*" keys, bare
  LDM keys, or diffusers keys). Their configs come from a folder this module writes from code
  (`write_config_folder`, configs only, no weights), because diffusers would otherwise look the
  configs up on the Hub, even with `local_files_only=True`.
- diffusers folders (`model_index.json` + component folders, and a ControlNet folder with `config.json`).
A name that is not an existing local path is refused: nothing here takes a Hub id.

The CLIP tokenizer is found locally (an explicit folder, the diffusers folder's `tokenizer/`, or
ComfyUI's `comfy/sd1_tokenizer` passed in by the node layer) and validated, because transformers 5
returns a 2-token stub instead of raising when its vocabulary files are missing.

diffusers and transformers are optional (`pip install age-reenact[augment]`); they are imported here
only inside functions, so the rest of the pack imports without them.
"""
from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

INSTALL_HINT = "pip install diffusers transformers accelerate  (or: pip install 'age-reenact[augment]')"
SINGLE_FILE_EXTENSIONS = (".safetensors", ".sft")
TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",))


class AugmenterDependencyError(ImportError):
    """diffusers/transformers are not installed; the message says what to pip install."""


class AugmenterLoadError(RuntimeError):
    """A checkpoint, ControlNet, config or tokenizer the augmenter cannot use; the message says what to do."""


def import_diffusers():
    """The diffusers module, or a clear error naming the packages to install."""
    try:
        import diffusers
        import transformers  # noqa: F401 - the SD pipelines need it; fail here, not mid-load
    except ImportError as exc:
        raise AugmenterDependencyError(f"the ControlNet augmenter needs diffusers and transformers ({exc.name} is missing): {INSTALL_HINT}") from exc
    return diffusers


def dtype_argument(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """The dtype keyword for from_pretrained / from_single_file: `dtype` where diffusers has deprecated
    `torch_dtype` (it warns on every load), `torch_dtype` on the older releases that know no other."""
    from diffusers.utils import deprecation_utils

    return {"dtype": dtype} if hasattr(deprecation_utils, "_resolve_dtype") else {"torch_dtype": dtype}


@dataclass(frozen=True)
class PipelineSpec:
    """Configs of every component of an SD1.x + ControlNet pipeline, as diffusers config dicts."""

    name: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    controlnet: dict[str, Any]
    scheduler: dict[str, Any]

    @property
    def width(self) -> int:
        return self.unet["block_out_channels"][0]

    @property
    def context_dim(self) -> int:
        return self.unet["cross_attention_dim"]

    @property
    def vocab_size(self) -> int:
        return self.text_encoder["vocab_size"]

    @property
    def max_length(self) -> int:
        return self.text_encoder["max_position_embeddings"]


def _sd15_layout(name: str, unet_channels, vae_channels, text: dict[str, int], hint=(16, 32, 96, 256)) -> PipelineSpec:
    """SD1.5's block layout (4 UNet levels with cross-attention in the first three, 4-level VAE) at any width."""
    shared = {
        "in_channels": 4,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "block_out_channels": list(unet_channels),
        "layers_per_block": 2,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "cross_attention_dim": text["hidden_size"],
        "attention_head_dim": 8,
    }
    unet = {**shared, "_class_name": "UNet2DConditionModel", "sample_size": 64, "out_channels": 4,
            "center_input_sample": False, "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
    controlnet = {**shared, "_class_name": "ControlNetModel", "conditioning_channels": 3,
                  "conditioning_embedding_out_channels": list(hint), "controlnet_conditioning_channel_order": "rgb"}
    vae = {
        "_class_name": "AutoencoderKL",
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": list(vae_channels),
        "layers_per_block": 2,
        "act_fn": "silu",
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": 0.18215,
    }
    text_encoder = {
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "max_position_embeddings": 77,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
        **text,
    }
    scheduler = {  # SD1.5's own; the augmenter swaps the class per run with from_config
        "_class_name": "PNDMScheduler",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "clip_sample": False,
        "prediction_type": "epsilon",
    }
    return PipelineSpec(name, unet, vae, text_encoder, controlnet, scheduler)


SD15 = _sd15_layout(
    "sd15", (320, 640, 1280, 1280), (128, 256, 512, 512),
    {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12, "projection_dim": 768},
)
# The same layout (so the same checkpoint key names) at tiny widths: offline tests and smoke runs.
# Its text encoder matches the byte-level stand-in tokenizer of `write_byte_tokenizer`.
BYTE_TOKENIZER_SIZE = 514
SD15_TINY = _sd15_layout(
    "sd15-tiny", (32, 32, 64, 64), (32, 32, 64, 64),
    {"vocab_size": BYTE_TOKENIZER_SIZE, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4, "projection_dim": 32},
)
SPECS = {spec.name: spec for spec in (SD15, SD15_TINY)}


def write_config_folder(spec: PipelineSpec, folder: str | Path) -> Path:
    """A weights-free diffusers folder with the configs of `spec`: what `from_single_file(config=...)` reads."""
    folder = Path(folder)
    files = {
        "model_index.json": {
            "_class_name": "StableDiffusionControlNetImg2ImgPipeline",
            "vae": ["diffusers", "AutoencoderKL"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "controlnet": ["diffusers", "ControlNetModel"],
            "scheduler": ["diffusers", spec.scheduler["_class_name"]],
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
        },
        "unet/config.json": spec.unet,
        "vae/config.json": spec.vae,
        "text_encoder/config.json": spec.text_encoder,
        "controlnet/config.json": spec.controlnet,
        "scheduler/scheduler_config.json": spec.scheduler,
    }
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2))
    return folder


# --- tokenizer -------------------------------------------------------------------------------------


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's byte -> printable character table, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def write_byte_tokenizer(folder: str | Path, max_length: int = 77) -> Path:
    """A CLIP BPE tokenizer with no merges (bytes, bytes + '</w>', 2 specials = 514 tokens).

    The stand-in tokenizer for `SD15_TINY`: it behaves like CLIP's (same classes, padding, specials)
    without the 1.6 MB vocabulary.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
    }))
    return folder


def _has_tokenizer_files(folder: Path) -> bool:
    return any(all((folder / name).is_file() for name in names) for names in TOKENIZER_FILES)


def find_tokenizer(candidates: Iterable[str | Path | None]) -> Path:
    """The first candidate folder that holds CLIP tokenizer files (vocab.json + merges.txt, or tokenizer.json)."""
    tried = []
    for candidate in candidates:
        if not candidate:
            continue
        folder = Path(candidate)
        tried.append(str(folder))
        if folder.is_dir() and _has_tokenizer_files(folder):
            return folder
    raise AugmenterLoadError(
        "no CLIP tokenizer found" + (f" (looked in: {', '.join(tried)})" if tried else "") + ". Give a folder with vocab.json + "
        "merges.txt (ComfyUI ships one in ComfyUI/comfy/sd1_tokenizer; a diffusers SD1.5 folder has one in tokenizer/)."
    )


def check_tokenizer(tokenizer, vocab_size: int, max_length: int, source: str = "tokenizer") -> None:
    """Refuse stub or mismatched tokenizers: their length must be the text encoder's vocabulary size and
    their max length its number of positions."""
    length = len(tokenizer)
    if length != vocab_size:
        raise AugmenterLoadError(
            f"{source}: the tokenizer has {length} tokens but the text encoder expects {vocab_size}. Its vocabulary files are "
            "missing or belong to another model; point the tokenizer to an SD1.5 CLIP tokenizer folder (vocab.json + merges.txt)."
        )
    if tokenizer.model_max_length != max_length:
        raise AugmenterLoadError(f"{source}: tokenizer max length is {tokenizer.model_max_length}, the text encoder takes {max_length} tokens.")


def load_tokenizer(folder: str | Path, vocab_size: int, max_length: int):
    """A validated CLIPTokenizer from a local folder (its max length set to the text encoder's, as ComfyUI's
    own sd1_tokenizer says 8192)."""
    import_diffusers()
    from transformers import CLIPTokenizer

    folder = find_tokenizer([folder])
    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(folder), model_max_length=max_length, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise AugmenterLoadError(f"cannot read the CLIP tokenizer in {folder}: {exc}") from exc
    check_tokenizer(tokenizer, vocab_size, max_length, source=str(folder))
    return tokenizer


# --- checkpoint inspection -------------------------------------------------------------------------

_UNET_WIDTH_KEYS = ("model.diffusion_model.input_blocks.0.0.weight",)
_UNET_CONTEXT_KEYS = ("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",)
_CN_WIDTH_KEYS = ("control_model.input_blocks.0.0.weight", "input_blocks.0.0.weight", "conv_in.weight")
_CN_CONTEXT_KEYS = (
    "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
    "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
)
_TEXT_KEY = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"
_VAE_KEY = "first_stage_model.encoder.conv_in.weight"


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a safetensors file's tensors, read from its header only."""
    if path.suffix.lower() not in SINGLE_FILE_EXTENSIONS:
        raise AugmenterLoadError(f"{path.name}: only .safetensors single files are loaded (pickled .ckpt/.pth files can run code); use the .safetensors release of this model.")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise AugmenterLoadError(f"cannot read {path}: {exc}. The file is damaged or not a safetensors file.") from exc


def _first(shapes: dict, keys: tuple[str, ...]) -> tuple[int, ...] | None:
    return next((shapes[k] for k in keys if k in shapes), None)


def _spec_for(width: int, context: int, path: Path, what: str) -> PipelineSpec:
    for spec in SPECS.values():
        if spec.width == width and spec.context_dim == context:
            return spec
    family = "SD2.x" if context == 1024 else "SDXL" if context == 2048 else f"a model with width {width} and text width {context}"
    raise AugmenterLoadError(f"{path.name}: this {what} is for {family}; the augmenter needs a Stable Diffusion 1.5 {what}.")


def spec_for_checkpoint(path: Path) -> PipelineSpec:
    """Which spec an LDM single-file SD checkpoint matches, from its tensor shapes."""
    shapes = tensor_shapes(path)
    if any(k.startswith("conditioner.embedders.") for k in shapes):
        raise AugmenterLoadError(f"{path.name} is an SDXL checkpoint; the augmenter needs a Stable Diffusion 1.5 checkpoint.")
    width, context = _first(shapes, _UNET_WIDTH_KEYS), _first(shapes, _UNET_CONTEXT_KEYS)
    if width is None or context is None:
        raise AugmenterLoadError(f"{path.name} is not a Stable Diffusion 1.5 checkpoint in the original single-file layout (no 'model.diffusion_model.*' UNet).")
    if _TEXT_KEY not in shapes or _VAE_KEY not in shapes:
        raise AugmenterLoadError(f"{path.name} has no {'text encoder' if _TEXT_KEY not in shapes else 'VAE'}; use a full SD1.5 checkpoint (UNet + VAE + CLIP).")
    return _spec_for(width[0], context[1], path, "checkpoint")


def check_controlnet_file(path: Path, spec: PipelineSpec) -> None:
    shapes = tensor_shapes(path)
    width, context = _first(shapes, _CN_WIDTH_KEYS), _first(shapes, _CN_CONTEXT_KEYS)
    if width is None or context is None:
        raise AugmenterLoadError(f"{path.name} is not a ControlNet (no input blocks found); pick a ControlNet file.")
    if _spec_for(width[0], context[1], path, "ControlNet") is not spec:
        raise AugmenterLoadError(f"{path.name} was made for a different base model than the checkpoint ({spec.name}).")


# --- loading ---------------------------------------------------------------------------------------


@contextmanager
def hub_offline() -> Iterator[None]:
    """Make any Hub request that diffusers or transformers might still try fail at once.

    Setting HF_HUB_OFFLINE in the environment only works before huggingface_hub is imported, which a
    node pack cannot ensure; the module constant is read at call time. Restored afterwards because it
    is process-wide.
    """
    import huggingface_hub.constants as hub_constants

    previous = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = previous


def _local_path(value: str | Path, what: str) -> Path:
    path = Path(value).expanduser()
    if not path.exists():
        raise AugmenterLoadError(f"{what} {str(value)!r} is not a local file or folder (Hub ids are not used; everything loads offline).")
    return path


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise AugmenterLoadError(f"missing config file {path}; the diffusers folder is incomplete.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AugmenterLoadError(f"broken config file {path}: {exc}") from exc


def _check_diffusers_folder(folder: Path) -> None:
    _read_json(folder / "model_index.json")
    for name in ("unet/config.json", "vae/config.json", "text_encoder/config.json", "scheduler/scheduler_config.json"):
        _read_json(folder / name)


def load_controlnet(path: str | Path, spec: PipelineSpec, config_folder: Path, dtype: torch.dtype):
    diffusers = import_diffusers()
    path = _local_path(path, "ControlNet")
    try:
        if path.is_dir():
            _read_json(path / "config.json")
            return diffusers.ControlNetModel.from_pretrained(str(path), **dtype_argument(dtype), local_files_only=True)
        check_controlnet_file(path, spec)
        return diffusers.ControlNetModel.from_single_file(
            str(path), config=str(config_folder), subfolder="controlnet", **dtype_argument(dtype), local_files_only=True
        )
    except AugmenterLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - diffusers raises OSError/ValueError/KeyError/RuntimeError
        raise AugmenterLoadError(f"cannot load the ControlNet {path}: {type(exc).__name__}: {exc}") from exc


def load_pipeline(
    checkpoint: str | Path,
    controlnet: str | Path,
    tokenizer_dirs: Iterable[str | Path | None] = (),
    dtype: torch.dtype = torch.float32,
):
    """StableDiffusionControlNetImg2ImgPipeline from local files only (see the module docstring).

    tokenizer_dirs: candidate tokenizer folders in order of preference; a diffusers checkpoint folder's
    own tokenizer/ is tried first. The configs for single files go to a temporary folder, deleted once
    the models are built.
    """
    diffusers = import_diffusers()
    checkpoint = _local_path(checkpoint, "checkpoint")
    with tempfile.TemporaryDirectory(prefix="age_reenact_sd_config_") as scratch, hub_offline():
        if checkpoint.is_dir():
            _check_diffusers_folder(checkpoint)
            unet_config = _read_json(checkpoint / "unet" / "config.json")
            text_config = _read_json(checkpoint / "text_encoder" / "config.json")
            try:
                width, context = unet_config["block_out_channels"][0], unet_config["cross_attention_dim"]
            except (KeyError, IndexError, TypeError) as exc:
                raise AugmenterLoadError(f"broken config file {checkpoint / 'unet' / 'config.json'}: no block_out_channels/cross_attention_dim.") from exc
            spec = _spec_for(width, context, checkpoint, "checkpoint")
            vocab_size, max_length = text_config.get("vocab_size"), text_config.get("max_position_embeddings")
            tokenizer_dirs = [checkpoint / "tokenizer", *tokenizer_dirs]
        else:
            spec = spec_for_checkpoint(checkpoint)
            vocab_size, max_length = spec.vocab_size, spec.max_length
        config_folder = write_config_folder(spec, scratch)
        tokenizer = load_tokenizer(find_tokenizer(tokenizer_dirs), vocab_size, max_length)
        control = load_controlnet(controlnet, spec, config_folder, dtype)
        common = dict(controlnet=control, tokenizer=tokenizer, safety_checker=None, feature_extractor=None,
                      requires_safety_checker=False, **dtype_argument(dtype), local_files_only=True)
        cls = diffusers.StableDiffusionControlNetImg2ImgPipeline
        try:
            if checkpoint.is_dir():
                pipe = cls.from_pretrained(str(checkpoint), **common)
            else:
                pipe = cls.from_single_file(str(checkpoint), config=str(config_folder), **common)
        except Exception as exc:  # noqa: BLE001 - see load_controlnet
            raise AugmenterLoadError(f"cannot load the Stable Diffusion checkpoint {checkpoint}: {type(exc).__name__}: {exc}") from exc
    _check_compatible(pipe, checkpoint, controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _check_compatible(pipe, checkpoint: Path, controlnet: str | Path) -> None:
    unet, control = pipe.unet.config, pipe.controlnet.config
    if (tuple(unet.block_out_channels), unet.cross_attention_dim) != (tuple(control.block_out_channels), control.cross_attention_dim):
        raise AugmenterLoadError(f"the ControlNet {Path(controlnet).name} does not fit the checkpoint {checkpoint.name}: they are for different base models.")


def build_random_pipeline(spec: PipelineSpec, tokenizer, dtype: torch.dtype = torch.float32, seed: int = 0):
    """A pipeline of randomly initialised models from `spec` (tests, benchmarks); built directly in `dtype`."""
    diffusers = import_diffusers()
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # random init straight in the target precision: no fp32 copy in memory
    try:
        strip = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
        components = dict(
            unet=diffusers.UNet2DConditionModel(**strip(spec.unet)),
            controlnet=diffusers.ControlNetModel(**strip(spec.controlnet)),
            vae=diffusers.AutoencoderKL(**strip(spec.vae)),
            text_encoder=CLIPTextModel(CLIPTextConfig(**{k: v for k, v in spec.text_encoder.items() if k not in ("architectures", "model_type")})),
        )
    finally:
        torch.set_default_dtype(previous)
    scheduler = getattr(diffusers, spec.scheduler["_class_name"]).from_config(spec.scheduler)
    pipe = diffusers.StableDiffusionControlNetImg2ImgPipeline(
        **components, tokenizer=tokenizer, scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
