"""Age estimator nodes: load an estimator, estimate the age of faces in frames or in aligned crops."""
from __future__ import annotations

import math

from ..age_reenact.age_groups import FFHQ_AGING_10
from ..age_reenact.estimator.predict import AgeEstimator
from ..age_reenact.face.crop import crops_from_points, extract_crops
from ..age_reenact.face.detect import FaceDetector
from ..age_reenact.images import to_image_batch
from .comfy_services import Progress, check_model, model_input, resolve_model

CATEGORY = "AgeReenact/age"
FAMILY = "age_estimator"


class AgeEstimatorLoader:
    DESCRIPTION = "Loads an age estimator (.safetensors) from models/age_estimator or the pack's weights."
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("AGE_ESTIMATOR",)
    RETURN_NAMES = ("estimator",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model_name": model_input(FAMILY, "An age estimator")}}

    @classmethod
    def VALIDATE_INPUTS(cls, model_name):
        return check_model(FAMILY, model_name)

    def load(self, model_name):
        return (AgeEstimator.load(resolve_model(FAMILY, model_name)),)


class EstimateAge:
    DESCRIPTION = "Estimates the age of each face. With a FACE_CROP, the crops are re-aligned from its frames; otherwise faces are detected."
    CATEGORY = CATEGORY
    FUNCTION = "estimate"
    OUTPUT_NODE = True
    RETURN_TYPES = ("FLOAT", "STRING")
    RETURN_NAMES = ("ages", "summary")
    OUTPUT_IS_LIST = (True, False)
    OUTPUT_TOOLTIPS = ("One age per face (NaN where a frame had no face).", "One line per face: frame, face (its place among the faces reported for the frame, 0 = leftmost), age, group.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "estimator": ("AGE_ESTIMATOR", {"tooltip": "From Age Estimator Loader."}),
                "image": ("IMAGE", {"tooltip": "Frames with faces, or the frames a FACE_CROP was made from."}),
                "face_choice": (["all", "largest"], {"default": "all", "tooltip": "Estimate every face, or only the largest per frame (ignored with a FACE_CROP)."}),
            },
            "optional": {"face_crop": ("FACE_CROP", {"tooltip": "Reuse detections from Face Crop instead of detecting again."})},
        }

    def estimate(self, estimator, image, face_choice, face_crop=None):
        image = to_image_batch(image)
        progress = Progress(2)
        if face_crop is None:
            ages, face_crop = estimator.estimate(image, FaceDetector(upsample=1), face_choice, on_no_face="passthrough")
        else:
            # Same faces, re-aligned to the estimator's own convention and size.
            aligned = crops_from_points(face_crop.frame_size, face_crop.num_frames, face_crop.frame_index, face_crop.landmarks, face_crop.points5, estimator.convention, estimator.preprocessing["size"], face_crop.valid)
            ages = estimator.estimate_crops(extract_crops(image, aligned)).ages(estimator.readout).cpu().numpy()
            ages[~aligned.valid] = float("nan")
        progress(2)
        lines = []
        for row, (frame, age) in enumerate(zip(face_crop.frame_index, ages)):
            if math.isnan(age):
                lines.append(f"frame {frame}: no face found")
                continue
            face = int((face_crop.frame_index[:row] == frame).sum())  # a frame's faces come left to right
            lines.append(f"frame {frame}, face {face}: {age:.1f} years, group {FFHQ_AGING_10.names[FFHQ_AGING_10.group_of(age)]}")
        summary = "\n".join(lines)
        return {"ui": {"text": [summary]}, "result": ([float(a) for a in ages], summary)}


NODES = {
    "AgeReenactAgeEstimatorLoader": (AgeEstimatorLoader, "Age Estimator Loader (AgeReenact)"),
    "AgeReenactEstimateAge": (EstimateAge, "Estimate Age (AgeReenact)"),
}
