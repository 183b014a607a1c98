"""Identity nodes: load the AIFD identity encoder (E_A) and compare the identities in two image batches."""
from __future__ import annotations


from ..age_reenact.aifd.encoder import load_encoder
from ..age_reenact.aifd import similarity
from ..age_reenact.face.detect import FaceDetector
from .comfy_services import Progress, check_model, model_input, resolve_model, torch_device

CATEGORY = "AgeReenact/aifd"
FACE_MODES = {
    "detect (68 landmarks)": "68",
    "detect (5 landmarks)": "5",
    "already aligned crops": None,
}


class IdentityEncoderLoader:
    DESCRIPTION = "Loads an AIFD identity encoder (MTLFace-style E_A) from models/aifd for identity checks."
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("AIFD_MODEL",)
    RETURN_NAMES = ("aifd_model",)
    OUTPUT_TOOLTIPS = ("The identity encoder; connect it to Face Similarity.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": model_input("aifd", "An AIFD identity encoder"),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, model_name):
        return check_model("aifd", model_name)

    def load(self, model_name):
        # Folded once here, for inference (AIFDEncoder.fold_for_inference); training loads with load_encoder alone.
        return (load_encoder(resolve_model("aifd", model_name)).fold_for_inference(),)


class FaceSimilarity:
    DESCRIPTION = (
        "Identity cosine similarity of two image batches, pair by pair, with a same/different verdict: "
        "checks that an edit (ageing, reenactment) kept the person."
    )
    CATEGORY = CATEGORY
    FUNCTION = "compare"
    OUTPUT_NODE = True  # headless graphs can end here and read the verdicts from the history
    RETURN_TYPES = ("FLOAT", "STRING")
    RETURN_NAMES = ("cosine", "same_person")
    OUTPUT_IS_LIST = (True, True)
    OUTPUT_TOOLTIPS = ("Cosine similarity per pair (1 = identical embeddings).", "'true' or 'false' per pair: cosine at or above the threshold.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "aifd_model": ("AIFD_MODEL", {"tooltip": "From Identity Encoder Loader."}),
                "image_a": ("IMAGE", {"tooltip": "First images (e.g. the originals); one image is compared with every image of image_b."}),
                "image_b": ("IMAGE", {"tooltip": "Second images (e.g. the edited ones), the same count as image_a, or one."}),
                "faces": (list(FACE_MODES), {"default": "detect (68 landmarks)", "tooltip": "detect: find the largest face in each frame and align it to the ArcFace 112 crop (68: iBUG predictor, non-commercial; 5: public domain). already aligned crops: inputs are square ArcFace-style face crops."}),
                "upsample": ("INT", {"default": 1, "min": 0, "max": 3, "tooltip": "Detector upsampling; raise it when small faces are missed (about 4x slower per step)."}),
                "threshold": ("FLOAT", {"default": similarity.DEFAULT_THRESHOLD, "min": -1.0, "max": 1.0, "step": 0.01, "tooltip": "Cosine at or above which a pair counts as the same person; calibrate it for your encoder on pairs of different people."}),
                "flip_average": ("BOOLEAN", {"default": True, "tooltip": "Average each face's embedding with its mirror image's (MTLFace's recipe; steadier under pose, 2x compute)."}),
            }
        }

    def compare(self, aifd_model, image_a, image_b, faces, upsample, threshold, flip_average):
        landmarks = FACE_MODES[faces]
        detector = FaceDetector(upsample=upsample, landmarks=landmarks) if landmarks else None
        device = torch_device()
        try:
            aifd_model.to(device)
            result = similarity.FaceSimilarity(aifd_model, detector, flip_average)(image_a, image_b, threshold, Progress(max(len(image_a), len(image_b))))
        finally:
            aifd_model.to("cpu")  # weights rest on the CPU between runs
        verdicts = ["true" if same else "false" for same in result.same]
        return {"ui": {"text": [result.report()]}, "result": (result.cosine.tolist(), verdicts)}


NODES = {
    "AgeReenactIdentityEncoderLoader": (IdentityEncoderLoader, "Identity Encoder Loader (AgeReenact)"),
    "AgeReenactFaceSimilarity": (FaceSimilarity, "Face Similarity (AgeReenact)"),
}
