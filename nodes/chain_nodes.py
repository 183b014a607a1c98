"""Reenact and age in one node (the same result as Reenact followed by Age Transform, with one detection per frame)."""
from __future__ import annotations

from ..age_reenact.chain import ORDERS, ChainSettings, parse_targets, reenact_and_age
from ..age_reenact.face.detect import FaceDetector
from ..age_reenact.face.paste import COLOR_MATCH
from ..age_reenact.reenact.motion import MODES
from ..age_reenact.reenact.pipeline import NO_FACE_ACTIONS
from .comfy_services import Progress

CATEGORY = "AgeReenact/chain"


class ReenactAndAge:
    DESCRIPTION = (
        "Gives the source face the pose and expression of every driving frame and ages it to each target group, "
        "pasted into the driving frames. Each face is detected once; later stages reuse its landmarks. "
        "The same as Reenact then Age Transform (or the reverse order) wired by hand, with the same seed."
    )
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE", "MASK", "FACE_CROP", "STRING")
    RETURN_NAMES = ("images", "mask", "face_crop", "labels")
    OUTPUT_TOOLTIPS = (
        "The driving frames with the new face: all frames at the first target group, then all at the next, ...",
        "Where each frame changed (1 = face fully replaced).",
        "Where the final face is in every output frame (AgeTransGAN alignment): feed Estimate Age or Face Paste without detecting again.",
        "One line per output image: its target group and driving frame.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "reenactor": ("REENACTOR_MODEL", {"tooltip": "From Reenactor Loader."}),
                "agetransgan": ("AGETRANSGAN_MODEL", {"tooltip": "From AgeTransGAN Loader."}),
                "source_image": ("IMAGE", {"tooltip": "The face to animate and age (the largest face of the first image)."}),
                "driving_images": ("IMAGE", {"tooltip": "Driving frames: one image or a video's frames. Each target gives as many frames, at their size."}),
                "order": (list(ORDERS), {"default": ORDERS[0], "tooltip": "reenact_then_age: reenact once, then age each frame (faster with several targets); age_then_reenact: age the source face, then reenact it once per target."}),
                "target_groups": ("STRING", {"default": "50-69", "tooltip": "Target age group(s), comma-separated (e.g. '20-29, 50-69'), or 'all'. 10-group models: 0-2, 3-6, 7-9, 10-14, 15-19, 20-29, 30-39, 40-49, 50-69, 70+; 4-group: 15-29, 30-39, 40-49, 50+."}),
                "mode": (list(MODES), {"default": "relative", "tooltip": "absolute: the shape generator redraws the driver's landmarks on the source's face shape (needs the reenactor's identity encoder). relative: the driver's motion since its first frame moves the source's landmarks."}),
                "smoothing": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "Temporal smoothing of the driver's landmarks against jitter; 0 = off."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "AgeTransGAN's noise seed, the same for every frame so video stays steady."}),
                "chunk_size": ("INT", {"default": 16, "min": 1, "max": 256, "tooltip": "Driving frames per step; lower it if memory runs out."}),
                "on_no_face": (list(NO_FACE_ACTIONS), {"default": "error", "tooltip": "error: stop and name the frame; passthrough: leave driving frames without a face unchanged."}),
                "upsample": ("INT", {"default": 1, "min": 0, "max": 3, "tooltip": "Face detector upsampling; higher finds smaller faces, about 4x slower per step."}),
                "feather": ("FLOAT", {"default": 0.06, "min": 0.0, "max": 0.3, "step": 0.01, "tooltip": "Soft edge of the pasted face as a fraction of the crop size."}),
                "color_match": (list(COLOR_MATCH), {"default": "none", "tooltip": "mean_std: match each generated face's colours to the face it replaces."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, target_groups):
        """Group names that no model has fail before the run (the model's own groups are checked when it runs)."""
        errors = []
        for count in (10, 4):
            try:
                parse_targets(target_groups, count)
                return True
            except ValueError as exc:
                errors.append(str(exc))
        return errors[0]  # the 10-group message names the usual groups

    def run(self, reenactor, agetransgan, source_image, driving_images, order, target_groups, mode, smoothing, seed, chunk_size, on_no_face, upsample, feather, color_match):
        settings = ChainSettings(order, mode, smoothing, seed, chunk_size, on_no_face, feather, color_match)
        frames = len(driving_images) if driving_images.ndim == 4 else 1
        targets = parse_targets(target_groups, agetransgan.group_count)
        result = reenact_and_age(reenactor, agetransgan, source_image, driving_images, targets, settings,
                                 FaceDetector(upsample=upsample, landmarks="68"), Progress(frames * len(targets)))
        labels = [f"{label}, frame {t}" for label in result.labels for t in range(frames)]
        summary = f"{len(result.labels)} target(s) x {frames} frame(s): {', '.join(result.labels)} ({order})"
        return {"ui": {"text": [summary]}, "result": (result.images, result.masks, result.face_crops, "\n".join(labels))}


NODES = {
    "AgeReenactReenactAndAge": (ReenactAndAge, "Reenact and Age (AgeReenact)"),
}
