"""AgeTransGAN training losses (training only: nothing here runs at inference, so it stays out of the pack).

Generator, for a source I_s of group s turned into Î_t = G(I_s, t) and back, Ĩ_s = G(Î_t, s):
    adversarial    softplus(-D(Î_t, t))                       non-saturating
    age_d          CE(C_a(Î_t), t)                            the discriminator's embedded classifier
    age_estimator  -log P_est(group t | Î_t)                  the frozen age estimator's group probability
    cycle          |Ĩ_s - I_s|_1                              back to the source group
    mi             1 - cos(E_A(I_s), E_A(Î_t))               the frozen AIFD encoder, on the 112 resize
    prototype      |blur(Î_t - I_s) - k blur(P_t - P_s)|_1     P_g: the mean aligned training face of group g
    detail         |hp(Î_t - I_s - (r_st - 1) hp(I_s))|_1      hp: fine detail; r_st: the groups' detail-amplitude ratio
Discriminator: softplus(D(Î_t, t)) + softplus(-D(I_s, s)) + CE(C_a(I_s), s), plus lazy R1 on the reals.
With `estimator_view` (`low_pass_view`, `grey_view` or both) the frozen estimator reads the outputs at a random lower
resolution, or in grey.
Every weight is a field of `LossWeights`. With `augment` (DiffAugment, training/diffaugment.py) D reads every
real and generated face, in both players' terms, through it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from age_reenact.agetransgan.generator import fine_detail
from age_reenact.aifd.mi_loss import MILoss
from age_reenact.colour import LUMA
from age_reenact.estimator.predict import AgeEstimator, prepare, readouts
from age_reenact.filters import gaussian_blur, through_resolution


@dataclass
class LossWeights:
    adversarial: float = 1.0
    age_d: float = 1.0  # generator side: C_a on the outputs
    age_d_real: float = 1.0  # discriminator side: C_a on the real faces
    age_estimator: float = 1.0
    cycle: float = 10.0
    mi: float = 1.0
    prototype: float = 0.0
    detail: float = 0.0
    r1: float = 1.0  # gamma: the penalty is gamma / 2 * |grad D(real)|^2
    r1_every: int = 16  # lazy regularisation: every N steps, scaled by N


class EstimatorGroupLoss(nn.Module):
    """-log P(target group) from a frozen age estimator on generated faces.

    The estimator must read AgeTransGAN-aligned crops: generated faces are only resized (no re-detection)."""

    def __init__(self, estimator: AgeEstimator):
        super().__init__()
        if estimator.convention != "agetransgan":
            raise ValueError(
                f"{estimator.name} reads '{estimator.convention}'-aligned faces; training compares it with generated "
                "AgeTransGAN crops without re-detection, so it needs an estimator trained with --convention agetransgan."
            )
        self.model = estimator.model.eval().requires_grad_(False)
        self.preprocessing = estimator.preprocessing

    def train(self, mode: bool = True) -> "EstimatorGroupLoss":
        super().train(mode)
        self.model.eval()  # frozen: BatchNorm running statistics stay as trained
        return self

    def group_probabilities(self, faces: torch.Tensor) -> torch.Tensor:
        """Generated faces [B, 3, H, H] in [-1, 1] -> group probabilities [B, G] (differentiable)."""
        logits = self.model(prepare((faces + 1) / 2, self.preprocessing))
        return readouts(logits, self.model.ages.to(logits.device)).group_probabilities

    def forward(self, faces: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probabilities = self.group_probabilities(faces)
        return -(probabilities.gather(1, target[:, None])[:, 0].clamp(min=1e-6)).log().mean()


def grey_view(faces: torch.Tensor) -> torch.Tensor:
    """The faces in grey (ITU-R 601 luma in every channel). A frozen estimator that reads this view gives no
    reward for hue, so the generator cannot move it with colour patches (magenta cheeks, a blue tint around
    the eyes: docs/results/agetransgan_training.md section 5), only with brightness and texture."""
    luma = torch.tensor(LUMA, dtype=faces.dtype, device=faces.device).view(1, 3, 1, 1)
    return (faces * luma).sum(1, keepdim=True).expand_as(faces)


def low_pass_view(faces: torch.Tensor, generator: torch.Generator | None = None, smallest: float = 0.35) -> torch.Tensor:
    """The faces as a lower-resolution photo shows them: the batch resized down to a random share of its side
    (`smallest` to 1, antialiased) and back up. A frozen estimator read through it rewards age cues that survive
    blur, not the pixel-level speckle a residual generator otherwise learns to move the estimator with."""
    small = max(8, round(faces.shape[-1] * (smallest + (1 - smallest) * torch.rand((), generator=generator).item())))
    return through_resolution(faces, small)


class PrototypeGuide(nn.Module):
    """|blur(Î_t - I_s) - scale * blur(P_t - P_s)|_1: the output's coarse change follows the difference between
    the mean aligned faces of the target and source groups (Burt & Perrett's prototype ageing, 1995), scaled.

    A per-face target the frozen estimator's gradient cannot provide: on aligned crops the prototypes'
    difference is the change in shading, colour and feature size that ageing brings on average, and a
    residual generator led by the estimator alone learns adversarial patches instead
    (docs/results/agetransgan_training.md). The blur leaves fine detail to the other losses."""

    def __init__(self, prototypes: torch.Tensor, scale: float = 1.5, sigma: float = 2.0):
        """prototypes: [G, 3, S, S] mean faces in [-1, 1]."""
        super().__init__()
        self.sigma, self.scale = sigma, scale
        self.register_buffer("blurred", gaussian_blur(prototypes.float(), sigma))

    def forward(self, fake: torch.Tensor, source: torch.Tensor, source_group: torch.Tensor, target_group: torch.Tensor) -> torch.Tensor:
        change = gaussian_blur(fake.float() - source.float(), self.sigma)
        wanted = self.scale * (self.blurred[target_group] - self.blurred[source_group])
        return (change - wanted).abs().mean()


class DetailGuide(nn.Module):
    """|hp(Î_t - I_s - (r_st - 1) hp(I_s))|_1: the fine detail of the output's change is the input's detail
    times r_st - 1, so the output has more of the input's texture where the target group's photos have more
    (the old groups: wrinkles, folds) and less where they have less than the source group's.

    r_st = sqrt(E_t / E_s) ** exponent, clamped to [1/4, 4], E_g the group's mean local detail energy per
    pixel (`detail_energy`): Tiddeman, Burt & Perrett's texture-enhanced prototypes (2001), the texture the mean
    faces of `PrototypeGuide` blur away. Exponent 1 follows the groups' RMS detail; more exaggerates it, as
    the prototype guide's scale does. E_g measures the photos, not only the skin: on UTKFace the child groups'
    photos have more fine detail than the 20-49 groups' (docs/results/agetransgan_training.md section 5)."""

    def __init__(self, energy: torch.Tensor, exponent: float):
        """energy: [G, 1, S, S] mean detail energy per group."""
        super().__init__()
        self.exponent = exponent
        self.register_buffer("energy", energy.float().clamp(min=1e-6))

    def ratio(self, source_group: torch.Tensor, target_group: torch.Tensor) -> torch.Tensor:
        return (self.energy[target_group] / self.energy[source_group]).pow(self.exponent / 2).clamp(0.25, 4.0)

    def forward(self, fake: torch.Tensor, source: torch.Tensor, source_group: torch.Tensor, target_group: torch.Tensor) -> torch.Tensor:
        wanted = (self.ratio(source_group, target_group) - 1) * fine_detail(source)
        return fine_detail(fake - source - wanted).abs().mean()


ENERGY_SIGMA = 3.0  # px: the detail energy is pooled over about a wrinkle's length


def detail_energy(faces: torch.Tensor) -> torch.Tensor:
    """Local energy of the faces' fine detail [B, 1, S, S]: the squared high-pass of the luminance, blurred
    into a map of where the texture is."""
    detail = fine_detail(faces.mean(1, keepdim=True))
    return gaussian_blur(detail * detail, ENERGY_SIGMA)


def group_means(maps: Callable[[np.ndarray], torch.Tensor], groups: np.ndarray, count: int, chunk: int = 512) -> torch.Tensor:
    """Mean of a per-face map over each group [count, C, S, S], mirrored copies included (the training flips
    faces, so a target must not lean left or right). `maps(indices)` gives the maps of those faces."""
    sums, totals = None, np.zeros(count)
    for start in range(0, len(groups), chunk):
        values = maps(np.arange(start, min(start + chunk, len(groups))))
        values = values + values.flip(-1)
        part = torch.from_numpy(groups[start : start + chunk]).long()
        summed = torch.zeros(count, *values.shape[1:]).index_add_(0, part, values)
        sums = summed if sums is None else sums + summed
        totals += 2 * np.bincount(part.numpy(), minlength=count)
    if (totals == 0).any():
        missing = [g for g in range(count) if totals[g] == 0]
        raise ValueError(f"no training faces in age groups {missing}: the group targets need every group")
    return sums / torch.from_numpy(totals).float()[:, None, None, None]


def group_prototypes(crops: Callable[[np.ndarray], torch.Tensor], groups: np.ndarray, count: int, chunk: int = 512) -> torch.Tensor:
    """Mean face of each group [count, 3, S, S] in [-1, 1]. `crops(indices)` gives faces in 0..1."""
    return group_means(crops, groups, count, chunk) * 2 - 1


def generator_losses(
    generator: nn.Module,
    discriminator: nn.Module,
    source: torch.Tensor,
    source_group: torch.Tensor,
    target_group: torch.Tensor,
    noise: tuple[list[torch.Tensor], list[torch.Tensor]],
    estimator: EstimatorGroupLoss | None,
    mi: MILoss | None,
    group_count: int,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    estimator_view: Callable[[torch.Tensor], torch.Tensor] | None = None,
    prototype: PrototypeGuide | None = None,
    detail: DetailGuide | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Unweighted generator loss terms (fp32 scalars) and the generated faces Î_t (not augmented).

    Call inside the run's autocast; `noise` holds the noise of the forward and of the cycle pass."""
    target_code = F.one_hot(target_group, group_count).float()
    fake = generator(source, target_code, noise[0])
    back = generator(fake, F.one_hot(source_group, group_count).float(), noise[1])
    score, logits = discriminator(fake if augment is None else augment(fake), target_code)
    losses = {
        "adversarial": F.softplus(-score).mean(),
        "age_d": F.cross_entropy(logits.float(), target_group),
        "cycle": (back.float() - source.float()).abs().mean(),
    }
    # The frozen networks resize with antialiasing, which CPU autocast has no bf16 kernel for.
    if estimator is not None:
        losses["age_estimator"] = estimator(fake.float() if estimator_view is None else estimator_view(fake.float()), target_group)
    if mi is not None:
        losses["mi"] = mi(source, fake.float())
    if prototype is not None:
        losses["prototype"] = prototype(fake, source, source_group, target_group)
    if detail is not None:
        losses["detail"] = detail(fake, source, source_group, target_group)
    return losses, fake


def discriminator_losses(
    discriminator: nn.Module,
    real: torch.Tensor,
    real_group: torch.Tensor,
    fake: torch.Tensor,
    fake_group: torch.Tensor,
    group_count: int,
    r1: bool,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Unweighted discriminator terms; with `r1`, the real images' gradient penalty |grad D(real)|^2 too
    (with respect to the images before `augment`, as DiffAugment's StyleGAN2 code does)."""
    real = real.detach().requires_grad_(r1)
    seen = augment or (lambda x: x)
    real_score, real_logits = discriminator(seen(real), F.one_hot(real_group, group_count).float())
    fake_score, _ = discriminator(seen(fake.detach()), F.one_hot(fake_group, group_count).float())
    losses = {
        "d_adversarial": F.softplus(fake_score).mean() + F.softplus(-real_score).mean(),
        "d_age": F.cross_entropy(real_logits.float(), real_group),
    }
    if r1:
        (grad,) = torch.autograd.grad(real_score.float().sum(), real, create_graph=True)
        losses["r1"] = grad.float().pow(2).flatten(1).sum(1).mean()
    return losses


def weighted_sum(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    return sum(weights[name] * value for name, value in losses.items())
