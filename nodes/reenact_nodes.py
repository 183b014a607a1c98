"""Dual-generator reenactor nodes: load a reenactor, then reenact a source face with a driving video."""
from __future__ import annotations

from pathlib import Path

from ..age_reenact.face.detect import FaceDetector
from ..age_reenact.face.paste import COLOR_MATCH
from ..age_reenact.reenact.motion import MODES
from ..age_reenact.devices import DEVICES, PRECISIONS
from ..age_reenact.reenact.pipeline import NO_FACE_ACTIONS, OUTPUTS, load_reenactor, reenact
from .comfy_services import Progress, check_model, model_files, model_input, resolve_model, torch_device

CATEGORY = "AgeReenact/reenactor"
FAMILY = "reenactor"
IDENTITY_FAMILY = "aifd"
NO_IDENTITY = "none"


def _identity_file(name: str) -> Path:
    """An identity encoder from the reenactor folders (VGG-Face files), else from the AIFD folders."""
    if name in model_files(FAMILY):
        return resolve_model(FAMILY, name)
    return resolve_model(IDENTITY_FAMILY, name)


class ReenactorLoader:
    DESCRIPTION = (
        "Loads a dual-generator reenactor (shape generator + face generator). Its absolute mode needs an identity "
        "encoder: a VGG-Face file for official models, the AIFD encoder for the pack's models; without one only "
        "the relative mode works."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("REENACTOR_MODEL",)
    RETURN_NAMES = ("reenactor",)
    OUTPUT_TOOLTIPS = ("The loaded reenactor; connect it to Reenact.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": model_input(FAMILY, "A dual-generator reenactor"),
                "identity_model": ([NO_IDENTITY] + model_files(FAMILY) + model_files(IDENTITY_FAMILY), {"default": NO_IDENTITY, "tooltip": "Identity encoder for the absolute mode: for official models the VGG-Face file (`age-reenact convert vggface_dag vgg_face_dag.pth vggface_fc7.safetensors`, into models/reenactor/); for the pack's models the AIFD encoder (models/aifd/). 'none': relative mode only."}),
                "precision": (list(PRECISIONS), {"default": "fp32", "tooltip": "Face generator precision: bf16/fp16 are faster on GPUs; fp16 needs a GPU."}),
                "device": (list(DEVICES), {"default": "auto", "tooltip": "auto: ComfyUI's device (the GPU when there is one)."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, model_name):
        return check_model(FAMILY, model_name)

    def load(self, model_name, identity_model, precision, device):
        identity = None if identity_model == NO_IDENTITY else _identity_file(identity_model)
        return (load_reenactor(resolve_model(FAMILY, model_name), identity, torch_device(device), precision),)


class Reenact:
    DESCRIPTION = (
        "Gives the source face the head pose and expression of every driving frame (a video as an IMAGE batch), "
        "in chunks with progress, and pastes the new face into the driving frames or returns the face crops."
    )
    CATEGORY = CATEGORY
    FUNCTION = "reenact"
    RETURN_TYPES = ("IMAGE", "MASK", "IMAGE")
    RETURN_NAMES = ("images", "mask", "sketches")
    OUTPUT_TOOLTIPS = (
        "Driving frames with the reenacted face (paste), or the reenacted face crops (crops).",
        "Where the face was pasted (paste), or the face mask of each crop (crops).",
        "The landmark sketches the face generator drew from.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "reenactor": ("REENACTOR_MODEL", {"tooltip": "From Reenactor Loader."}),
                "source_image": ("IMAGE", {"tooltip": "The face to animate (the first image of a batch is used; the largest face in it)."}),
                "driving_images": ("IMAGE", {"tooltip": "Driving frames: one image or a video's frames. The output has their size and count."}),
                "mode": (list(MODES), {"default": "absolute", "tooltip": "absolute: the shape generator redraws the driver's landmarks on the source's face shape (the paper's method; needs the identity code). relative: the driver's motion since its first frame is added to the source's landmarks."}),
                "smoothing": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "Temporal smoothing of the driver's landmarks against jitter (one-euro filter); 0 = off."}),
                "output": (list(OUTPUTS), {"default": "paste", "tooltip": "paste: the driving frames with the new face; crops: the reenactor-size face crops."}),
                "chunk_size": ("INT", {"default": 16, "min": 1, "max": 256, "tooltip": "Frames per batch on the device; lower it if memory runs out."}),
                "on_no_face": (list(NO_FACE_ACTIONS), {"default": "error", "tooltip": "error: stop and name the frame; passthrough: leave driving frames without a face unchanged."}),
                "upsample": ("INT", {"default": 1, "min": 0, "max": 3, "tooltip": "Face detector upsampling; higher finds smaller faces, about 4x slower per step."}),
                "feather": ("FLOAT", {"default": 0.06, "min": 0.0, "max": 0.3, "step": 0.01, "tooltip": "Soft edge of the pasted face as a fraction of the crop size."}),
                "color_match": (list(COLOR_MATCH), {"default": "none", "tooltip": "mean_std: match the generated face's colours to the driving frame's face before pasting."}),
            }
        }

    def reenact(self, reenactor, source_image, driving_images, mode, smoothing, output, chunk_size, on_no_face, upsample, feather, color_match):
        result = reenact(
            reenactor,
            source_image,
            driving_images,
            mode=mode,
            smoothing=smoothing,
            output=output,
            detector=FaceDetector(upsample=upsample, landmarks="68"),
            chunk_size=chunk_size,
            on_no_face=on_no_face,
            feather=feather,
            color_match=color_match,
            progress=Progress(driving_images.shape[0] if driving_images.ndim == 4 else 1),
        )
        return (result.images, result.masks, result.sketches)


NODES = {
    "AgeReenactReenactorLoader": (ReenactorLoader, "Reenactor Loader (AgeReenact)"),
    "AgeReenactReenact": (Reenact, "Reenact (AgeReenact)"),
}
