"""Dual-generator face reenactment (Hsu, Tsai, Wu, CVPR 2022): IDSG + RFG, converters and the video pipeline.

Importing the package registers the architectures ("dual_generator_reenactor", "vggface_fc7") and the
converters ("dual_generator", "vggface_dag").
"""
from . import convert
from .model import DualGeneratorReenactor
from .pipeline import Reenactor, ReenactResult, reenact
from .vggface import VGGFaceIdentity

__all__ = ["DualGeneratorReenactor", "Reenactor", "ReenactResult", "VGGFaceIdentity", "convert", "reenact"]
