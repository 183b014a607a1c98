"""Age readouts and the estimator pipeline: aligned crops in, ages out.

Every estimator architecture returns logits over integer ages (`model.ages`); its preprocessing metadata
says how crops are prepared (crop convention and size, channel order, scale, mean/std) and which readout
its authors use: the expectation, or the median (which the age-estimation benchmark found better).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import age_groups
from ..face.crop import FaceCrops, detect_crops, extract_crops
from ..face.detect import FaceDetector
from ..weights import build_model, read_weights
from . import convert, resnet, vggface2  # noqa: F401  (registers architectures and converters)

ARCHITECTURES = ("age_resnet", "vggface2_age_resnet50")


@dataclass
class AgePrediction:
    expectation: torch.Tensor  # (B,) years
    median: torch.Tensor  # (B,)
    probabilities: torch.Tensor  # (B, num_ages)
    group_probabilities: torch.Tensor  # (B, 10) FFHQ-Aging groups

    def ages(self, readout: str) -> torch.Tensor:
        return self.median if readout == "median" else self.expectation


def readouts(logits: torch.Tensor, ages: torch.Tensor, groups: age_groups.AgeGroups = age_groups.FFHQ_AGING_10) -> AgePrediction:
    probabilities = logits.float().softmax(-1)
    expectation = probabilities @ ages
    # Posterior median with linear interpolation inside the bin where the CDF crosses 0.5.
    cdf = probabilities.cumsum(-1)
    index = (cdf < 0.5).sum(-1).clamp(max=len(ages) - 1)
    below = torch.where(index > 0, cdf.gather(-1, (index - 1).clamp(min=0)[:, None])[:, 0], torch.zeros_like(expectation))
    mass = probabilities.gather(-1, index[:, None])[:, 0].clamp(min=1e-12)
    median = ages[index] - 0.5 + (0.5 - below) / mass
    group_index = torch.as_tensor(groups.group_of(ages.cpu().numpy()), device=logits.device)
    group_probabilities = torch.zeros(len(logits), groups.count, device=logits.device).index_add_(1, group_index, probabilities)
    return AgePrediction(expectation, median.clamp(min=0), probabilities, group_probabilities)


def prepare(crops: torch.Tensor, preprocessing: dict) -> torch.Tensor:
    """Crops [B, 3, H, W] in 0..1 (already aligned with the estimator's convention) -> network input."""
    size = preprocessing["size"]
    if crops.shape[-1] != size or crops.shape[-2] != size:
        crops = F.interpolate(crops, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if preprocessing.get("channels", "rgb") == "bgr":
        crops = crops.flip(1)
    mean = torch.tensor(preprocessing["mean"], device=crops.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing["std"], device=crops.device).view(1, 3, 1, 1)
    return (crops * preprocessing.get("scale", 1.0) - mean) / std


class AgeEstimator:
    """A loaded estimator with its preprocessing: `estimate_crops` for aligned crops, `estimate` for frames."""

    def __init__(self, model: nn.Module, preprocessing: dict, name: str = "estimator"):
        self.model = model.eval()
        self.preprocessing = preprocessing
        self.name = name

    @classmethod
    def load(cls, path: str | Path) -> "AgeEstimator":
        weights = read_weights(path, ARCHITECTURES)
        return cls(build_model(weights), weights.preprocessing, Path(path).name)

    @property
    def convention(self) -> str:
        return self.preprocessing.get("convention", "agetransgan")

    @property
    def readout(self) -> str:
        return self.preprocessing.get("readout", "median")

    @torch.inference_mode()
    def estimate_crops(self, crops: torch.Tensor, batch_size: int = 32, flip: bool = True, dtype: torch.dtype = torch.float32) -> AgePrediction:
        """Crops IMAGE [N, H, W, 3] aligned with `self.convention`; flip averages the mirrored face's logits."""
        outputs = []
        device = next(self.model.parameters()).device
        for start in range(0, len(crops), batch_size):
            x = prepare(crops[start : start + batch_size].permute(0, 3, 1, 2).to(device), self.preprocessing)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                logits = self.model(x).float()
                if flip:
                    logits = (logits + self.model(x.flip(-1)).float()) / 2
            outputs.append(logits)
        if not outputs:
            empty = torch.zeros(0)
            return AgePrediction(empty, empty, torch.zeros(0, len(self.model.ages)), torch.zeros(0, 10))
        return readouts(torch.cat(outputs), self.model.ages.to(device))

    def estimate(self, images: torch.Tensor, detector: FaceDetector, choice: str = "all", on_no_face: str = "passthrough") -> tuple[np.ndarray, FaceCrops]:
        """Ages of the faces in frames; frames without a face give NaN (reason: no face found)."""
        face_crop = detect_crops(images, detector, self.convention, self.preprocessing["size"], choice, 0, on_no_face)
        found = np.flatnonzero(face_crop.valid)  # frames without a face are not cropped at all (a large photo's centre)
        ages = np.full(len(face_crop), np.nan, dtype=np.float32)
        ages[found] = self.estimate_crops(extract_crops(images, face_crop.select(found))).ages(self.readout).cpu().numpy()
        return ages, face_crop
