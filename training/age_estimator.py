"""Train the project's age estimator (`age_resnet`) on faces with known ages.

    python -m training age_estimator --images DIR [--labels labels.csv] [--images DIR2 --labels CSV2 ...] --out runs/age

Ages come from a CSV (file, age, split) or from UTKFace-style names; with a CSV the `val` rows tune and
`test` rows are left for the final report (`age-reenact evaluate estimator --split test`). Several
`--images`/`--labels` pairs train on their union. `--photo-augment` adds the degradations of real photos
(downscaling, blur, JPEG) and a wider alignment jitter.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from age_reenact.estimator.predict import AgeEstimator, prepare
from age_reenact.estimator.resnet import AgeResNet
from age_reenact.labels import labelled_sources
from age_reenact.weights import save_weights

from .engine import Context, RunConfig, Task, run, training_command
from .face_data import AlignedFaces

PRESETS = {
    "tiny": {"block": "basic", "layers": [1, 1, 1, 1], "widths": [8, 16, 32, 64], "stem_width": 8},
    "small": {"block": "basic", "layers": [2, 2, 2, 2], "widths": [32, 64, 128, 256], "stem_width": 32},
    "medium": {"block": "basic", "layers": [2, 2, 2, 2], "widths": [48, 96, 192, 384], "stem_width": 32},
}
JITTER = {"rotate": 10, "scale": 0.06, "shift": 0.04, "flip": 0.5, "color": 0.25, "grey": 0.1}
# Real photos: detector boxes and landmarks vary more than on dataset chips, many faces are small, soft,
# recompressed or greyscale scans (FG-NET: 17 % grey).
PHOTO_JITTER = {**JITTER, "rotate": 15, "scale": 0.12, "shift": 0.06, "color": 0.3, "grey": 0.2, "downscale": 0.3, "min_size": 24,
                "blur": 0.2, "max_sigma": 1.5, "jpeg": 0.3, "quality": (30, 90)}


def gaussian_targets(ages: torch.Tensor, num_ages: int, sigma: float) -> torch.Tensor:
    """Label distributions: a discretised Gaussian around each true age (DLDL)."""
    grid = torch.arange(num_ages, dtype=torch.float32)
    logits = -((grid[None] - ages[:, None].float()) ** 2) / (2 * sigma**2)
    return logits.softmax(-1)


def age_loss(logits: torch.Tensor, ages: torch.Tensor, loss: str, sigma: float = 2.0, l1_weight: float = 0.1) -> torch.Tensor:
    """'dldl': KL to a Gaussian label distribution plus an L1 term on the expectation; 'ce': cross-entropy."""
    logits = logits.float()
    if loss == "ce":
        return F.cross_entropy(logits, ages.round().long().clamp(0, logits.shape[1] - 1))
    log_p = logits.log_softmax(-1)
    kl = F.kl_div(log_p, gaussian_targets(ages, logits.shape[1], sigma), reduction="batchmean")
    expectation = log_p.exp() @ torch.arange(logits.shape[1], dtype=torch.float32, device=logits.device)
    return kl + l1_weight * (expectation - ages).abs().mean()


class AgeEstimatorTask(Task):
    name = "age_estimator"

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.arch = {**PRESETS[args.preset], "num_ages": 102, "norm": args.norm, "dropout": args.dropout}

    def setup(self, ctx: Context) -> None:
        args = self.args
        items = [i for i in labelled_sources(args.images, args.labels) if i.age is not None]
        if args.limit:
            items = items[: args.limit]
        self.faces = AlignedFaces(items, args.convention, args.size, cache_dir=args.cache_dir)
        splits = np.array([i.split for i in items])
        self.ages = torch.tensor([i.age for i in items], dtype=torch.float32)
        # Unreadable images, and faceless ones with no same-size face to borrow an alignment from, stay black.
        aligned = self.faces.images.max(axis=(1, 2, 3)) > 0
        self.train_index = np.flatnonzero((splits == "train") & aligned)
        self.val_index = np.flatnonzero((splits == "val") & aligned)
        if ctx.is_main:
            print(f"{len(self.train_index)} train / {len(self.val_index)} val faces; {self.faces.fallbacks} without a detected face (median alignment)")
        self.model = ctx.wrap(AgeResNet(**self.arch))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        warmup = max(1, int(0.03 * ctx.config.steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / ctx.config.steps)))
        )

    def state(self) -> dict:
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler}

    def train_step(self, ctx: Context) -> dict[str, float]:
        self.model.train()
        index = ctx.epoch_batch(self.train_index)
        jitter = (PHOTO_JITTER if self.args.photo_augment else JITTER) if self.args.augment else None
        crops = self.faces.crops(index, ctx.generator(), jitter)
        x = prepare(crops, preprocessing(self.args)).to(ctx.device)
        ages = self.ages[index].to(ctx.device)
        with ctx.autocast():
            logits = self.model(x)
        loss = age_loss(logits, ages, self.args.loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": loss.item(), "lr": self.scheduler.get_last_lr()[0]}

    @torch.no_grad()
    def evaluate(self, ctx: Context) -> dict[str, float]:
        if not len(self.val_index):
            return {}
        estimator = AgeEstimator(_unwrapped(self.model), preprocessing(self.args))
        crops = self.faces.crops(self.val_index).permute(0, 2, 3, 1)
        prediction = estimator.estimate_crops(crops, batch_size=64, dtype=torch.bfloat16 if ctx.config.bf16 else torch.float32)
        truth = self.ages[self.val_index]
        return {
            "val_mae_median": float((prediction.median - truth).abs().mean()),
            "val_mae_expectation": float((prediction.expectation - truth).abs().mean()),
        }

    def export(self, ctx: Context, path: Path) -> None:
        provenance = {"data": ", ".join(map(str, self.args.images)), "steps": ctx.step, "command": training_command(), "preset": self.args.preset}
        save_weights(path / "age_estimator.safetensors", _unwrapped(self.model).state_dict(), "age_resnet", self.arch, preprocessing(self.args), provenance)


def preprocessing(args: argparse.Namespace) -> dict:
    """How crops become network input; saved with the weights so every user prepares them the same way."""
    return {"convention": args.convention, "size": args.size, "channels": "rgb", "scale": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3, "readout": "median"}


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, action="append", help="folder of face images (repeat for several)")
    parser.add_argument("--labels", action="append", help="CSV with file, age[, split] per --images; default: ages from UTKFace-style names, all train")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--norm", choices=["batch", "group"], default="batch")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--convention", default="agetransgan")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--loss", choices=["dldl", "ce"], default="dldl")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--no-augment", dest="augment", action="store_false")
    parser.add_argument("--photo-augment", action="store_true", help="real-photo degradations (downscale, blur, JPEG) and wider jitter")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images (smoke tests)")
    parser.add_argument("--cache-dir", default="runs/cache")


def main(args: argparse.Namespace, config: RunConfig) -> dict:
    return run(AgeEstimatorTask(args), config)
