"""Train the dual-generator reenactor (face generator RFG + shape generator IDSG) on LFW, FG-NET and UTKFace.

    python -m training reenactor --lfw ../shared/data/lfw --fgnet ../shared/data/fgnet \
        --utkface ../shared/data/utkface-part1 --utkface ../shared/data/utkface-extra --out runs/reenactor [--nproc 2]

Face generator, by reconstruction: the sketch of face A (its 68 landmarks drawn by sketch.py) and the
style of image B give A back. B is another photo of the same person, or a jittered, colour-shifted copy
of A (self-reconstruction). Data (`reenactor_items`; only `train` splits and people, never `test`):
- same-person pairs: LFW `train` people with two or more detected faces (other poses and expressions)
  and FG-NET `train` people (the same person at other ages, in scanned photos of more varied pose);
- self-reconstruction copies: every other train face, i.e. every UTKFace `train` face of each
  --utkface folder and the LFW train faces without a second detected photo of their person (with
  --self-share, also that share of the pair rows);
- validation: `val` faces of the first --utkface folder.
Every face, FG-NET's included, gets the detector's iBUG-68 landmarks: the sketch renderer and the
mirror table need iBUG's order, and FG-NET's hand-placed 68 points follow another scheme that shares
only seven points with it (eye and mouth corners, nose tip: benchmarks/crop_offsets.py), so no full
mapping exists. Targets are jittered (similarity, flip and, with --elastic, a smooth elastic warp, each
moving image and landmarks together); copies get the same plus colour and greyscale changes.
Losses: L1, a perceptual term, and a sketch-conditioned patch discriminator (non-saturating, lazy R1
on real faces); the exported face generator is an exponential moving average (EMA) of the trained one.

Perceptual term: feature L1 through a trained project network given with --perceptual (an age
estimator "age_resnet" file or an AIFD encoder file, frozen); without one, a multi-scale L1 + SSIM loss
stands in (no trained project network existed when this task was written).

With --source-warp (a project option) the face generator also takes B warped to A's landmarks (thin-plate
spline, age_reenact/reenact/warp.py) and corrects it; B then keeps its colours and is never mirrored.

Shape generator, on its own batches (--shape-batch-size, --shape-steps per step) of paired people's aligned
landmark sets: landmarks of A + the identity code of another photo B of A's person give A's landmarks back
(reconstruction; the lips weighted by --lip-weight); the landmarks of another row's person under that code
give a shape that a landmark discriminator takes for real, that the landmark classifier takes for A's
person, that keeps the driver's landmark code, and that the driver's own code maps back to the driver
(cycle). B is never A itself, nor a copy of it: a face's own code carries its pose and expression, and a
shape generator that reads them there ignores the driver at inference. The identity code is the AIFD
embedding of B with --aifd-encoder (identity_source "aifd", computed once at setup), otherwise B's EMA style
code (identity_source "style": the model needs no other file; at inference the EMA style encoder gives it).

Every --sample-every steps, samples/step_NNNNNN.png shows rows of (source, sketch, output, target):
four same-person reconstructions, then four different-person reenactments through the shape
generator (target = the driver). The run folder gets reenactor.safetensors and MODEL_CARD.md.
"""
from __future__ import annotations

import argparse
import copy
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from age_reenact.aifd.encoder import load_encoder
from age_reenact.aifd.similarity import UNIT, encoder_input
from age_reenact.estimator.predict import prepare
from age_reenact.evaluation.reenact_eval import INNER_LIPS
from age_reenact.images import save_image
from age_reenact.labels import fgnet_items, lfw_items, utkface_items
from age_reenact.reenact.convert import PREPROCESSING
from age_reenact.reenact.identity import AIFDIdentity
from age_reenact.reenact.model import DualGeneratorReenactor
from age_reenact.reenact.sketch import rebuild_eyelids, render_sketches
from age_reenact.reenact.warp import warp_to_landmarks
from age_reenact.weights import build_model, read_weights, save_weights

from .engine import Context, RunConfig, Task, _unwrap, run, training_command
from .face_data import AlignedFaces

CONVENTION = "reenactor"
BUNDLE_LIMIT_MB = 25.0
# Model widths; "small" fits the 25 MB bundle limit in fp32, "medium" with --export-dtype fp16.
PRESETS = {
    "tiny": {"size": 32, "style_dim": 8, "base_channels": 8, "max_conv_dim": 16},
    "small": {"size": 128, "style_dim": 64, "base_channels": 32, "max_conv_dim": 128},
    "medium": {"size": 128, "style_dim": 64, "base_channels": 32, "max_conv_dim": 256},
}
JITTER_TARGET = {"rotate": 5, "scale": 0.05, "shift": 0.03, "flip": 0.5}
JITTER_STYLE = {"rotate": 5, "scale": 0.05, "shift": 0.03, "flip": 0.5, "color": 0.1}
JITTER_COPY = {"rotate": 10, "scale": 0.08, "shift": 0.05, "flip": 0.5, "color": 0.15, "grey": 0.05}
EXPORT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


@dataclass
class FaceItem:
    path: Path
    person: int  # a train person with two or more photos (LFW first, then FG-NET), -1 for a face alone
    split: str  # "train", or "val" (the first UTKFace folder's val: validation metrics and samples only)
    source: str  # "lfw", "fgnet" or the UTKFace folder's name: what the model card counts


def reenactor_items(
    lfw: str | Path, utkface: Sequence[str | Path] = (), fgnet: str | Path | None = None, limit: int = 0, val_faces: int = 64
) -> list[FaceItem]:
    """LFW `train` people, FG-NET `train` people, each UTKFace folder's `train` split, and up to `val_faces`
    `val` faces of the first UTKFace folder; no `test` split or person. People with two or more photos
    are numbered (LFW first) for same-person pairs; the others' photos and UTKFace faces have person -1.
    `limit` keeps the first N photos of each set and of its people with one photo (smoke runs)."""
    first = lambda rows: rows[:limit] if limit else rows  # noqa: E731
    names: dict[str, int] = {}
    items: list[FaceItem] = []
    for source, people in (("lfw", lfw_items(lfw, "train")), ("fgnet", fgnet_items(fgnet, "train") if fgnet else [])):
        photos = Counter(i.person for i in people)
        paired = first([i for i in people if photos[i.person] >= 2])
        items += [FaceItem(i.path, names.setdefault(f"{source}/{i.person}", len(names)), "train", source) for i in paired]
        items += [FaceItem(i.path, -1, "train", source) for i in first([i for i in people if photos[i.person] < 2])]
    for number, folder in enumerate(utkface):
        rows, name = utkface_items(folder), Path(folder).name
        items += [FaceItem(r.path, -1, "train", name) for r in first([r for r in rows if r.split == "train"])]
        if number == 0:  # one validation set (utkface-part1's in the real run), comparable across runs
            items += [FaceItem(r.path, -1, "val", name) for r in rows if r.split == "val"][:val_faces]
    return items


class FaceReconstructor(nn.Module):
    """The face generator as trained, sketch + style image (+ that image warped to the sketch, for
    --source-warp) -> face, so DDP sees one forward per step."""

    def __init__(self, rfg: nn.Module):
        super().__init__()
        self.rfg = rfg

    def forward(self, sketches: torch.Tensor, style_images: torch.Tensor, warped: torch.Tensor | None = None) -> torch.Tensor:
        return self.rfg.generator(sketches, self.rfg.style_encoder(style_images), warped)


def draw_faces(rfg: nn.Module, sources: torch.Tensor, source_points: np.ndarray, target_points: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources [B, 3, S, S] with their landmarks, and target landmarks (both [B, 68, 2] in crop px) -> (the
    sketches of the targets, rfg's faces): the inference path of samples and validation."""
    size = sources.shape[-1]
    sketches = render_sketches(target_points, size).to(sources.device)
    warped = warp_to_landmarks(sources, source_points, target_points) if rfg.generator.source_warp else None
    return sketches, rfg.generator(sketches, rfg.style_encoder(sources), warped).float()


class PatchDiscriminator(nn.Module):
    """Real/fake logits per patch of a face, given the sketch it was drawn from ([B, 3+3, S, S] in)."""

    def __init__(self, channels: int = 32, downsamples: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        dim_in = 6
        for level in range(downsamples):
            dim_out = channels * 2**level
            layers += [nn.Conv2d(dim_in, dim_out, 4, 2, 1), nn.LeakyReLU(0.2)]
            dim_in = dim_out
        layers += [nn.Conv2d(dim_in, dim_in, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(dim_in, 1, 3, 1, 1)]
        self.main = nn.Sequential(*layers)

    def forward(self, faces: torch.Tensor, sketches: torch.Tensor) -> torch.Tensor:
        return self.main(torch.cat([faces, sketches], dim=1))


class ShapeCycle(nn.Module):
    """The IDSG generator as trained: reconstruction, cross-identity shape and its cycle in one forward."""

    def __init__(self, idsg: nn.Module):
        super().__init__()
        self.encoder = idsg.lm_linear_encoder
        self.decoder = idsg.linear_decoder

    def forward(self, driver: torch.Tensor, identity: torch.Tensor, other: torch.Tensor, other_identity: torch.Tensor):
        """driver [B, 136] with its own person's code; other: another person's landmarks and code."""
        reconstruction = self.decoder(self.encoder(driver), identity)
        other_code = self.encoder(other)
        cross = self.decoder(other_code, identity)  # other's pose and expression, driver's person
        cross_code = self.encoder(cross)
        cycle = self.decoder(cross_code, other_identity)
        return reconstruction, cross, cycle, cross_code, other_code


class LandmarkCritic(nn.Module):
    """IDSG's landmark discriminator and identity classifier (logits, not the inference sigmoid)."""

    def __init__(self, idsg: nn.Module):
        super().__init__()
        self.discriminator = idsg.linear_discriminator
        self.classifier = idsg.linear_classfier

    def forward(self, landmarks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.discriminator(landmarks), self.classifier.main_3(self.classifier.main(landmarks))


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Per-pixel SSIM of images in 0..1 with a box window."""
    pool = lambda t: F.avg_pool2d(t, window, 1, window // 2, count_include_pad=False)  # noqa: E731
    mu_x, mu_y = pool(x), pool(y)
    var_x, var_y, cov = pool(x * x) - mu_x**2, pool(y * y) - mu_y**2, pool(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def multiscale_l1_ssim(fake: torch.Tensor, real: torch.Tensor, scales: int = 3) -> torch.Tensor:
    fake, real = fake.float(), real.float()
    loss = fake.new_zeros(())
    for scale in range(scales):
        if scale:
            fake, real = F.avg_pool2d(fake, 2), F.avg_pool2d(real, 2)
        loss = loss + (fake - real).abs().mean() + (1 - ssim(fake, real)).mean()
    return loss / scales


class PerceptualLoss(nn.Module):
    """Feature L1 through a frozen trained project network (age_resnet or aifd_encoder file); without a
    file, multi-scale L1 + SSIM."""

    def __init__(self, path: str | Path | None = None):
        super().__init__()
        self.stages: nn.ModuleList | None = None
        self.name = "multiscale_l1_ssim (no feature network)"
        if not path:
            return
        weights = read_weights(path, ("age_resnet", "aifd_encoder"))
        network = build_model(weights).requires_grad_(False)
        self.name = f"{weights.architecture} features ({Path(path).name})"
        if weights.architecture == "age_resnet":
            body = network.backbone
            stages = [nn.Sequential(body.conv1, body.bn1, body.relu), nn.Sequential(body.maxpool, body.layer1)]
            stages += [getattr(body, f"layer{i}") for i in range(2, body.num_stages + 1)]
            preprocessing = weights.preprocessing
            self.prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: prepare(x, preprocessing)
        else:
            stages = [network.input_layer, *(getattr(network, f"block{i}") for i in range(1, 5))]
            self.prepare = lambda x: encoder_input(x, UNIT, network.input_size)
        self.stages = nn.ModuleList(stages).eval()

    def train(self, mode: bool = True) -> "PerceptualLoss":
        return super().train(False)  # frozen batch-norm statistics, always

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        if self.stages is None:
            return multiscale_l1_ssim(fake, real)
        x = self.prepare(torch.cat([fake, real]))
        loss = fake.new_zeros((), dtype=torch.float32)
        for stage in self.stages:
            x = stage(x)
            fake_features, real_features = x.float().chunk(2)
            loss = loss + (fake_features - real_features.detach()).abs().mean()
        return loss / len(self.stages)


def mouth_gap_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean distance between the inner-lip gaps (lower minus upper point, three pairs) of landmark sets
    [B, 136]: how far a's mouth opening is from b's, whatever the rest of the face."""
    upper, lower = INNER_LIPS

    def gaps(x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 68, 2)
        return x[:, lower] - x[:, upper]

    return (gaps(a) - gaps(b)).norm(dim=-1).mean()


def point_error(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean per-point Euclidean distance of flattened landmark sets [B, 136], optionally weighted per point [68]
    (weights with mean 1 keep the scale)."""
    distances = (a - b).view(len(a), -1, 2).norm(dim=-1)
    return (distances * weights).mean() if weights is not None else distances.mean()


def identity_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the rows with an identity (label >= 0); zero, still connected to the
    classifier (which DDP needs), when there are none."""
    return F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum") / (labels >= 0).sum().clamp(min=1)


def r1_penalty(logits: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """|grad of each input's score|^2, the score being the mean of its logits: the quantity the loss averages.
    (A patch discriminator's summed logits would scale the penalty by the patch count squared, 256x256 at
    128 px, and pin the discriminator at chance.)"""
    (grad,) = torch.autograd.grad(logits.reshape(len(logits), -1).mean(1).sum(), inputs, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


class ReenactorTask(Task):
    name = "reenactor"

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.preset = PRESETS[args.preset]
        self.size = self.preset["size"]
        self.jitter_target = {**JITTER_TARGET, "elastic": args.elastic}
        self.jitter_copy = {**JITTER_COPY, "elastic": args.elastic}
        self.jitter_style = dict(JITTER_STYLE)
        if args.source_warp:
            # The warp carries the source's colours and sides through: no colour change for the generator to
            # undo, and no mirroring (target and style image flipped independently would ask it to un-mirror
            # hair partings and backgrounds).
            for jitter in (self.jitter_target, self.jitter_copy, self.jitter_style):
                for change in ("color", "grey"):
                    jitter.pop(change, None)
                jitter["flip"] = 0.0

    # ---- data -------------------------------------------------------------------------------------
    def _setup_data(self, ctx: Context) -> None:
        args = self.args
        items = reenactor_items(args.lfw, args.utkface, args.fgnet, args.limit, args.val_faces)
        self.index_faces(items, AlignedFaces(items, CONVENTION, self.size, cache_dir=args.cache_dir, landmarks=True))
        if ctx.is_main:
            pairs = ", ".join(f"{s}: {n['faces']} faces of {n['people']} people" for s, n in self.data["pairs"].items())
            copies = ", ".join(f"{s}: {n}" for s, n in self.data["copies"].items())
            print(f"pairs ({pairs}); self-reconstruction copies ({copies}); {self.data['val_faces']} val faces; "
                  f"{self.data['left_out']} images without a detected face left out")

    def index_faces(self, items: list[FaceItem], faces: AlignedFaces) -> None:
        """The step's pools from `faces` (built from `items`, with landmarks): only detected faces have a
        sketch; people keep the photos with a detected face and need two of them (labels renumbered
        0..P-1); every other detected train face is a self-reconstruction copy."""
        self.faces = faces
        found = np.isfinite(faces.landmarks).all(axis=(1, 2))
        person = np.array([i.person for i in items])
        split = np.array([i.split for i in items])
        source = np.array([i.source for i in items])
        counts = np.bincount(person[found & (person >= 0)], minlength=max(1, person.max(initial=-1) + 1))
        kept = np.flatnonzero(counts >= 2)
        relabel = np.full(len(counts), -1)
        relabel[kept] = np.arange(len(kept))
        self.identity = np.where(found & (person >= 0), relabel[person.clip(min=0)], -1)
        self.num_identities = len(kept)
        if not self.num_identities:
            raise ValueError("no LFW or FG-NET train person with two or more detected faces: check --lfw/--fgnet (or raise --limit).")
        self.pair_index = np.flatnonzero(self.identity >= 0)
        self.pair_row = np.full(len(items), -1)  # a face's row in pair_index (and in the identity codes), -1: none
        self.pair_row[self.pair_index] = np.arange(len(self.pair_index))
        self.copy_index = np.flatnonzero(found & (self.identity < 0) & (split == "train"))
        self.train_index = np.concatenate([self.pair_index, self.copy_index])
        self.val_index = np.flatnonzero(found & (split == "val"))
        self.same_person = {p: self.pair_index[self.identity[self.pair_index] == p] for p in range(self.num_identities)}
        paired_source, copy_source = source[self.pair_index], source[self.copy_index]
        self.data = {  # for the log and the model card
            "pairs": {
                name: {"faces": int((paired_source == name).sum()), "people": len(np.unique(self.identity[self.pair_index][paired_source == name]))}
                for name in dict.fromkeys(paired_source)
            },
            "copies": {name: int((copy_source == name).sum()) for name in dict.fromkeys(copy_source)},
            "val_faces": len(self.val_index),
            "left_out": int((~found).sum()),
        }

    def partners(self, index: np.ndarray, generator: torch.Generator, self_share: float = 0.0) -> np.ndarray:
        """Another photo of the same person for faces of a paired person (but the face itself for a random
        `self_share` of them); the face itself for copies. A face partnered with itself gets an augmented copy
        as its style image."""
        out = index.copy()
        paired = self.identity[index] >= 0
        if self_share:
            paired &= torch.rand(len(index), generator=generator).numpy() >= self_share
        for row in np.flatnonzero(paired):
            others = self.same_person[self.identity[index[row]]]
            others = others[others != index[row]]
            out[row] = others[int(torch.randint(len(others), (1,), generator=generator))]
        return out

    def style_images(self, index: np.ndarray, partner: np.ndarray, generator: torch.Generator) -> tuple[torch.Tensor, np.ndarray]:
        """The rows' style images [B, 3, S, S] and their landmarks [B, 68, 2] (crop px)."""
        copies = partner == index
        images = torch.empty(len(index), 3, self.size, self.size)
        points = np.empty((len(index), 68, 2))
        for rows, faces, jitter in ((~copies, partner, self.jitter_style), (copies, index, self.jitter_copy)):
            if rows.any():
                images[torch.from_numpy(rows)], points[rows] = self.faces.crops_with_landmarks(faces[rows], generator, jitter)
        return images, points

    def normalised_landmarks(self, index: np.ndarray) -> torch.Tensor:
        """Aligned landmarks as the shape generator takes them: crop pixels / size, flattened [B, 136]."""
        return torch.from_numpy(self.faces.aligned_landmarks(index) / self.size).float().flatten(1)

    # ---- models -----------------------------------------------------------------------------------
    def setup(self, ctx: Context) -> None:
        args = self.args
        self._setup_data(ctx)
        self.aifd = aifd = AIFDIdentity(load_encoder(args.aifd_encoder)).to(ctx.device) if args.aifd_encoder else None
        if aifd is not None:  # once: the shape step draws large batches of them
            self.pair_codes = self._aifd_codes(ctx)
        weights = torch.ones(68)
        weights[48:68] = args.lip_weight  # the mouth's opening is a few pixels: a plain mean leaves it to the last
        self.point_weights = (weights / weights.mean()).to(ctx.device)
        self.config = {
            **self.preset,
            "identity_dim": aifd.output_dim if aifd else self.preset["style_dim"],
            "identity_source": "aifd" if aifd else "style",
            "num_identities": self.num_identities,
            **({"source_warp": True} if args.source_warp else {}),
        }
        self.model = DualGeneratorReenactor(**self.config).to(ctx.device)
        if args.shape_only and not args.init_reenactor:
            raise ValueError("--shape-only keeps the face generator as it is: give the file it comes from with --init-reenactor")
        if args.init_reenactor:
            self._initialise(args.init_reenactor, ctx)
        self.model.rfg.generator.to_rgb_lm.requires_grad_(False)  # unused (kept for official weights): DDP wants grads for all others
        self.ema = copy.deepcopy(self.model.rfg).requires_grad_(False).eval()
        self.identity_fn: Callable[[torch.Tensor], torch.Tensor] = aifd if aifd is not None else self.ema.style_encoder
        self.disc_module = PatchDiscriminator(args.disc_channels).to(ctx.device)
        self.generator_net = ctx.wrap(FaceReconstructor(self.model.rfg))
        self.disc = ctx.wrap(self.disc_module)
        self.shape_net = ctx.wrap(ShapeCycle(self.model.idsg))
        self.critic = ctx.wrap(LandmarkCritic(self.model.idsg))
        self.perceptual = PerceptualLoss(args.perceptual).to(ctx.device)
        if ctx.is_main:
            print(f"perceptual term: {self.perceptual.name}; identity code: {self.config['identity_source']}")
        betas = (0.0, 0.99)
        self.opt_g = torch.optim.Adam(self.model.rfg.parameters(), lr=args.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.disc_module.parameters(), lr=args.lr, betas=betas)
        self.opt_shape = torch.optim.Adam(self.shape_net.parameters(), lr=args.shape_lr, betas=(0.5, 0.999))
        self.opt_critic = torch.optim.Adam(self.critic.parameters(), lr=args.shape_lr, betas=(0.5, 0.999))
        self.samples = self._sample_faces()

    @torch.no_grad()
    def _aifd_codes(self, ctx: Context, chunk: int = 64) -> torch.Tensor:
        """AIFD codes [P, D] of every paired face (pair_index order), from its un-jittered crop."""
        codes = []
        with ctx.autocast():
            for start in tqdm(range(0, len(self.pair_index), chunk), desc="identity codes", disable=not ctx.is_main, leave=False):
                codes.append(self.aifd(self.faces.crops(self.pair_index[start : start + chunk]).to(ctx.device)).float().cpu())
        return torch.cat(codes)

    def _initialise(self, path: str, ctx: Context) -> None:
        """Start from a reenactor file: every tensor whose name and shape match (e.g. its shape generator and
        most of its face generator for a --source-warp model). A source-warp generator started from a plain one
        keeps its zero output convolution, so it still starts from the warped source; a shape generator trained
        on another identity code is left out."""
        own = self.model.state_dict()
        weights = read_weights(path, "dual_generator_reenactor")
        other_code = weights.config.get("identity_source", "vggface") != self.config["identity_source"]
        new_warp = self.model.source_warp and not weights.config.get("source_warp", False)

        def keep(name: str) -> bool:
            return not (other_code and name.startswith("idsg.")) and not (new_warp and name.startswith("rfg.generator.to_rgb.2."))

        loaded = {k: v for k, v in build_model(weights).state_dict().items() if k in own and own[k].shape == v.shape and keep(k)}
        missing = sorted(k for k in own if k.startswith("rfg.") and k not in loaded)
        if self.args.shape_only and missing:
            raise ValueError(f"--shape-only would export a face generator partly untrained: {Path(path).name} lacks {missing[:3]}... "
                             "(another preset, or --source-warp where the file has none?)")
        self.model.load_state_dict(loaded, strict=False)
        if ctx.is_main:
            print(f"initialised {len(loaded)} of {len(own)} tensors from {Path(path).name}; new: {sorted(set(own) - set(loaded))}")

    def state(self) -> dict:
        return {
            "model": self.model, "ema": self.ema, "disc": self.disc_module,
            "opt_g": self.opt_g, "opt_d": self.opt_d, "opt_shape": self.opt_shape, "opt_critic": self.opt_critic,
        }

    # ---- training ---------------------------------------------------------------------------------
    def train_step(self, ctx: Context) -> dict[str, float]:
        losses = {} if self.args.shape_only else self._face_batch_step(ctx)
        for stream in range(1, self.args.shape_steps + 1):
            losses.update(self._shape_step(ctx, *self._shape_batch(ctx, ctx.generator(stream=stream))))
        if not self.args.shape_only:
            self._update_ema(ctx.step)
        if ctx.is_main and self.args.sample_every and (ctx.step + 1) % self.args.sample_every == 0:
            self.write_samples(ctx.out_dir / "samples" / f"step_{ctx.step + 1:06d}.png", ctx.device)
        return losses

    def _face_batch_step(self, ctx: Context) -> dict[str, float]:
        generator = ctx.generator()
        index = ctx.epoch_batch(self.train_index)
        partner = self.partners(index, generator, self.args.self_share)
        targets, points = self.faces.crops_with_landmarks(index, generator, self.jitter_target)
        style_images, style_points = self.style_images(index, partner, generator)
        style_images = style_images.to(ctx.device)
        warped = warp_to_landmarks(style_images, style_points, points) if self.model.source_warp else None
        return self._face_step(ctx, targets.to(ctx.device), render_sketches(points, self.size).to(ctx.device), style_images, warped)

    def _r1_due(self, ctx: Context) -> bool:
        return self.args.r1_gamma > 0 and ctx.step % max(1, self.args.r1_every) == 0

    def _face_step(
        self, ctx: Context, targets: torch.Tensor, sketches: torch.Tensor, style_images: torch.Tensor, warped: torch.Tensor | None = None
    ) -> dict[str, float]:
        """One discriminator and one generator update on (target A, sketch of A, style image B, B warped to
        A's landmarks for --source-warp); returns the losses."""
        args = self.args
        with ctx.autocast():
            fake = self.generator_net(sketches, style_images, warped)

        # Discriminator: real faces vs reconstructions, both with their sketch; lazy R1 (in fp32) on real.
        self.disc_module.requires_grad_(True)
        r1_due = self._r1_due(ctx)
        real = targets.detach().requires_grad_(r1_due)
        with ctx.autocast() if not r1_due else torch.autocast(ctx.device.type, enabled=False):
            logits = self.disc(torch.cat([real, fake.detach().float()]), torch.cat([sketches, sketches])).float()
        real_logits, fake_logits = logits.chunk(2)
        d_loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
        out = {"d_loss": d_loss.item()}
        if r1_due:
            r1 = r1_penalty(real_logits, real)
            d_loss = d_loss + args.r1_gamma / 2 * args.r1_every * r1
            out["r1"] = r1.item()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()

        # Generator (and style encoder): reconstruction + perceptual + adversarial (through the plain D).
        self.disc_module.requires_grad_(False)
        with ctx.autocast():
            adversarial = F.softplus(-self.disc_module(fake, sketches).float()).mean()
            perceptual = self.perceptual(fake, targets)
        l1 = (fake.float() - targets).abs().mean()
        g_loss = args.l1_weight * l1 + args.perceptual_weight * perceptual + args.adv_weight * adversarial
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        return {**out, "l1": l1.item(), "perceptual": perceptual.item(), "g_adv": adversarial.item()}

    @torch.no_grad()
    def _identity_codes(self, index: np.ndarray, device: torch.device) -> torch.Tensor:
        """Identity codes [B, D] of un-jittered faces: the AIFD codes computed at setup, or the EMA style
        encoder's (identity_source "style": the code the model gives itself at inference)."""
        if self.aifd is not None:
            rows = self.pair_row[index]
            if (rows < 0).any():
                raise ValueError("identity codes were computed for paired people's faces only")
            return self.pair_codes[rows].to(device)
        return self.ema.style_encoder(self.faces.crops(index).to(device)).float()

    def _shape_batch(self, ctx: Context, generator: torch.Generator) -> tuple[np.ndarray, torch.Tensor]:
        """--shape-batch-size faces of paired people and the identity code of *another* photo of each one's
        person. (A face's own code, or its augmented copy's, carries its pose and expression: the shape
        generator then reads the driver's motion off the identity code, and at inference, where the code is
        another person's, it ignores the driver.)"""
        index = self.pair_index[torch.randint(len(self.pair_index), (self.args.shape_batch_size,), generator=generator).numpy()]
        return index, self._identity_codes(self.partners(index, generator), ctx.device)

    def _shape_step(self, ctx: Context, index: np.ndarray, identity: torch.Tensor) -> dict[str, float]:
        """IDSG on the aligned landmark sets of paired people's faces, with identity codes of other photos of
        their people (_shape_batch)."""
        args = self.args
        driver = self.normalised_landmarks(index).to(ctx.device)
        labels = torch.from_numpy(self.identity[index]).to(ctx.device)
        # The other person of each row is the previous row's, with that person's own identity code.
        other, other_identity = driver.roll(1, 0), identity.roll(1, 0)
        reconstruction, cross, cycle, cross_code, other_code = self.shape_net(driver, identity, other, other_identity)

        critic = _unwrap(self.critic)
        critic.requires_grad_(True)
        r1_due = self._r1_due(ctx)
        real = driver.detach().requires_grad_(r1_due)
        d_logits, class_logits = self.critic(torch.cat([real, cross.detach()]))
        real_logits, fake_logits = d_logits.chunk(2)
        critic_loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean() + identity_loss(class_logits[: len(index)], labels)
        if r1_due:
            critic_loss = critic_loss + args.r1_gamma / 2 * args.r1_every * r1_penalty(real_logits, real)
        self.opt_critic.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.opt_critic.step()

        critic.requires_grad_(False)
        fake_logits, fake_class = critic(cross)
        adversarial = F.softplus(-fake_logits).mean()
        classification = identity_loss(fake_class, labels)
        rec, cyc = point_error(reconstruction, driver, self.point_weights), point_error(cycle, other, self.point_weights)
        consistency = (cross_code - other_code).abs().mean()
        mouth = mouth_gap_error(cross, other)  # the code's own photo's mouth must not override the driver's
        loss = (args.landmark_weight * (rec + cyc) + consistency + args.adv_weight * adversarial
                + args.shape_class_weight * classification + args.mouth_weight * mouth)
        self.opt_shape.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_shape.step()
        return {
            "shape_rec": rec.item(), "shape_cycle": cyc.item(), "shape_code": consistency.item(),
            "shape_adv": adversarial.item(), "shape_cls": classification.item(), "shape_mouth": mouth.item(), "critic_loss": critic_loss.item(),
        }

    @torch.no_grad()
    def _update_ema(self, step: int) -> None:
        decay = min(self.args.ema_decay, (1 + step) / (10 + step))  # short memory early, when G moves fast
        for averaged, current in zip(self.ema.parameters(), self.model.rfg.parameters()):
            averaged.lerp_(current, 1 - decay)
        for averaged, current in zip(self.ema.buffers(), self.model.rfg.buffers()):
            averaged.copy_(current)

    # ---- samples, validation, export --------------------------------------------------------------
    def _sample_faces(self) -> dict[str, np.ndarray]:
        """Fixed faces for the sample grids: 4 same-person pairs (LFW first), 4 (source, driver) pairs of val faces."""
        people = list(self.same_person.values())[:4]
        pool = self.val_index if len(self.val_index) >= 2 else self.train_index
        cross = pool[: 2 * min(4, len(pool) // 2)]
        return {"target": np.array([p[0] for p in people]), "source": np.array([p[1] for p in people]), "cross_source": cross[0::2], "driver": cross[1::2]}

    @torch.no_grad()
    def reenact_faces(self, source: np.ndarray, driver: np.ndarray, device: torch.device) -> tuple[torch.Tensor, ...]:
        """EMA model, absolute mode, on cached faces: (source crops, sketches, outputs, target landmarks px)."""
        sources, source_points = self.faces.crops_with_landmarks(source)
        sources = sources.to(device)
        driving = self.faces.aligned_landmarks(driver) / self.size
        identity = self.identity_fn(sources).float()
        shaped = self.model.idsg(torch.from_numpy(driving).float().flatten(1).to(device), identity).double().cpu().numpy().reshape(-1, 68, 2)
        target = rebuild_eyelids(shaped, driving) * self.size
        sketches, outputs = draw_faces(self.ema, sources, source_points, target)
        return sources, sketches, outputs, target

    @torch.no_grad()
    def write_samples(self, path: Path, device: torch.device) -> None:
        """Rows of (source, sketch, output, target): reconstructions, then reenactments (target = driver)."""
        s = self.samples
        targets, points = self.faces.crops_with_landmarks(s["target"])
        sources, source_points = self.faces.crops_with_landmarks(s["source"])
        sources = sources.to(device)
        sketches, outputs = draw_faces(self.ema, sources, source_points, points)
        rows = [torch.stack([sources, sketches, outputs, targets.to(device)], 1)]
        if len(s["driver"]):
            cross_sources, cross_sketches, outputs, _ = self.reenact_faces(s["cross_source"], s["driver"], device)
            rows.append(torch.stack([cross_sources, cross_sketches, outputs, self.faces.crops(s["driver"]).to(device)], 1))
        grid = torch.cat(rows).clamp(0, 1).cpu()  # [rows, 4, 3, S, S]
        grid = grid.permute(0, 3, 1, 4, 2).reshape(grid.shape[0] * self.size, 4 * self.size, 3)
        save_image(grid, path)

    @torch.no_grad()
    def evaluate(self, ctx: Context) -> dict[str, float]:
        """Val faces (UTKFace val): EMA self-reconstruction L1, and the shape generator's
        self-reconstruction error in inter-ocular distances (eye centres)."""
        if not len(self.val_index):
            return {}
        index = self.val_index[:64]
        crops, points = self.faces.crops_with_landmarks(index)
        crops = crops.to(ctx.device)
        # From a fixed jittered copy: a warp-guided generator given the target itself would only copy it.
        sources, source_points = self.faces.crops_with_landmarks(index, torch.Generator().manual_seed(0), self.jitter_copy)
        with ctx.autocast():
            _, fake = draw_faces(self.ema, sources.to(ctx.device), source_points, points)
        driving = self.normalised_landmarks(index).to(ctx.device)
        shaped = self.model.idsg(driving, self.identity_fn(crops).float()).view(-1, 68, 2)
        driving = driving.view(-1, 68, 2)
        inter_ocular = (driving[:, 42:48].mean(1) - driving[:, 36:42].mean(1)).norm(dim=-1)
        nme = ((shaped - driving).norm(dim=-1).mean(1) / inter_ocular).mean()
        return {"val_l1": float((fake - crops).abs().mean()), "val_shape_nme": float(nme)}

    def export(self, ctx: Context, path: Path) -> None:
        args = self.args
        model = DualGeneratorReenactor(**self.config)
        model.idsg.load_state_dict(self.model.idsg.state_dict())
        model.rfg.load_state_dict(self.ema.state_dict())
        dtype = EXPORT_DTYPES[args.export_dtype]
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
        provenance = {
            "command": training_command(),
            "steps": ctx.step, "batch_size": ctx.config.batch_size, "preset": args.preset,
            "data": self.data,
            "augmentation": {"elastic": args.elastic, "self_share": args.self_share, "copy_changes": copy_changes(self.jitter_copy)},
            "init_reenactor": Path(args.init_reenactor).name if args.init_reenactor else "",
            "shape_only": args.shape_only, "shape_losses": {"lip_weight": args.lip_weight, "mouth_weight": args.mouth_weight, "class_weight": args.shape_class_weight},
            "perceptual": self.perceptual.name, "identity_source": self.config["identity_source"], "ema": "face generator and style encoder",
        }
        file = save_weights(path / "reenactor.safetensors", state, "dual_generator_reenactor", self.config, {**PREPROCESSING, "size": self.size}, provenance)
        megabytes = file.stat().st_size / 1e6
        if megabytes > BUNDLE_LIMIT_MB:
            print(f"warning: {file.name} is {megabytes:.1f} MB, over the {BUNDLE_LIMIT_MB:.0f} MB bundle limit; use --export-dtype fp16 or a smaller --preset")
        (path / "MODEL_CARD.md").write_text(model_card(self.config, provenance, megabytes, sum(v.numel() for v in state.values()), args.export_dtype))


def copy_changes(jitter: dict) -> str:
    """The self-reconstruction copies' changes, in words, for the model card."""
    names = {"flip": "flips", "color": "colour", "grey": "greyscale"}
    return ", ".join(["similarity jitter", *(names[k] for k in ("flip", "color", "grey") if jitter.get(k))])


WARP_NOTE = ("warp-guided (`source_warp`, a project option): it takes the source face thin-plate-spline warped to the "
             "target landmarks besides the sketch and style code, and corrects it")
IDENTITY_NOTES = {
    "style": "the model's own style encoder: no other file needed",
    "aifd": "the pack's AIFD encoder embedding: load that encoder with the model",
}


def model_card(config: dict, provenance: dict, megabytes: float, parameters: int, dtype: str) -> str:
    data, augmentation = provenance["data"], provenance["augmentation"]
    pairs = ", ".join(f"{name} {n['faces']} faces of {n['people']} people" for name, n in data["pairs"].items())
    copies = ", ".join(f"{name} {n}" for name, n in data["copies"].items())
    return f"""# AgeReenact dual-generator reenactor ({config['size']} px)

- Architecture: `dual_generator_reenactor` (shape generator `idsg.*`, face generator `rfg.*`; EMA face generator).
- Config: `{json.dumps(config, sort_keys=True)}`
- File: reenactor.safetensors, {megabytes:.1f} MB ({parameters / 1e6:.2f} M values stored as {dtype}).
- Identity code of the shape generator: `{config['identity_source']}` ({IDENTITY_NOTES[config['identity_source']]}).
- Face generator: {WARP_NOTE if config.get('source_warp') else 'the official one (sketch + style code)'}.
- Training: {provenance['steps']} steps, batch {provenance['batch_size']}; command `{provenance['command']}`.
  - Face generator: reconstruction of a face from its landmark sketch and the style of another photo of the
    same person (pairs) or of an augmented copy (self-reconstruction: {augmentation['copy_changes']});
    elastic warp amplitude {augmentation['elastic']:g} of the crop size (0: none); pair rows trained
    as copies instead: {augmentation['self_share']:.0%}. L1, perceptual term: {provenance['perceptual']};
    sketch-conditioned patch discriminator (non-saturating) with R1 on real faces.
  - Shape generator: aligned landmark sets of paired people's faces, each with the identity code of another
    photo of its person; reconstruction, cycle, landmark-code consistency, adversarial and
    identity-classification losses.
- Data (detected faces): same-person pairs of `train` people with two or more of them ({pairs});
  self-reconstruction copies of every other `train` face ({copies}). LFW and FG-NET `test` people and the
  UTKFace `val`/`test` splits were not trained on ({data['val_faces']} UTKFace `val` faces were used for
  validation metrics and samples).
- Landmarks: dlib's 68-point predictor (trained on iBUG 300-W, licensed for non-commercial use only), on
  every face, FG-NET's too (its hand-placed points follow another 68-point scheme).
- Licences of the data: LFW (research benchmark), FG-NET (research use), UTKFace (non-commercial research
  only): use this model for non-commercial research only.
- Evaluation (identity kept: dlib distance source vs output < 0.6; pose: landmark NME vs the target):
  `age-reenact evaluate reenactment --model reenactor.safetensors --lfw ../shared/data/lfw --utkface ../shared/data/utkface-part1`
- Limitations: small and low-resolution ({config['size']} px); absolute mode only as good as the landmark
  detector; faces far from the poses of LFW/UTKFace/FG-NET are out of distribution.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lfw", required=True, help="LFW folder (people.csv, images/); only `train` people are used")
    parser.add_argument("--utkface", action="append", default=[],
                        help="UTKFace folder with labels.csv, images beside it or in images/ (train split: self-reconstruction copies); "
                             "repeat for more folders; the first one's val split is the validation set")
    parser.add_argument("--fgnet", help="FG-NET folder (labels.csv with person and split, images/): `train` people as same-person pairs across ages")
    parser.add_argument("--elastic", type=float, default=0.0,
                        help="smooth elastic warp of targets and copies (image and landmarks together): amplitude as a share of the crop size (0 = off)")
    parser.add_argument("--self-share", type=float, default=0.0,
                        help="share of pair rows trained as self-reconstruction from their own augmented copy instead (1 = self-reconstruction only)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--perceptual", help="age_resnet or aifd_encoder safetensors for the perceptual term; default: multi-scale L1 + SSIM")
    parser.add_argument("--source-warp", action="store_true",
                        help="warp-guided face generator (a project option): it also takes the style image warped to the target landmarks and corrects it")
    parser.add_argument("--init-reenactor", help="start from this reenactor file: every tensor whose name and shape match (e.g. a finished run's shape generator)")
    parser.add_argument("--aifd-encoder", help="AIFD encoder safetensors: the shape generator's identity code (default: the style code)")
    parser.add_argument("--lr", type=float, default=1e-4, help="face generator, style encoder and discriminator")
    parser.add_argument("--shape-lr", type=float, default=1e-4, help="shape generator and its critic")
    parser.add_argument("--l1-weight", type=float, default=10.0)
    parser.add_argument("--perceptual-weight", type=float, default=2.0)
    parser.add_argument("--adv-weight", type=float, default=1.0)
    parser.add_argument("--landmark-weight", type=float, default=100.0, help="shape reconstruction/cycle (distances in crop sizes)")
    parser.add_argument("--lip-weight", type=float, default=1.0, help="weight of the 20 lip points in the shape reconstruction/cycle, against 1 for the others")
    parser.add_argument("--shape-batch-size", type=int, default=8, help="faces of paired people per shape generator update (landmarks only: cheap)")
    parser.add_argument("--shape-steps", type=int, default=1, help="shape generator updates per training step")
    parser.add_argument("--shape-class-weight", type=float, default=1.0,
                        help="weight of the landmark classifier's term: the cross-identity shape must look like the code's person")
    parser.add_argument("--mouth-weight", type=float, default=0.0,
                        help="weight of the driver's mouth opening (inner-lip gaps) kept in the cross-identity shape: "
                             "identity codes carry their photo's expression, which the shape generator otherwise copies")
    parser.add_argument("--shape-only", action="store_true",
                        help="train only the shape generator and its critic; the face generator stays as --init-reenactor gave it")
    parser.add_argument("--r1-gamma", type=float, default=1.0)
    parser.add_argument("--r1-every", type=int, default=4, help="lazy R1: every N steps, scaled by N")
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--disc-channels", type=int, default=32)
    parser.add_argument("--sample-every", type=int, default=500, help="write a sample grid PNG every N steps (0 = never)")
    parser.add_argument("--val-faces", type=int, default=64)
    parser.add_argument("--export-dtype", choices=sorted(EXPORT_DTYPES), default="fp32")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N photos of each dataset (smoke tests)")
    parser.add_argument("--cache-dir", default="runs/cache")


def main(args: argparse.Namespace, config: RunConfig) -> dict:
    return run(ReenactorTask(args), config)
