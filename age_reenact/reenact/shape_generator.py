"""IDSG, the ID-preserving shape generator of the dual-generator reenactor (landmark space).

The driver's 68 landmarks (crop pixels / crop size, flattened x0, y0, x1, y1, ...) are encoded by
`lm_linear_encoder`, concatenated with the source's identity code, and decoded by `linear_decoder` into
the target landmarks: the driver's pose and expression on the source's face shape. The official
identity code is the 4096-d VGG-Face fc7 activation (vggface.py); `identity_dim` makes it pluggable.
`linear_discriminator` and `linear_classfier` (sic, the official name) are only used in training but
are part of the official checkpoint, so they are built too and load strictly.
"""
from __future__ import annotations

import torch
from torch import nn

NUM_LANDMARKS = 68
LANDMARK_DIM = 2 * NUM_LANDMARKS


def linear_stack(dim_in: int, hidden: int, repeat: int = 5) -> list[nn.Module]:
    """`repeat` x (Linear + LeakyReLU 0.2): the body shared by all four IDSG networks."""
    layers: list[nn.Module] = []
    for _ in range(repeat):
        layers += [nn.Linear(dim_in, hidden), nn.LeakyReLU(0.2)]
        dim_in = hidden
    return layers


class LandmarkEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(*linear_stack(LANDMARK_DIM, LANDMARK_DIM), nn.Linear(LANDMARK_DIM, LANDMARK_DIM))

    def forward(self, landmarks: torch.Tensor) -> torch.Tensor:
        return self.main(landmarks)


class LandmarkDecoder(nn.Module):
    """[landmark code 136 | identity code] -> target landmarks in 0..1 (sigmoid)."""

    def __init__(self, identity_dim: int = 4096, hidden: int = 512):
        super().__init__()
        self.main = nn.Sequential(*linear_stack(LANDMARK_DIM + identity_dim, hidden), nn.Linear(hidden, LANDMARK_DIM))

    def forward(self, landmark_code: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.main(torch.cat([landmark_code, identity], dim=1)))


class LandmarkDiscriminator(nn.Module):
    """Real/fake logit for a landmark set (training only)."""

    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(*linear_stack(LANDMARK_DIM, LANDMARK_DIM))
        self.main_2 = nn.Sequential(nn.Linear(LANDMARK_DIM, 1))

    def forward(self, landmarks: torch.Tensor) -> torch.Tensor:
        return self.main_2(self.main(landmarks))


class LandmarkClassifier(nn.Module):
    """Identity probabilities (sigmoid) of a landmark set, over the training identities (training only)."""

    def __init__(self, num_identities: int = 1454):
        super().__init__()
        self.main = nn.Sequential(*linear_stack(LANDMARK_DIM, LANDMARK_DIM))
        self.main_3 = nn.Sequential(nn.Linear(LANDMARK_DIM, num_identities))

    def forward(self, landmarks: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.main_3(self.main(landmarks)))


class ShapeGenerator(nn.Module):
    """The IDSG stage: driver landmarks [B, 136] + identity [B, identity_dim] -> target landmarks [B, 136]."""

    def __init__(self, identity_dim: int = 4096, num_identities: int = 1454):
        super().__init__()
        self.lm_linear_encoder = LandmarkEncoder()
        self.linear_decoder = LandmarkDecoder(identity_dim)
        self.linear_discriminator = LandmarkDiscriminator()
        self.linear_classfier = LandmarkClassifier(num_identities)

    def forward(self, landmarks: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        return self.linear_decoder(self.lm_linear_encoder(landmarks), identity)
