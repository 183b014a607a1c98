"""Train AgeTransGAN (generator + CMP discriminator), from scratch or from a loaded generator, with or without the MI loss.

    python -m training agetransgan --images DIR [--labels CSV] [--images DIR2 --labels CSV2 ...] --estimator AGE.safetensors \
        [--identity-encoder AIFD.safetensors --mi-weight 1] [--init-generator G.safetensors] [--diffaugment color,translation,cutout] --out runs/agt

Data: FFHQ-Aging folders, relabelled folders or UTKFace (see training/age_group_data.py), aligned once
with AgeTransGAN's own crop at the model size and cached; several `--images`/`--labels` pairs train on
their union (train rows only; the val rows give the sample faces). Each step turns a batch of sources to
random other groups and back (losses: training/agetransgan_losses.py), then updates the discriminator on the
sources and the generated faces; `--diffaugment` passes everything the discriminator reads through
DiffAugment (training/diffaugment.py), a training option only: the exported generator is the same network.
`--residual-output` (the generator adds a masked change to its input; stored in the exported config),
`--estimator-low-pass` (the estimator reads a blurred view of the outputs) and `--prototype-weight` (the coarse
change follows the difference of the groups' mean faces) make the recipe that trains on a 2-core CPU
(docs/results/agetransgan_training.md); `--detail-gain` with `--detail-weight` adds a head that scales the
input's fine detail as the groups' texture differs (a generator fine-tuned without the head gets one that
starts at gain 0). The EMA generator is what is sampled, evaluated and
exported. Sample grids (rows = faces of the val split, spread over the list, columns = the input then the
groups) go to samples/.
"""
from __future__ import annotations

import argparse
import copy
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from age_reenact.age_groups import groups_for
from age_reenact.agetransgan.convert import infer_config, load_generator, preprocessing_for
from age_reenact.agetransgan.discriminator import AgeTransGANDiscriminator
from age_reenact.agetransgan.generator import AgeTransGANGenerator
from age_reenact.aifd.encoder import load_encoder
from age_reenact.aifd.mi_loss import MILoss
from age_reenact.aifd.similarity import cosine
from age_reenact.estimator.predict import AgeEstimator
from age_reenact.evaluation.ageing_eval import save_grid, spearman, spread
from age_reenact.labels import labelled_sources
from age_reenact.weights import build_model, read_weights, save_weights

from .age_group_data import read_group_items
from .agetransgan_losses import (
    DetailGuide, EstimatorGroupLoss, LossWeights, PrototypeGuide, detail_energy, discriminator_losses, generator_losses, group_means,
    grey_view, group_prototypes, low_pass_view, weighted_sum,
)
from .diffaugment import diff_augment, parse_policy
from .engine import Context, RunConfig, Task, run, training_command
from .face_data import AlignedFaces

PRESETS = {
    "tiny": {"size": 64, "style_dim": 32, "n_mlp": 2, "channel_multiplier": 1},
    "small": {"size": 128, "style_dim": 128, "n_mlp": 4, "channel_multiplier": 1},  # 2.6 M parameters: 11 MB
    "medium": {"size": 128, "style_dim": 192, "n_mlp": 4, "channel_multiplier": 1},  # 5.9 M parameters: 24 MB in fp32
}
ADAM_BETAS = (0.0, 0.99)  # StyleGAN2's


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _with_detail_head(generator: AgeTransGANGenerator, config: dict) -> AgeTransGANGenerator:
    """The same generator with a new detail-gain head at gain 0 (its output is unchanged until it trains)."""
    grown = AgeTransGANGenerator(**config)
    missing, unexpected = grown.load_state_dict(generator.state_dict(), strict=False)
    missing = [key for key in missing if not key.startswith("to_gain.")]
    if unexpected or missing:
        raise ValueError(f"cannot add a detail-gain head: keys differ (unexpected {sorted(unexpected)[:4]}, missing {sorted(missing)[:4]})")
    return grown.train()


class AgeTransGANTask(Task):
    name = "agetransgan"

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.weights = LossWeights(
            adversarial=args.adversarial_weight, age_d=args.cls_weight, age_d_real=args.cls_weight, age_estimator=args.estimator_weight,
            cycle=args.cycle_weight, mi=args.mi_weight, prototype=args.prototype_weight, detail=args.detail_weight, r1=args.r1,
            r1_every=args.r1_every,
        )

    # -- setup ---------------------------------------------------------------------------------------------

    def configure(self) -> None:
        """The generator's config: the loaded generator's (fine-tuning), else the preset with overrides."""
        args = self.args
        self.initial = load_generator(args.init_generator).train() if args.init_generator else None
        if self.initial is not None:
            self.g_config = infer_config(self.initial.state_dict())
            if args.residual_output and not self.g_config.get("residual_output"):
                raise ValueError(
                    f"--residual-output: {args.init_generator} synthesises whole faces and has no mask head to fine-tune; "
                    "drop --residual-output, or start from a generator trained with it."
                )
        else:
            chosen = {"size": args.size, "style_dim": args.style_dim, "n_mlp": args.n_mlp, "channel_multiplier": args.channel_multiplier}
            self.g_config = {**PRESETS[args.preset], **{k: v for k, v in chosen.items() if v is not None}, "group": 10, "lr_mlp": 0.01}
            if args.residual_output:
                self.g_config["residual_output"] = True
        if args.detail_gain and not self.g_config.get("detail_gain"):
            if not self.g_config.get("residual_output"):
                raise ValueError("--detail-gain scales the input's detail, so it needs a residual generator (--residual-output)")
            self.g_config["detail_gain"] = True
            if self.initial is not None:
                self.initial = _with_detail_head(self.initial, self.g_config)
        if args.detail_weight > 0 and not self.g_config.get("detail_gain"):
            raise ValueError("--detail-weight trains the detail-gain head: add --detail-gain")
        self.groups = groups_for(self.g_config["group"])

    def setup(self, ctx: Context) -> None:
        self.configure()
        self.load_data(ctx, self.g_config["size"])
        self.build(ctx)

    def load_data(self, ctx: Context, size: int) -> None:
        args = self.args
        read = partial(read_group_items, split=None, groups=self.groups, min_confidence=args.min_confidence)
        everything = labelled_sources(args.images, args.labels, read)
        train = [i for i in everything if i.split == "train"]
        train = [train[k] for k in spread(range(len(train)), args.limit)]  # label files are often sorted by age
        held_out = [i for i in everything if i.split == "val"]
        if not train:
            raise ValueError(f"no train faces in {', '.join(args.images)}; the split column (or FFHQ-Aging's numbering) marks them")
        pool = held_out or train
        samples = [pool[k] for k in spread(range(len(pool)), args.sample_faces)]
        items = train + (samples if held_out else [])
        self.faces = AlignedFaces(items, "agetransgan", size, cache_dir=args.cache_dir)
        self.face_groups = torch.tensor([i.group for i in items])
        self.train_index = np.arange(len(train))
        self.sample_index = np.arange(len(train), len(items)) if held_out else np.arange(len(samples))
        if ctx.is_main:
            counts = np.bincount(self.face_groups[self.train_index].numpy(), minlength=self.groups.count).tolist()
            print(f"{len(train)} train faces (per group {counts}); {len(samples)} sample faces; {self.faces.fallbacks} without a detected face")

    def build(self, ctx: Context) -> None:
        """Models, frozen loss networks and optimisers (also used alone by the benchmark)."""
        args, w = self.args, self.weights
        generator = self.initial if self.initial is not None else AgeTransGANGenerator(**self.g_config)
        self.d_config = {"size": self.g_config["size"], "group": self.g_config["group"], "width": args.d_width or self.g_config["style_dim"],
                         "channel_multiplier": self.g_config["channel_multiplier"]}
        if args.init_discriminator:
            weights = read_weights(args.init_discriminator, "agetransgan_discriminator")
            self.d_config = dict(weights.config)
            if (self.d_config["size"], self.d_config["group"]) != (self.g_config["size"], self.g_config["group"]):
                raise ValueError(
                    f"{args.init_discriminator} is for {self.d_config['size']} px / {self.d_config['group']} groups; "
                    f"the generator is {self.g_config['size']} px / {self.g_config['group']} groups."
                )
            discriminator = build_model(weights).train()
        else:
            discriminator = AgeTransGANDiscriminator(**self.d_config)
        if args.freeze_mask:
            if not self.g_config.get("residual_output"):
                raise ValueError("--freeze-mask needs a residual generator (--residual-output)")
            generator.to_mask.requires_grad_(False)
        self.g_ema = copy.deepcopy(generator).eval().requires_grad_(False).to(ctx.device)
        self.g = ctx.wrap(generator)
        self.d = ctx.wrap(discriminator)
        self.g_optimizer = torch.optim.Adam([p for p in self.g.parameters() if p.requires_grad], lr=args.lr, betas=ADAM_BETAS)
        # Lazy R1: the discriminator's Adam is rescaled for the extra update every r1_every steps (StyleGAN2).
        ratio = w.r1_every / (w.r1_every + 1) if w.r1 > 0 else 1.0
        self.d_optimizer = torch.optim.Adam(self.d.parameters(), lr=args.lr * ratio, betas=tuple(b**ratio for b in ADAM_BETAS))
        self.estimator = None
        if args.estimator and w.age_estimator > 0:
            self.estimator = EstimatorGroupLoss(AgeEstimator.load(args.estimator)).to(ctx.device)
        elif ctx.is_main and w.age_estimator > 0:
            print("no --estimator: the frozen estimator's age loss is off (only the discriminator's classifier guides age)")
        self.mi = MILoss(load_encoder(args.identity_encoder)).to(ctx.device) if args.identity_encoder else None
        self.prototype = None
        if w.prototype > 0:
            crops = lambda index: self.faces.crops(self.train_index[index])  # noqa: E731
            prototypes = group_prototypes(crops, self.face_groups[self.train_index].numpy(), self.groups.count)
            self.prototype = PrototypeGuide(prototypes, args.prototype_scale, args.prototype_blur).to(ctx.device)
        self.detail = None
        if w.detail > 0:
            energy = lambda index: detail_energy(self.faces.crops(self.train_index[index]))  # noqa: E731
            energies = group_means(energy, self.face_groups[self.train_index].numpy(), self.groups.count)
            self.detail = DetailGuide(energies, args.detail_exponent).to(ctx.device)
        if w.mi > 0 and self.mi is None and ctx.is_main:
            print("no --identity-encoder: the MI loss is off")

    def state(self) -> dict:
        return {"generator": self.g, "discriminator": self.d, "generator_ema": self.g_ema, "g_optimizer": self.g_optimizer, "d_optimizer": self.d_optimizer}

    # -- training --------------------------------------------------------------------------------------------

    def train_step(self, ctx: Context) -> dict[str, float]:
        index = ctx.epoch_batch(self.train_index)
        rng = ctx.generator()
        real = self.faces.crops(index)
        flip = torch.rand(len(real), generator=rng) < 0.5
        real[flip] = real[flip].flip(-1)
        return self.update(ctx, (real * 2 - 1).to(ctx.device), self.face_groups[index].to(ctx.device), rng)

    def draw(self, source_group: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, tuple[list, list]]:
        """Random target groups (never the source's) and the noise of the two generator passes."""
        g = self.g_config["group"]
        shift = torch.randint(1, g, (len(source_group),), generator=rng).to(source_group.device)
        seeds = torch.randint(2**31 - 1, (2, len(source_group)), generator=rng).tolist()
        generator = _unwrap(self.g)
        device = source_group.device
        return (source_group + shift) % g, (generator.make_noise(seeds[0], device), generator.make_noise(seeds[1], device))

    def update(self, ctx: Context, real: torch.Tensor, source_group: torch.Tensor, rng: torch.Generator) -> dict[str, float]:
        """One generator and one discriminator step on a batch of sources [B, 3, S, S] in [-1, 1]."""
        w = self.weights
        target, noise = self.draw(source_group, rng)
        discriminator = _unwrap(self.d)
        self.g.train()
        self.d.train()

        discriminator.requires_grad_(False)  # the generator step reads D without training it
        mi = self.mi if w.mi > 0 else None
        augment = partial(diff_augment, policy=self.args.diffaugment, generator=rng) if self.args.diffaugment else None
        view = self.estimator_view(rng)
        with ctx.autocast():
            g_losses, fake = generator_losses(
                self.g, discriminator, real, source_group, target, noise, self.estimator, mi, self.groups.count, augment, view, self.prototype,
                self.detail,
            )
        g_total = weighted_sum(g_losses, {"adversarial": w.adversarial, "age_d": w.age_d, "cycle": w.cycle, "age_estimator": w.age_estimator, "mi": w.mi,
                                          "prototype": w.prototype, "detail": w.detail})
        self.g_optimizer.zero_grad(set_to_none=True)
        g_total.backward()
        self.g_optimizer.step()
        if self.mi is not None and mi is None:  # logged without training on it: the curve to compare runs by
            with torch.no_grad(), ctx.autocast():
                g_losses["mi"] = self.mi(real, fake.float())

        discriminator.requires_grad_(True)
        r1 = w.r1 > 0 and ctx.step % w.r1_every == 0
        with ctx.autocast():
            d_losses = discriminator_losses(self.d, real, source_group, fake, target, self.groups.count, r1, augment)
        d_total = weighted_sum(d_losses, {"d_adversarial": 1.0, "d_age": w.age_d_real, "r1": w.r1 / 2 * w.r1_every})
        self.d_optimizer.zero_grad(set_to_none=True)
        d_total.backward()
        self.d_optimizer.step()

        self.update_ema(ctx.step)
        values = {**g_losses, **d_losses, "g_total": g_total, "d_total": d_total}
        return {k: v.item() for k, v in values.items()}

    def estimator_view(self, rng: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """What the frozen estimator reads of the outputs: a random lower resolution, grey, both, or the outputs."""
        low_pass, grey = self.args.estimator_low_pass, self.args.estimator_grey
        if not (low_pass or grey):
            return None

        def view(faces: torch.Tensor) -> torch.Tensor:
            faces = low_pass_view(faces, generator=rng) if low_pass else faces
            return grey_view(faces) if grey else faces

        return view

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        # Ramp the decay up so the average tracks the early, fast-changing weights (short and fine-tuning runs).
        decay = min(self.args.ema_decay, (1 + step) / (10 + step))
        for ema, live in zip(self.g_ema.parameters(), _unwrap(self.g).parameters()):
            ema.lerp_(live.detach(), 1 - decay)

    # -- samples, metrics, export ---------------------------------------------------------------------------

    def sample(self, index: np.ndarray, device: torch.device, seed: int = 0) -> torch.Tensor:
        """EMA generator outputs of faces `index` at every group: [F, G, 3, S, S] in [-1, 1].

        Runs in grad mode on purpose: the layers keep inference caches of their scaled weights while
        grad is off, which the in-place EMA updates would only invalidate. The EMA generator's weights
        are frozen, so no graph is built."""
        g = self.groups.count
        source = (self.faces.crops(index) * 2 - 1).to(device)
        rows = []
        with torch.enable_grad():
            for face in source:
                noise = self.g_ema.make_noise([seed] * g, device)
                rows.append(self.g_ema(face[None].expand(g, -1, -1, -1), torch.eye(g, device=device), noise))
        return torch.stack(rows)

    @torch.no_grad()
    def evaluate(self, ctx: Context) -> dict[str, float]:
        if not ctx.is_main or not len(self.sample_index):
            return {}
        source = self.faces.crops(self.sample_index)
        aged = self.sample(self.sample_index, ctx.device).float()
        grid = torch.cat([source[:, None], ((aged.cpu() + 1) / 2).clamp(0, 1)], 1).permute(0, 1, 3, 4, 2)
        save_grid(grid, ctx.out_dir / "samples" / f"step_{ctx.step:06d}.png", ["input", *self.groups.names])
        metrics = {}
        flat = aged.flatten(0, 1)
        if self.estimator is not None:
            estimator = AgeEstimator(self.estimator.model, self.estimator.preprocessing)
            ages = estimator.estimate_crops(((flat + 1) / 2).permute(0, 2, 3, 1)).ages(estimator.readout).view(len(aged), -1)
            means = ages.mean(0).tolist()
            metrics["sample_age_spearman"] = spearman(means, self.groups.centres)
            metrics["sample_age_youngest"], metrics["sample_age_oldest"] = means[0], means[-1]
        if self.mi is not None:
            real = self.mi.embed((source * 2 - 1).to(ctx.device)).repeat_interleave(self.groups.count, 0)
            metrics["sample_aifd_cosine"] = float(cosine(real, self.mi.embed(flat)).mean())
        return metrics

    def provenance(self, ctx: Context) -> dict:
        args = self.args
        return {
            "task": "agetransgan", "data": ", ".join(args.images), "labels": ", ".join(args.labels or []), "steps": ctx.step,
            "batch_size": ctx.config.batch_size, "loss_weights": asdict(self.weights), "mi_loss": self.mi is not None and self.weights.mi > 0,
            "diffaugment": ",".join(args.diffaugment), "estimator_low_pass": args.estimator_low_pass,
            "estimator_grey": args.estimator_grey,
            "prototype_scale": args.prototype_scale, "prototype_blur": args.prototype_blur, "freeze_mask": args.freeze_mask,
            "detail_exponent": args.detail_exponent,
            "estimator": Path(args.estimator).name if args.estimator else "", "identity_encoder": Path(args.identity_encoder).name if args.identity_encoder else "",
            "init_generator": Path(args.init_generator).name if args.init_generator else "", "command": training_command(),
        }

    def export(self, ctx: Context, path: Path) -> None:
        provenance = self.provenance(ctx)
        save_weights(path / "agetransgan.safetensors", self.g_ema.state_dict(), "agetransgan_generator", self.g_config, preprocessing_for(self.g_config), provenance)
        save_weights(path / "discriminator.safetensors", _unwrap(self.d).state_dict(), "agetransgan_discriminator", self.d_config,
                     {"crop_convention": "agetransgan", "size": self.d_config["size"], "input_range": [-1.0, 1.0]}, provenance)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--images", required=True, action="append",
                      help="face folder: FFHQ-Aging, group folders, relabelled or UTKFace (see training/age_group_data.py); repeat for several")
    data.add_argument("--labels", action="append",
                      help="per --images: ffhq_aging_labels.csv, a relabel CSV (file, age, group) or a labels CSV (file, age[, split]); or none at all")
    data.add_argument("--min-confidence", type=float, default=0.6, help="FFHQ-Aging: minimum age-group label confidence")
    data.add_argument("--limit", type=int, default=0, help="use only N train faces, spread over the list (smoke runs)")
    data.add_argument("--sample-faces", type=int, default=6, help="faces (from the val split) in each sample grid")
    data.add_argument("--cache-dir", default="runs/cache", help="aligned-face cache (built once per image list and size)")
    model = parser.add_argument_group("model")
    model.add_argument("--preset", choices=sorted(PRESETS), default="small")
    model.add_argument("--size", type=int, help="output px (64, 128, ...); overrides the preset")
    model.add_argument("--style-dim", type=int, help="widest channel count and w size; overrides the preset")
    model.add_argument("--n-mlp", type=int, help="mapping network depth; overrides the preset")
    model.add_argument("--channel-multiplier", type=float, help="widths above 32 px; overrides the preset")
    model.add_argument("--residual-output", action="store_true",
                       help="the generator adds a masked change to its input instead of drawing the whole face (from scratch only)")
    model.add_argument("--freeze-mask", action="store_true",
                       help="with --residual-output: the mask head is not trained; from scratch it stays half open everywhere (an additive change)")
    model.add_argument("--detail-gain", action="store_true",
                       help="with --residual-output: a head that scales the input's fine detail (added at gain 0 to a generator without one)")
    model.add_argument("--d-width", type=int, help="discriminator width (default: the generator's style dim)")
    model.add_argument("--init-generator", help="fine-tune this generator (.safetensors or official .pt); its config wins")
    model.add_argument("--init-discriminator", help="start the discriminator from a discriminator.safetensors of an earlier run")
    losses = parser.add_argument_group("losses")
    losses.add_argument("--estimator", help="frozen age estimator (.safetensors, 'agetransgan' crop convention) for the age loss")
    losses.add_argument("--identity-encoder", help="frozen AIFD encoder (.safetensors) for the MI loss (also logged when --mi-weight is 0)")
    losses.add_argument("--mi-weight", type=float, default=1.0, help="MI loss weight (0 = the run without the MI loss)")
    losses.add_argument("--adversarial-weight", type=float, default=1.0)
    losses.add_argument("--cls-weight", type=float, default=1.0, help="the discriminator's age classifier (real faces and outputs)")
    losses.add_argument("--estimator-weight", type=float, default=1.0)
    losses.add_argument("--estimator-low-pass", action="store_true",
                        help="the frozen estimator reads the outputs at a random lower resolution (against adversarial speckle)")
    losses.add_argument("--estimator-grey", action="store_true",
                        help="the frozen estimator reads the outputs in grey (against colour patches that move it without ageing)")
    losses.add_argument("--cycle-weight", type=float, default=10.0)
    losses.add_argument("--prototype-weight", type=float, default=0.0,
                        help="prototype guide: the output's blurred change follows the difference of the target and source groups' mean faces (0 = off)")
    losses.add_argument("--prototype-scale", type=float, default=1.5, help="the prototype guide's factor on that difference")
    losses.add_argument("--prototype-blur", type=float, default=2.0, help="the prototype guide's Gaussian sigma in px")
    losses.add_argument("--detail-weight", type=float, default=0.0,
                        help="detail guide: the output's fine detail is the input's times r = sqrt(E_target / E_source) ** exponent, "
                             "E the groups' mean detail energy per pixel, r clamped to [1/4, 4] (0 = off)")
    losses.add_argument("--detail-exponent", type=float, default=4.0,
                        help="the detail guide's power on the groups' detail-amplitude ratio (1 = as the groups differ; more exaggerates)")
    losses.add_argument("--r1", type=float, default=1.0, help="R1 gamma (0 = off)")
    losses.add_argument("--r1-every", type=int, default=16)
    losses.add_argument("--diffaugment", type=parse_policy, default=(), metavar="POLICIES",
                        help="DiffAugment for small data: comma-separated color, translation, cutout, applied to every real and generated face D reads")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--lr", type=float, default=0.002)
    optim.add_argument("--ema-decay", type=float, default=0.999)


def main(args: argparse.Namespace, config: RunConfig) -> dict:
    return run(AgeTransGANTask(args), config)
