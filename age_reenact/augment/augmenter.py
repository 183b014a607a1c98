"""The pose augmenter: a source face plus a target pose map -> the same person in the new pose.

ControlNet img2img: the source crop is noised to `strength` (keeping its identity, colours and
lighting as the starting point) and denoised under the pose map. Device and precision follow the
hardware: bf16 on CPU (AVX512-BF16 makes it about a quarter faster per step than fp32), fp16 on GPU with
whole-model offload to the CPU between runs, so only the model that is running holds GPU memory.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ..devices import resolve_device, resolve_dtype
from ..face.align import invert_affine, transform_points
from ..face.crop import FaceCrops
from ..face.paste import paste_crops
from ..images import to_image_batch
from .diffusers_loading import INSTALL_HINT, AugmenterDependencyError, import_diffusers, load_pipeline

SCHEDULERS = {
    "unipc": "UniPCMultistepScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "ddim": "DDIMScheduler",
}


@dataclass(frozen=True)
class AugmentSettings:
    prompt: str = "a high quality photo of a person's face"
    negative_prompt: str = "blurry, deformed, distorted face, cartoon, low quality"
    strength: float = 0.75  # 1 ignores the source image, 0 returns it
    steps: int = 20  # scheduler steps; img2img runs int(steps * strength) of them
    guidance: float = 7.0
    control_scale: float = 1.0
    seed: int = 0  # output i uses seed + i
    size: int = 512
    scheduler: str = "unipc"

    def denoising_steps(self) -> int:
        return min(int(self.steps * self.strength), self.steps)

    def validate(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; choose one of {list(SCHEDULERS)}")
        if self.size % 8 or not 64 <= self.size <= 2048:
            raise ValueError(f"size must be a multiple of 8 between 64 and 2048, got {self.size}")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        if self.denoising_steps() < 1:
            raise ValueError(f"steps x strength = {self.steps} x {self.strength} runs no denoising step; raise steps or strength.")


def _pair(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> int:
    n = max(len(a), len(b))
    if len(a) not in (1, n) or len(b) not in (1, n):
        raise ValueError(f"{len(a)} {names[0]} and {len(b)} {names[1]}: give equal counts, or one of either for all.")
    return n


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """IMAGE [N, H, W, 3] -> [N, 3, size, size] (square crops are expected; others are stretched)."""
    x = images.permute(0, 3, 1, 2)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0, 1)


class PoseAugmenter:
    """A loaded SD1.5 + ControlNet img2img pipeline with its device policy (the AUGMENTER node type)."""

    def __init__(self, pipe, device: str | torch.device = "auto", offload: bool = True, name: str = "augmenter"):
        self.pipe = pipe
        self.device = resolve_device(device)
        self.offload = offload and self.device.type != "cpu"
        self.name = name
        if self.offload:
            if importlib.util.find_spec("accelerate") is None:
                raise AugmenterDependencyError(f"model offload needs accelerate: {INSTALL_HINT} (or turn offload off).")
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    def __repr__(self) -> str:
        return f"PoseAugmenter({self.name}, {self.device}, {str(self.dtype).replace('torch.', '')}, offload={self.offload})"

    @classmethod
    def load(
        cls,
        checkpoint: str | Path,
        controlnet: str | Path,
        tokenizer_dirs: Iterable[str | Path | None] = (),
        device: str = "auto",
        precision: str = "auto",
        offload: bool = True,
    ) -> "PoseAugmenter":
        resolved = resolve_device(device)
        pipe = load_pipeline(checkpoint, controlnet, tokenizer_dirs, dtype=resolve_dtype(precision, resolved))
        return cls(pipe, resolved, offload, name=f"{Path(checkpoint).name} + {Path(controlnet).name}")

    def gpu_bytes(self) -> int:
        """GPU memory one run needs: the UNet and ControlNet weights (resident together while denoising)
        plus room for 512 px activations."""
        weights = sum(p.numel() * p.element_size() for m in (self.pipe.unet, self.pipe.controlnet) for p in m.parameters())
        return weights + 2 * 1024**3

    def _set_scheduler(self, name: str) -> None:
        wanted = SCHEDULERS[name]
        if type(self.pipe.scheduler).__name__ != wanted:
            self.pipe.scheduler = getattr(import_diffusers(), wanted).from_config(self.pipe.scheduler.config)

    @torch.inference_mode()
    def __call__(
        self,
        sources: torch.Tensor,
        pose_maps: torch.Tensor,
        settings: AugmentSettings = AugmentSettings(),
        progress: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """Re-render each source face in its pose map's pose: IMAGE [N, size, size, 3] float32 on the CPU.

        sources and pose_maps are IMAGE batches of equal length, or one of either for all; output i
        uses seed + i, so results do not depend on how a batch is split.
        """
        settings.validate()
        sources = to_image_batch(sources, "source faces")
        pose_maps = to_image_batch(pose_maps, "pose maps")
        count = _pair(sources, pose_maps, ("source faces", "pose maps"))
        self._set_scheduler(settings.scheduler)
        steps = settings.denoising_steps()
        outputs = []
        for i in range(count):
            source = _resize(sources[i if len(sources) > 1 else 0][None], settings.size)
            control = _resize(pose_maps[i if len(pose_maps) > 1 else 0][None], settings.size)

            def on_step(pipe, step, timestep, tensors, done=i * steps):
                if progress is not None:
                    progress(done + step + 1, count * steps)
                return {}

            result = self.pipe(
                prompt=settings.prompt,
                negative_prompt=settings.negative_prompt or None,
                image=source,
                control_image=control,
                height=settings.size,
                width=settings.size,
                strength=settings.strength,
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance,
                controlnet_conditioning_scale=settings.control_scale,
                # A CPU generator gives the same noise on every device.
                generator=torch.Generator("cpu").manual_seed(settings.seed + i),
                output_type="pt",
                callback_on_step_end=on_step,
            )
            outputs.append(result.images[0].float().cpu().permute(1, 2, 0))
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return torch.stack(outputs).clamp(0, 1)


def crops_with_landmarks(face_crops: FaceCrops, crop_landmarks: np.ndarray) -> FaceCrops:
    """A copy of `face_crops` whose landmarks are `crop_landmarks` (crop pixels) mapped back to the frames.

    Paste-back masks follow the landmarks, so pasting a re-posed face with its target landmarks covers
    the face where it now is.
    """
    crop_landmarks = np.asarray(crop_landmarks, dtype=np.float64).reshape(len(face_crops), -1, 2)
    frame_landmarks = np.stack([transform_points(invert_affine(m), lm) for m, lm in zip(face_crops.matrices, crop_landmarks)])
    return replace(face_crops, landmarks=frame_landmarks)


def paste_augmented(
    frames: torch.Tensor,
    augmented: torch.Tensor,
    face_crops: FaceCrops,
    target_landmarks: np.ndarray | None = None,
    feather: float = 0.06,
    color_match: str = "none",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste augmented crops into their frames; the mask follows the target landmarks (crop pixels at the
    crop size) when given, else the source face."""
    if target_landmarks is not None:
        valid = np.isfinite(np.asarray(target_landmarks)).all(axis=(1, 2))
        face_crops = crops_with_landmarks(face_crops, np.where(valid[:, None, None], target_landmarks, face_crops.crop_landmarks()))
    return paste_crops(frames, augmented, face_crops, feather, color_match)
