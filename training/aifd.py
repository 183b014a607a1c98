"""Train the AIFD identity encoder E_A (the MI loss's encoder) on LFW identities and UTKFace ages.

    python -m training aifd --lfw ../shared/data/lfw --utkface ../shared/data/utkface-part1 --out runs/aifd

Losses, each weighted from the command line:
- identity: CosFace on the embedding of LFW train people with two or more images;
- distillation: cosine between a projection of the embedding and dlib's 128-d embedding (the teacher,
  computed once by `python -m training.identity_teacher`), on LFW and UTKFace train faces;
- age: the age head on the age part of the feature maps, with UTKFace ages (label distribution + L1);
- decorrelation: an age classifier on the identity part, trained through gradient reversal, so the
  identity part carries as little age as it can.
LFW `test` people are never trained on; they give the verification accuracy (threshold chosen on train
people) reported in the metrics.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from age_reenact.aifd.encoder import PREPROCESSING, AIFDEncoder
from age_reenact.evaluation.identity_eval import best_threshold, train_pairs
from age_reenact.labels import LabelledImage, lfw_items, lfw_pairs, read_labels
from age_reenact.weights import save_weights

from .age_estimator import age_loss
from .engine import Context, RunConfig, Task, run, training_command
from .face_data import AlignedFaces
from .identity_teacher import teacher_embeddings

PRESETS = {
    "tiny": {"depth": [1, 1, 1, 1], "widths": [8, 16, 32, 32], "embedding_dim": 32},
    "small": {"depth": [1, 2, 2, 1], "widths": [32, 64, 128, 256], "embedding_dim": 256},
}
JITTER = {"rotate": 6, "scale": 0.05, "shift": 0.03, "flip": 0.5, "color": 0.2, "grey": 0.1}


class GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.weight * grad, None


class TrainingHeads(nn.Module):
    """What only training needs: CosFace class centres, the teacher projection, the identity-part age probe."""

    def __init__(self, embedding_dim: int, classes: int, channels: int, num_ages: int, teacher_dim: int = 128):
        super().__init__()
        self.centres = nn.Parameter(torch.randn(classes, embedding_dim) * 0.01)
        self.to_teacher = nn.Linear(embedding_dim, teacher_dim)
        self.adversary = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 128), nn.ReLU(), nn.Linear(128, num_ages))

    def cosface(self, embedding: torch.Tensor, labels: torch.Tensor, scale: float = 30.0, margin: float = 0.35) -> torch.Tensor:
        cos = F.normalize(embedding.float(), dim=1) @ F.normalize(self.centres.float(), dim=1).T
        cos = cos - margin * F.one_hot(labels, cos.shape[1])
        return F.cross_entropy(scale * cos, labels)


class AIFDTrainer(nn.Module):
    """Encoder and training heads in one module, so one forward runs under DDP."""

    def __init__(self, encoder: AIFDEncoder, heads: TrainingHeads, adversary_weight: float):
        super().__init__()
        self.encoder, self.heads, self.adversary_weight = encoder, heads, adversary_weight

    def forward(self, faces: torch.Tensor, n_age: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embeddings of all faces; age logits from the age part and the identity part of the last n_age."""
        x_id, x_age = self.encoder.decompose(faces)
        _, age_logits, _ = self.encoder.age_estimator(x_age[-n_age:])
        adversary_logits = self.heads.adversary(GradientReversal.apply(x_id[-n_age:], self.adversary_weight))
        return self.encoder.output_layer(x_id), age_logits, adversary_logits


class AIFDTask(Task):
    name = "aifd"

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.arch = {**PRESETS[args.preset], "afd_variant": args.afd_variant, "input_size": 112, "num_age_classes": 101, "num_age_groups": 7, "dropout": 0.2}

    def setup(self, ctx: Context) -> None:
        args = self.args
        lfw = lfw_items(args.lfw, split="train")
        utk = [i for i in read_labels(args.utkface, Path(args.utkface) / "labels.csv", split="train") if i.age is not None]
        if args.limit:
            lfw, utk = lfw[: args.limit], utk[: args.limit]
        self.lfw = AlignedFaces(lfw, "arcface", 112, cache_dir=args.cache_dir)
        self.utk = AlignedFaces(utk, "arcface", 112, cache_dir=args.cache_dir)
        people = np.array([i.person for i in lfw])
        self.lfw_people = people.tolist()
        names, counts = np.unique(people, return_counts=True)
        classes = {n: k for k, n in enumerate(names[counts >= 2])}
        self.lfw_labels = torch.tensor([classes.get(p, -1) for p in people])
        self.utk_ages = torch.tensor([i.age for i in utk], dtype=torch.float32)
        self.lfw_teacher = self._teacher([i.path for i in lfw])
        self.utk_teacher = self._teacher([i.path for i in utk])
        self.lfw_index = np.flatnonzero((self.lfw_labels >= 0).numpy() | np.isfinite(self.lfw_teacher[:, 0].numpy()))
        if ctx.is_main:
            print(f"LFW train: {len(lfw)} faces, {len(classes)} identities with 2+ images; UTKFace train: {len(utk)} faces")
        self.encoder = AIFDEncoder(**self.arch)
        self.heads = TrainingHeads(self.arch["embedding_dim"], max(1, len(classes)), self.arch["widths"][-1], 101)
        # The age head's group layer is in the module but not in these losses, hence find_unused.
        self.trainer = ctx.wrap(AIFDTrainer(self.encoder, self.heads, args.adversary_weight), find_unused=True)
        self.optimizer = torch.optim.AdamW([p for p in self.trainer.parameters() if p.requires_grad], lr=args.lr, weight_decay=5e-4)
        warmup = max(1, int(0.03 * ctx.config.steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / ctx.config.steps)))
        )
        self._pairs = None

    def _teacher(self, paths: list[Path]) -> torch.Tensor:
        if not self.args.distill:
            return torch.full((len(paths), 128), float("nan"))
        return F.normalize(torch.from_numpy(teacher_embeddings(paths, self.args.cache_dir)), dim=1)

    def state(self) -> dict:
        return {"encoder": self.encoder, "heads": self.heads, "optimizer": self.optimizer, "scheduler": self.scheduler}

    def _draw(self, ctx: Context, pool: np.ndarray, count: int, stream: int) -> np.ndarray:
        generator = ctx.generator(stream=stream)
        return pool[torch.randint(len(pool), (count,), generator=generator).numpy()]

    def train_step(self, ctx: Context) -> dict[str, float]:
        args = self.args
        self.trainer.train()
        n_utk = max(1, int(round(ctx.local_batch * args.utk_share)))
        lfw_rows = self._draw(ctx, self.lfw_index, ctx.local_batch - n_utk, 1)
        utk_rows = self._draw(ctx, np.arange(len(self.utk)), n_utk, 2)
        generator = ctx.generator(stream=3)
        faces = torch.cat([self.lfw.crops(lfw_rows, generator, JITTER), self.utk.crops(utk_rows, generator, JITTER)]).to(ctx.device) * 2 - 1
        labels = torch.cat([self.lfw_labels[lfw_rows], torch.full((n_utk,), -1)]).to(ctx.device)
        teacher = torch.cat([self.lfw_teacher[lfw_rows], self.utk_teacher[utk_rows]]).to(ctx.device)
        ages = self.utk_ages[utk_rows].to(ctx.device)
        heads = self.heads
        with ctx.autocast():
            embedding, age_logits, adversary_logits = self.trainer(faces, n_utk)
        losses = {}
        known = labels >= 0
        losses["cosface"] = heads.cosface(embedding[known], labels[known]) if known.any() else embedding.sum() * 0
        taught = torch.isfinite(teacher[:, 0])
        if taught.any():
            student = F.normalize(heads.to_teacher(embedding[taught].float()), dim=1)
            losses["distill"] = (1 - (student * teacher[taught]).sum(1)).mean()
        else:
            losses["distill"] = embedding.sum() * 0
        losses["age"] = age_loss(age_logits, ages.clamp(max=100), "dldl")
        losses["adversary"] = age_loss(adversary_logits, ages.clamp(max=100), "dldl")
        total = losses["cosface"] + args.distill_weight * losses["distill"] + args.age_weight * losses["age"] + losses["adversary"]
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.scheduler.step()
        return {**{k: v.item() for k, v in losses.items()}, "lr": self.scheduler.get_last_lr()[0]}

    @torch.no_grad()
    def embed(self, faces: AlignedFaces, rows: np.ndarray, ctx: Context) -> torch.Tensor:
        encoder = self.encoder.eval()
        out = []
        for start in range(0, len(rows), 128):
            x = faces.crops(rows[start : start + 128]).to(ctx.device) * 2 - 1
            with ctx.autocast():
                out.append(F.normalize((encoder(x).float() + encoder(x.flip(-1)).float()), dim=1))
        return torch.cat(out).cpu()

    def _verification_sets(self, ctx: Context):
        if self._pairs is None:
            test_pairs = lfw_pairs(self.args.lfw)
            test_paths = sorted({p for a, b, _ in test_pairs for p in (a, b)})
            test_faces = AlignedFaces([LabelledImage(p, None) for p in test_paths], "arcface", 112, cache_dir=self.args.cache_dir)
            where = {p: k for k, p in enumerate(test_paths)}
            test = (np.array([where[a] for a, _, _ in test_pairs]), np.array([where[b] for _, b, _ in test_pairs]), np.array([s for *_, s in test_pairs]))
            self._pairs = (test_faces, test, train_pairs(self.lfw_people, seed=ctx.config.seed))
        return self._pairs

    def evaluate(self, ctx: Context) -> dict[str, float]:
        if not ctx.is_main or self.args.limit or not (Path(self.args.lfw) / "pairs_test.csv").is_file():
            return {}
        test_faces, (a, b, same), (ta, tb, tsame) = self._verification_sets(ctx)
        train_rows = np.unique(np.concatenate([ta, tb]))
        train_embeddings = dict(zip(train_rows.tolist(), self.embed(self.lfw, train_rows, ctx)))
        train_scores = np.array([float(train_embeddings[i] @ train_embeddings[j]) for i, j in zip(ta, tb)])
        threshold = best_threshold(train_scores, tsame)
        test_embeddings = self.embed(test_faces, np.arange(len(test_faces)), ctx)
        scores = (test_embeddings[a] * test_embeddings[b]).sum(1).numpy()
        return {"lfw_test_accuracy": float(((scores > threshold) == same).mean()), "threshold": threshold}

    def export(self, ctx: Context, path: Path) -> None:
        state = {k: v.half() if v.is_floating_point() else v for k, v in self.encoder.state_dict().items()}  # fp16 keeps it under 25 MB
        provenance = {"data": "LFW train people + UTKFace train split", "steps": ctx.step, "command": training_command(), "preset": self.args.preset}
        save_weights(path / "aifd_encoder.safetensors", state, "aifd_encoder", self.arch, PREPROCESSING, provenance)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lfw", required=True, help="LFW-style folder (people.csv, images/)")
    parser.add_argument("--utkface", required=True, help="UTKFace-style folder with labels.csv")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--afd-variant", choices=["cvpr", "tpami"], default="cvpr")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--utk-share", type=float, default=0.25, help="share of each batch from UTKFace")
    parser.add_argument("--no-distill", dest="distill", action="store_false", help="skip the dlib teacher")
    parser.add_argument("--distill-weight", type=float, default=4.0)
    parser.add_argument("--age-weight", type=float, default=0.5)
    parser.add_argument("--adversary-weight", type=float, default=0.1, help="gradient reversal strength")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N faces of each set (smoke tests)")
    parser.add_argument("--cache-dir", default="runs/cache")


def main(args: argparse.Namespace, config: RunConfig) -> dict:
    return run(AIFDTask(args), config)
