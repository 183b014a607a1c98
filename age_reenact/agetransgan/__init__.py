"""AgeTransGAN (Hsu et al., ECCV 2022) inference: the generator, age codes, checkpoint conversion, pipeline.

Importing this package registers the generator and discriminator architectures and the "agetransgan" converter.
"""
from .age_codes import age_code, between_code, code_label, group_codes, one_hot_code, sweep_codes
from .convert import convert_official, infer_config, load_generator
from .discriminator import AgeTransGANDiscriminator
from .generator import AgeTransGANGenerator
from .pipeline import AgeTransGAN

__all__ = [
    "AgeTransGAN",
    "AgeTransGANDiscriminator",
    "AgeTransGANGenerator",
    "age_code",
    "between_code",
    "code_label",
    "convert_official",
    "group_codes",
    "infer_config",
    "load_generator",
    "one_hot_code",
    "sweep_codes",
]
