"""Face crop -> process -> paste nodes (the shared geometry of every model family)."""
from __future__ import annotations

from ..age_reenact.face.crop import FACE_CHOICES, NO_FACE_ACTIONS, detect_crops, extract_crops
from ..age_reenact.face.detect import FaceDetector
from ..age_reenact.face.draw import draw_landmarks
from ..age_reenact.face.paste import COLOR_MATCH, paste_crops
from ..age_reenact.face.templates import CONVENTIONS
from ..age_reenact.images import to_image_batch
from .comfy_services import Progress

CATEGORY = "AgeReenact/face"


class FaceCrop:
    DESCRIPTION = "Detects faces in every frame and warps each chosen face to an aligned square crop."
    CATEGORY = CATEGORY
    FUNCTION = "crop"
    RETURN_TYPES = ("IMAGE", "FACE_CROP")
    RETURN_NAMES = ("crops", "face_crop")
    OUTPUT_TOOLTIPS = ("Aligned face crops, one per face.", "Where each crop came from; feed it to Face Paste.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "Frames to find faces in (one image or a video batch)."}),
                "crop_convention": (list(CONVENTIONS), {"default": "agetransgan", "tooltip": "agetransgan: AgeTransGAN's multi-pose templates; arcface: 112-style identity crop; reenactor: the dual-generator's 256 crop."}),
                "size": ("INT", {"default": 256, "min": 64, "max": 2048, "step": 8, "tooltip": "Crop size in pixels."}),
                "face_choice": (list(FACE_CHOICES), {"default": "largest", "tooltip": "largest: the most prominent face per frame (the biggest of those above the detector's confidence floor); index: the n-th face from the left; all: every face."}),
                "face_index": ("INT", {"default": 0, "min": 0, "max": 64, "tooltip": "With face_choice 'index': 0 is the leftmost face."}),
                "on_no_face": (list(NO_FACE_ACTIONS), {"default": "error", "tooltip": "error: stop and name the frame; passthrough: keep the frame unchanged (paste leaves it as it was)."}),
                "upsample": ("INT", {"default": 1, "min": 0, "max": 3, "tooltip": "Higher finds smaller faces, about 4x slower per step: the MTCNN detector searches faces down to 40, 20, 10, 5 px at 0..3."}),
                "landmarks": (["68", "5"], {"default": "68", "tooltip": "68: iBUG predictor (non-commercial licence, needed by the reenactor); 5: public-domain predictor."}),
                "cnn_fallback": ("BOOLEAN", {"default": False, "tooltip": "Retry frames without a face with dlib's CNN detector (seconds per frame)."}),
            }
        }

    def crop(self, image, crop_convention, size, face_choice, face_index, on_no_face, upsample, landmarks, cnn_fallback):
        image = to_image_batch(image)
        detector = FaceDetector(upsample=upsample, landmarks=landmarks, cnn_fallback=cnn_fallback)
        face_crop = detect_crops(image, detector, crop_convention, size, face_choice, face_index, on_no_face, Progress(len(image)))
        return (extract_crops(image, face_crop), face_crop)


class FacePaste:
    DESCRIPTION = "Pastes processed face crops back into the original frames with a feathered face mask."
    CATEGORY = CATEGORY
    FUNCTION = "paste"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    OUTPUT_TOOLTIPS = ("The frames with the processed faces pasted in.", "Where faces were pasted (1 = fully replaced).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The frames the crops were taken from."}),
                "crops": ("IMAGE", {"tooltip": "Processed crops, one per face crop, any square size."}),
                "face_crop": ("FACE_CROP", {"tooltip": "From Face Crop."}),
                "feather": ("FLOAT", {"default": 0.06, "min": 0.0, "max": 0.3, "step": 0.01, "tooltip": "Width of the soft mask edge as a fraction of the crop size."}),
                "color_match": (list(COLOR_MATCH), {"default": "none", "tooltip": "mean_std: match the processed face's colour statistics to the original face."}),
            }
        }

    def paste(self, image, crops, face_crop, feather, color_match):
        return paste_crops(image, crops, face_crop, feather, color_match)


class DrawLandmarks:
    DESCRIPTION = "Preview: the detected landmarks, alignment points and paste mask outline on each frame."
    CATEGORY = CATEGORY
    FUNCTION = "draw"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("preview",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The frames the face crop was made from."}),
                "face_crop": ("FACE_CROP", {"tooltip": "From Face Crop."}),
                "show_outline": ("BOOLEAN", {"default": True, "tooltip": "Also draw the outline of the paste mask."}),
            }
        }

    def draw(self, image, face_crop, show_outline):
        return (draw_landmarks(image, face_crop, show_outline=show_outline),)


NODES = {
    "AgeReenactFaceCrop": (FaceCrop, "Face Crop (AgeReenact)"),
    "AgeReenactFacePaste": (FacePaste, "Face Paste (AgeReenact)"),
    "AgeReenactDrawLandmarks": (DrawLandmarks, "Draw Landmarks (AgeReenact)"),
}
