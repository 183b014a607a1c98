"""Age transformation of frames or face crops with an AgeTransGAN generator.

Frames: detect faces, warp each to AgeTransGAN's own multi-pose template at the model's size (the face
package's 'agetransgan' convention), generate, paste back. Crops: generate directly. Work runs in chunks
of faces, with progress (and ComfyUI's cancel, through the progress callback) after every chunk.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..devices import PRECISIONS, resolve_device, resolve_dtype
from ..face.crop import FaceCrops, detect_crops, extract_crops
from ..face.detect import FaceDetector
from ..face.paste import paste_crops
from ..colour import keep_colourless
from ..images import to_image_batch
from .generator import AgeTransGANGenerator

Progress = Callable[[int, int], None]


SWEEP_FACE_CHOICES = ("largest", "index")  # a sweep ages one face


def check_convention(face_crops: FaceCrops) -> None:
    if face_crops.convention != "agetransgan":
        raise ValueError(
            f"these crops use the '{face_crops.convention}' alignment; AgeTransGAN needs its own: set Face Crop's "
            "crop_convention to 'agetransgan'."
        )


@dataclass
class AgeTransGAN:
    """A generator ready to run: device, compute dtype and memory layout chosen once."""

    model: AgeTransGANGenerator
    device: torch.device
    dtype: torch.dtype
    channels_last: bool

    @classmethod
    def create(cls, model: AgeTransGANGenerator, device: torch.device | str | None = None, precision: str = "auto") -> "AgeTransGAN":
        device = resolve_device(device if device is not None else "auto")
        dtype = resolve_dtype(precision, device)
        # channels_last is the layout cuDNN's tensor-core kernels and oneDNN's AMX bf16 kernels prefer; on
        # this CPU it measured even with the default layout for both fp32 and bf16, so fp32 CPU keeps NCHW.
        channels_last = dtype != torch.float32 or device.type == "cuda"
        return cls(model.eval().to(device), device, dtype, channels_last)

    @property
    def size(self) -> int:
        return self.model.size

    @property
    def group_count(self) -> int:
        return self.model.group

    def to_model_size(self, crops: torch.Tensor) -> torch.Tensor:
        """IMAGE crops [N, s, s, 3] -> [N, size, size, 3] (resampled if s differs)."""
        crops = to_image_batch(crops, "face crops")
        if crops.shape[1] != crops.shape[2]:
            raise ValueError(f"face crops must be square, got {crops.shape[2]}x{crops.shape[1]} px; use Face Crop to make them.")
        if crops.shape[1] == self.size:
            return crops
        resized = F.interpolate(crops.permute(0, 3, 1, 2), size=(self.size, self.size), mode="bicubic", align_corners=False, antialias=True)
        return resized.clamp(0, 1).permute(0, 2, 3, 1)

    @torch.inference_mode()
    def generate(
        self,
        crops: torch.Tensor,
        codes: torch.Tensor,
        seeds: Sequence[int],
        chunk: int = 4,
        progress: Progress | None = None,
    ) -> torch.Tensor:
        """Aligned crops IMAGE [N, size, size, 3] 0..1, codes [N, G], one seed per crop -> IMAGE [N, size, size, 3].

        Each crop's noise comes from its own seed, so a crop gives the same result alone or in any batch.
        Grey parts of a crop stay grey (`keep_colourless`).
        """
        crops = self.to_model_size(crops)
        n = crops.shape[0]
        codes = torch.as_tensor(codes, dtype=torch.float32).reshape(-1, self.group_count)
        if len(codes) != n or len(seeds) != n:
            raise ValueError(f"{n} crop(s) need as many age codes and seeds; got {len(codes)} code(s), {len(seeds)} seed(s).")
        out = torch.empty_like(crops)
        for start in range(0, n, max(1, chunk)):
            stop = min(n, start + max(1, chunk))
            x = (crops[start:stop].permute(0, 3, 1, 2) * 2 - 1).to(self.device, self.dtype)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            noise = self.model.make_noise(seeds[start:stop], self.device, self.dtype)
            y = self.model(x, codes[start:stop].to(self.device), noise)
            out[start:stop] = keep_colourless(crops[start:stop], ((y.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)).cpu()
            if progress is not None:
                progress(stop, n)
        return out

    def crop_faces(
        self,
        frames: torch.Tensor,
        detector: FaceDetector,
        face_choice: str = "largest",
        face_index: int = 0,
        on_no_face: str = "error",
        progress: Progress | None = None,
    ) -> tuple[torch.Tensor, FaceCrops]:
        """Faces of a frame batch aligned to AgeTransGAN's templates at the model's size -> (crops, FaceCrops)."""
        face_crops = detect_crops(frames, detector, "agetransgan", self.size, face_choice, face_index, on_no_face, progress)
        return extract_crops(frames, face_crops), face_crops

    def transform_crops(
        self,
        crops: torch.Tensor,
        face_crops: FaceCrops,
        code: torch.Tensor,
        seed: int,
        seed_per_face: bool = False,
        chunk: int = 4,
        progress: Progress | None = None,
    ) -> torch.Tensor:
        """Age the crops a `FaceCrops` record describes (any square size) -> crops at the model's size.

        One code for every face. The same seed for every face keeps video frames steady; seed_per_face
        uses seed + face number instead. Rows without a face (passed-through frames) are returned as they are.
        """
        check_convention(face_crops)
        crops = self.to_model_size(crops)
        if len(crops) != len(face_crops):
            raise ValueError(f"{len(crops)} crop(s) for {len(face_crops)} face crop record(s); connect the crops that came with it.")
        rows = np.flatnonzero(face_crops.valid).tolist()
        if rows:
            codes = torch.as_tensor(code, dtype=torch.float32).reshape(1, -1).expand(len(rows), -1)
            seeds = [seed + i for i in rows] if seed_per_face else [seed] * len(rows)
            crops[rows] = self.generate(crops[rows], codes, seeds, chunk, progress)
        return crops

    def transform_frames(
        self,
        frames: torch.Tensor,
        detector: FaceDetector,
        code: torch.Tensor,
        seed: int,
        seed_per_face: bool = False,
        face_choice: str = "largest",
        face_index: int = 0,
        on_no_face: str = "error",
        feather: float = 0.06,
        color_match: str = "none",
        chunk: int = 4,
        progress: Progress | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, FaceCrops]:
        """Detect, align, age and paste back every chosen face of a frame batch -> (IMAGE, MASK, FaceCrops)."""
        frames = to_image_batch(frames)
        crops, face_crops = self.crop_faces(frames, detector, face_choice, face_index, on_no_face, progress)
        crops = self.transform_crops(crops, face_crops, code, seed, seed_per_face, chunk, progress)
        image, mask = paste_crops(frames, crops, face_crops, feather, color_match)
        return image, mask, face_crops

    def sweep(self, crop: torch.Tensor, codes: torch.Tensor, seed: int, chunk: int = 4, progress: Progress | None = None) -> torch.Tensor:
        """One aligned crop through many codes with the same noise, so only the age changes: IMAGE [M, size, size, 3]."""
        crop = self.to_model_size(crop)[:1]
        return self.generate(crop.expand(len(codes), -1, -1, -1), codes, [seed] * len(codes), chunk, progress)

    def sweep_frame(
        self,
        frame: torch.Tensor,
        detector: FaceDetector,
        codes: torch.Tensor,
        seed: int,
        paste_back: bool = False,
        feather: float = 0.06,
        chunk: int = 4,
        progress: Progress | None = None,
        face_choice: str = "largest",
        face_index: int = 0,
    ) -> torch.Tensor:
        """One face of one frame (the largest, or the n-th from the left) through many codes: M crops, or M
        copies of the frame with the face pasted in (paste_back)."""
        if face_choice not in SWEEP_FACE_CHOICES:
            raise ValueError(f"a sweep ages one face: face_choice must be one of {SWEEP_FACE_CHOICES}, got {face_choice!r}")
        frame = to_image_batch(frame)[:1]
        crop, face_crops = self.crop_faces(frame, detector, face_choice, face_index)
        aged = self.sweep(crop, codes, seed, chunk, progress)
        if not paste_back:
            return aged
        m = len(aged)
        repeated = replace(face_crops.select([0] * m), frame_index=np.arange(m), num_frames=m)
        return paste_crops(frame.expand(m, -1, -1, -1), aged, repeated, feather)[0]
