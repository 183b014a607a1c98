"""Train the AIFD identity encoder E_A (the MI loss's encoder) on LFW identities and UTKFace ages.

    python -m training aifd --lfw ../shared/data/lfw --utkface ../shared/data/utkface-part1 --out runs/aifd

Losses, each weighted from the command line:
- identity: CosFace on the embedding of LFW train people with two or more images;
- distillation: cosine between a projection of the embedding and dlib's 128-d embedding (the teacher,
  computed once by `python -m training.identity_teacher`), on LFW and UTKFace train faces; dlib's
  embedding carries age (a probe reads it to 5.7 years MAE on UTKFace), so on UTKFace, where ages are
  known, the teacher's mean at each age is first taken out (`age_neutral`);
- age: the age head on the age part of the feature maps, with UTKFace ages (label distribution + L1);
- decorrelation: age classifiers on the identity part and on the identity embedding, trained through
  gradient reversal, plus a penalty on the best linear read-out of age from each (`LinearAgeReadout`),
  so neither carries more age than it must.
`--init` starts from an encoder file (this pack's, or MTLFace's converted one); the CosFace centres and
the teacher projection are then fitted to its embeddings first, so fine-tuning starts from its optimum.
LFW `test` people are never trained on; they give the verification accuracy (threshold chosen on train
people) reported in the metrics, beside the age probes of `age-reenact evaluate identity` on UTKFace's
`val` split (so the decomposition can be watched without touching `test`).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from age_reenact.aifd.encoder import ARCHITECTURE, PREPROCESSING, AIFDEncoder, encoder_from
from age_reenact.aifd.similarity import UNIT, identity_embedding
from age_reenact.evaluation.identity_eval import best_threshold, encoder_outputs, probe_maes, train_pairs
from age_reenact.labels import LabelledImage, lfw_items, lfw_pairs, read_labels
from age_reenact.weights import WeightsError, read_weights, save_weights

from .age_estimator import age_loss
from .engine import Context, RunConfig, Task, run, training_command
from .face_data import AlignedFaces
from .identity_teacher import teacher_embeddings

PRESETS = {
    "tiny": {"depth": [1, 1, 1, 1], "widths": [8, 16, 32, 32], "embedding_dim": 32},
    "small": {"depth": [1, 2, 2, 1], "widths": [32, 64, 128, 256], "embedding_dim": 256},
}
JITTER = {"rotate": 6, "scale": 0.05, "shift": 0.03, "flip": 0.5, "color": 0.2, "grey": 0.1}
PROBE_TRAIN_FACES = 3000  # UTKFace train faces the evaluation's age probes are fitted on


def age_neutral(teacher: torch.Tensor, ages: torch.Tensor, years_per_bin: int = 5) -> torch.Tensor:
    """Unit teacher embeddings with each age bin's mean replaced by the overall mean (NaN rows stay NaN),
    so distillation does not pull the age the teacher carries into the identity embedding."""
    known = torch.isfinite(teacher[:, 0])
    if not known.any():
        return teacher
    bins = (ages.clamp(min=0) // years_per_bin).long()
    count = torch.bincount(bins[known], minlength=int(bins.max()) + 1).clamp(min=1)[:, None].float()
    means = torch.zeros(len(count), teacher.shape[1]).index_add_(0, bins[known], teacher[known]) / count
    return F.normalize(teacher - means[bins] + teacher[known].mean(0), dim=1)


AGE_CENTRES = (1.0, 4.5, 8.0, 12.0, 17.0, 25.0, 35.0, 45.0, 60.0, 80.0)  # about the 10 output age groups


def age_targets(ages: torch.Tensor) -> torch.Tensor:
    """[B] ages -> [B, 11]: age itself and a soft membership of each age group, what a probe might read."""
    bumps = torch.exp(-0.5 * ((ages[:, None] - torch.tensor(AGE_CENTRES, device=ages.device)) / 6.0) ** 2)
    return torch.cat([ages[:, None] / 100, bumps], 1)


class LinearAgeReadout:
    """The best linear read-out of `age_targets` from features, refitted every step (ridge regression) on a
    memory of recent faces; its penalty is the squared correlation between that read-out of the live
    features and the targets. Unlike an adversary trained alongside, it never lags behind the encoder."""

    def __init__(self, memory: int = 2048, ridge: float = 0.1, warmup: int = 256):
        self.memory, self.ridge, self.warmup = memory, ridge, warmup
        self.features: torch.Tensor | None = None
        self.ages: torch.Tensor | None = None

    def penalty(self, features: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
        features, ages = features.float(), ages.float()
        stored = features.detach() if self.features is None else torch.cat([self.features, features.detach()])
        stored_ages = ages if self.ages is None else torch.cat([self.ages, ages])
        self.features, self.ages = stored[-self.memory :], stored_ages[-self.memory :]
        if len(self.ages) < self.warmup or len(ages) < 3:
            return features.sum() * 0
        mean, std = self.features.mean(0), self.features.std(0) + 1e-6
        z = (self.features - mean) / std
        targets = age_targets(self.ages)
        t_mean, t_std = targets.mean(0), targets.std(0) + 1e-6
        gram = z.T @ z / len(z) + self.ridge * torch.eye(z.shape[1], device=z.device)
        weights = torch.linalg.solve(gram, z.T @ ((targets - t_mean) / t_std) / len(z))
        readout = ((features - mean) / std) @ weights
        truth = (age_targets(ages) - t_mean) / t_std
        readout, truth = readout - readout.mean(0), truth - truth.mean(0)
        correlation = (readout * truth).sum(0) / (readout.norm(dim=0) * truth.norm(dim=0) + 1e-6)
        return (correlation**2).mean()


class GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.weight * grad, None


def age_adversary(width: int, num_ages: int) -> nn.Sequential:
    """Features [B, width] -> age logits; standardised first, like the evaluation's probes, so that shrinking
    a feature's scale cannot hide the age it carries."""
    return nn.Sequential(nn.BatchNorm1d(width, affine=False), nn.Linear(width, 128), nn.ReLU(), nn.Linear(128, num_ages))


class TrainingHeads(nn.Module):
    """What only training needs: CosFace class centres, the teacher projection, the two age adversaries."""

    def __init__(self, embedding_dim: int, classes: int, channels: int, num_ages: int, teacher_dim: int = 128):
        super().__init__()
        self.centres = nn.Parameter(torch.randn(classes, embedding_dim) * 0.01)
        self.to_teacher = nn.Linear(embedding_dim, teacher_dim)
        self.adversary = age_adversary(channels, num_ages)  # on the pooled identity part
        self.embedding_adversary = age_adversary(embedding_dim, num_ages)

    def cosface(self, embedding: torch.Tensor, labels: torch.Tensor, scale: float = 30.0, margin: float = 0.35) -> torch.Tensor:
        cos = F.normalize(embedding.float(), dim=1) @ F.normalize(self.centres.float(), dim=1).T
        cos = cos - margin * F.one_hot(labels, cos.shape[1])
        return F.cross_entropy(scale * cos, labels)


class AIFDTrainer(nn.Module):
    """Encoder and training heads in one module, so one forward runs under DDP."""

    def __init__(self, encoder: AIFDEncoder, heads: TrainingHeads, adversary_weight: float, embedding_adversary_weight: float):
        super().__init__()
        self.encoder, self.heads = encoder, heads
        self.adversary_weight, self.embedding_adversary_weight = adversary_weight, embedding_adversary_weight

    def forward(self, faces: torch.Tensor, n_age: int) -> dict[str, torch.Tensor]:
        """Embeddings of all faces; for the last n_age (the aged faces), the age logits of the age part, the
        pooled identity part and the unit embedding, and the two adversaries' age logits."""
        x_id, x_age = self.encoder.decompose(faces)
        embedding = self.encoder.output_layer(x_id)
        _, age_logits, _ = self.encoder.age_estimator(x_age[-n_age:])
        identity_part = x_id[-n_age:].float().mean((2, 3))
        unit_embedding = F.normalize(embedding[-n_age:].float(), dim=1)
        return {
            "embedding": embedding,
            "age_logits": age_logits,
            "identity_part": identity_part,
            "unit_embedding": unit_embedding,
            "adversary_logits": self.heads.adversary(GradientReversal.apply(identity_part, self.adversary_weight)),
            "embedding_adversary_logits": self.heads.embedding_adversary(GradientReversal.apply(unit_embedding, self.embedding_adversary_weight)),
        }


def uint8_crops(faces: AlignedFaces, rows: np.ndarray) -> torch.Tensor:
    """[N, S, S, 3] uint8 crops (no jitter), the layout `encoder_outputs` reads."""
    return torch.cat([(faces.crops(rows[k : k + 256]) * 255).round().to(torch.uint8).permute(0, 2, 3, 1) for k in range(0, len(rows), 256)])


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
        self.utk_teacher = age_neutral(self._teacher([i.path for i in utk]), self.utk_ages)
        self.lfw_index = np.flatnonzero((self.lfw_labels >= 0).numpy() | np.isfinite(self.lfw_teacher[:, 0].numpy()))
        if ctx.is_main:
            print(f"LFW train: {len(lfw)} faces, {len(classes)} identities with 2+ images; UTKFace train: {len(utk)} faces")
        if args.init:
            weights = read_weights(args.init, ARCHITECTURE)
            self.arch = {**weights.config, "dropout": self.arch["dropout"]}
            self.init_provenance = {"file": Path(args.init).name, **weights.provenance}
            self.encoder = encoder_from(weights)
            if not self.encoder.has_age_head:  # the age loss trains it: refuse now, not at the first step
                raise WeightsError(f"--init: {self.encoder.age_estimator.error()}")
        else:
            self.encoder = AIFDEncoder(**self.arch)
        self.heads = TrainingHeads(self.arch["embedding_dim"], max(1, len(classes)), self.arch["widths"][-1], self.arch["num_age_classes"])
        if args.init:
            self._fit_heads(ctx)
        # The age head's group layer is in the module but not in these losses, hence find_unused.
        trainer = AIFDTrainer(self.encoder, self.heads, args.adversary_weight, args.embedding_adversary_weight)
        self.trainer = ctx.wrap(trainer, find_unused=True)
        self.optimizer = torch.optim.AdamW([p for p in self.trainer.parameters() if p.requires_grad], lr=args.lr, weight_decay=5e-4)
        warmup = max(1, int(0.03 * ctx.config.steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / ctx.config.steps)))
        )
        self._pairs = self._probe_sets = None
        # Rebuilt from the next batches after a resume (a few steps), so not in the checkpoint.
        self.readouts = {"identity_part": LinearAgeReadout(), "embedding": LinearAgeReadout()}

    @torch.no_grad()
    def _fit_heads(self, ctx: Context) -> None:
        """CosFace centres = the mean unit embedding of each train person; teacher projection = least squares."""
        encoder = self.encoder.eval()
        raw = []
        for start in range(0, len(self.lfw), 128):
            faces = self.lfw.crops(np.arange(start, min(start + 128, len(self.lfw)))).to(ctx.device) * 2 - 1
            raw.append(encoder.output_layer(encoder.decompose(faces)[0]).float().cpu())
        raw = torch.cat(raw)
        known = self.lfw_labels >= 0
        centres = torch.zeros_like(self.heads.centres).index_add_(0, self.lfw_labels[known], F.normalize(raw[known], dim=1))
        self.heads.centres.copy_(F.normalize(centres, dim=1))
        taught = torch.isfinite(self.lfw_teacher[:, 0])
        if not taught.any():  # --no-distill
            return
        design = torch.cat([raw[taught], torch.ones(int(taught.sum()), 1)], 1)
        solution = torch.linalg.lstsq(design, self.lfw_teacher[taught]).solution
        self.heads.to_teacher.weight.copy_(solution[:-1].T)
        self.heads.to_teacher.bias.copy_(solution[-1])

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
            out = self.trainer(faces, n_utk)
        embedding = out["embedding"]
        losses = {}
        known = labels >= 0
        losses["cosface"] = heads.cosface(embedding[known], labels[known]) if known.any() else embedding.sum() * 0
        taught = torch.isfinite(teacher[:, 0])
        if taught.any():
            student = F.normalize(heads.to_teacher(embedding[taught].float()), dim=1)
            losses["distill"] = (1 - (student * teacher[taught]).sum(1)).mean()
        else:
            losses["distill"] = embedding.sum() * 0
        ages = ages.clamp(max=100)
        losses["age"] = age_loss(out["age_logits"], ages, "dldl")
        losses["adversary"] = age_loss(out["adversary_logits"], ages, "dldl")
        losses["embedding_adversary"] = age_loss(out["embedding_adversary_logits"], ages, "dldl")
        losses["decorrelation"] = self.readouts["identity_part"].penalty(out["identity_part"], ages)
        losses["embedding_decorrelation"] = self.readouts["embedding"].penalty(out["unit_embedding"], ages)
        # The adversaries learn at full strength; how hard the encoder fights them is the reversal weights.
        total = (losses["cosface"] + args.distill_weight * losses["distill"] + args.age_weight * losses["age"]
                 + losses["adversary"] + losses["embedding_adversary"]
                 + args.decorrelation_weight * losses["decorrelation"] + args.embedding_decorrelation_weight * losses["embedding_decorrelation"])
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.scheduler.step()
        return {**{k: v.item() for k, v in losses.items()}, "lr": self.scheduler.get_last_lr()[0]}

    @torch.no_grad()
    def embed(self, faces: AlignedFaces, rows: np.ndarray, ctx: Context) -> torch.Tensor:
        """Flip-averaged unit embeddings, as the Face Similarity node computes them."""
        encoder = self.encoder.eval()
        out = []
        for start in range(0, len(rows), 128):
            with ctx.autocast():
                out.append(identity_embedding(encoder, faces.crops(rows[start : start + 128]).to(ctx.device), UNIT, flip_average=True))
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

    def _decomposition(self, ctx: Context) -> dict[str, float]:
        """Age probes on each part: fitted on UTKFace train faces, measured on the `val` split."""
        if self._probe_sets is None:
            val = [i for i in read_labels(self.args.utkface, Path(self.args.utkface) / "labels.csv", split="val") if i.age is not None]
            val_faces = AlignedFaces(val, "arcface", 112, cache_dir=self.args.cache_dir)
            rows = np.linspace(0, len(self.utk) - 1, min(PROBE_TRAIN_FACES, len(self.utk))).round().astype(int)
            self._probe_sets = (
                (uint8_crops(self.utk, rows), self.utk_ages[rows]),
                (uint8_crops(val_faces, np.arange(len(val_faces))), torch.tensor([i.age for i in val], dtype=torch.float32)),
            )
        (train, train_ages), (val, val_ages) = self._probe_sets
        results = probe_maes(encoder_outputs(self.encoder, train), train_ages, encoder_outputs(self.encoder, val), val_ages)
        return {f"val_{k}": v for k, v in results.items() if k.endswith("_mae")}

    def evaluate(self, ctx: Context) -> dict[str, float]:
        if not ctx.is_main or self.args.limit or not (Path(self.args.lfw) / "pairs_test.csv").is_file():
            return {}
        decomposition = self._decomposition(ctx)
        test_faces, (a, b, same), (ta, tb, tsame) = self._verification_sets(ctx)
        train_rows = np.unique(np.concatenate([ta, tb]))
        train_embeddings = dict(zip(train_rows.tolist(), self.embed(self.lfw, train_rows, ctx)))
        train_scores = np.array([float(train_embeddings[i] @ train_embeddings[j]) for i, j in zip(ta, tb)])
        threshold = best_threshold(train_scores, tsame)
        test_embeddings = self.embed(test_faces, np.arange(len(test_faces)), ctx)
        scores = (test_embeddings[a] * test_embeddings[b]).sum(1).numpy()
        return {"lfw_test_accuracy": float(((scores > threshold) == same).mean()), "threshold": threshold, **decomposition}

    def export(self, ctx: Context, path: Path) -> None:
        state = {k: v.half() if v.is_floating_point() else v for k, v in self.encoder.state_dict().items()}  # fp16 keeps it under 25 MB
        provenance = {"data": "LFW train people + UTKFace train split", "steps": ctx.step, "command": training_command(),
                      "preset": "from --init" if self.args.init else self.args.preset}
        if self.args.init:
            provenance["init"] = self.init_provenance
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
    parser.add_argument("--adversary-weight", type=float, default=1.0, help="gradient reversal strength against the identity part's age adversary")
    parser.add_argument("--embedding-adversary-weight", type=float, default=1.0, help="gradient reversal strength against the embedding's age adversary")
    parser.add_argument("--decorrelation-weight", type=float, default=1.0,
                        help="weight of the squared correlation between age and its best linear read-out from the identity part")
    parser.add_argument("--embedding-decorrelation-weight", type=float, default=1.0, help="the same, from the identity embedding")
    parser.add_argument("--init", help="start from this encoder file (architecture from its metadata; --preset is then ignored)")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N faces of each set (smoke tests)")
    parser.add_argument("--cache-dir", default="runs/cache")


def main(args: argparse.Namespace, config: RunConfig) -> dict:
    return run(AIFDTask(args), config)
