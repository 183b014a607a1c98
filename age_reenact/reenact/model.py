"""The dual-generator reenactor as one model file: IDSG under `idsg.`, RFG under `rfg.`.

One safetensors file (architecture "dual_generator_reenactor") holds both stages; below each prefix the
keys are the official ones, e.g. `idsg.lm_linear_encoder.main.0.weight`,
`rfg.generator.decode.0.norm1.fc.weight`, `rfg.style_encoder.fc.weight`. The config:
- size: crop and generator resolution (the official model: 256; 128 also works with the same code);
- style_dim: RFG style code size (official 128);
- identity_dim / identity_source: the IDSG's source identity code, "vggface" (VGG-Face fc7, 4096-d,
  weights in a separate "vggface_fc7" file), "aifd" (the pack's AIFD identity embedding, 512-d), or
  "style" (the RFG style encoder's own code, identity_dim = style_dim: self-contained project models);
- num_identities: output size of the training-only `linear_classfier` (official vox1 model: 1454);
- base_channels / max_conv_dim: RFG widths; None = the official 2**14 // size;
- source_warp: the RFG also takes the source face warped to the target landmarks and corrects it
  (face_generator.Generator); a project option, False in official checkpoints.
"""
from __future__ import annotations

from torch import nn

from ..weights import register_architecture
from .face_generator import ReenactedFaceGenerator
from .shape_generator import ShapeGenerator

IDENTITY_SOURCES = ("vggface", "aifd", "style")


@register_architecture("dual_generator_reenactor")
class DualGeneratorReenactor(nn.Module):
    def __init__(
        self,
        size: int = 256,
        style_dim: int = 128,
        identity_dim: int = 4096,
        identity_source: str = "vggface",
        num_identities: int = 1454,
        base_channels: int | None = None,
        max_conv_dim: int = 512,
        source_warp: bool = False,
    ):
        super().__init__()
        if identity_source not in IDENTITY_SOURCES:
            raise ValueError(f"identity_source must be one of {IDENTITY_SOURCES}, got {identity_source!r}")
        if identity_source == "style" and identity_dim != style_dim:
            raise ValueError(f"identity_source 'style' uses the style code as identity code: identity_dim must be style_dim ({style_dim}), got {identity_dim}")
        self.size = size
        self.style_dim = style_dim
        self.identity_dim = identity_dim
        self.identity_source = identity_source
        self.source_warp = source_warp
        self.idsg = ShapeGenerator(identity_dim, num_identities)
        self.rfg = ReenactedFaceGenerator(size, style_dim, base_channels, max_conv_dim, source_warp)
