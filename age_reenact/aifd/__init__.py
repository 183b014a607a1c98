"""AIFD identity encoder E_A (MTLFace's attention-based feature decomposition), the MI loss built on it,
and face verification. Importing the package registers the "aifd_encoder" architecture and the
"mtlface_tpami", "mtlface_cvpr" and "aifd_identity" converters."""
from . import convert
from .afd import AFD_VARIANTS, AttentionDecomposition
from .encoder import ARCHITECTURE, PREPROCESSING, AIFDEncoder, load_encoder
from .mi_loss import MILoss
from .similarity import DEFAULT_THRESHOLD, FaceSimilarity, SimilarityResult, cosine, encoder_input, identity_embedding

__all__ = [
    "AFD_VARIANTS",
    "ARCHITECTURE",
    "PREPROCESSING",
    "AIFDEncoder",
    "AttentionDecomposition",
    "DEFAULT_THRESHOLD",
    "FaceSimilarity",
    "MILoss",
    "SimilarityResult",
    "convert",
    "cosine",
    "encoder_input",
    "identity_embedding",
    "load_encoder",
]
