"""ControlNet pose augmenter nodes: face pose maps, the SD1.5 + ControlNet loader, and re-posing faces.

Models come from ComfyUI's own folders: `checkpoints` (SD1.5 single files), `diffusers` (SD1.5 folders)
and `controlnet`. Outside ComfyUI the same names are looked up in $AGE_REENACT_MODELS/<folder>.
diffusers/transformers are optional: only the loader imports them, with a pip hint when missing.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..age_reenact import model_paths
from ..age_reenact.devices import DEVICES, PRECISIONS
from ..age_reenact.augment.augmenter import SCHEDULERS, AugmentSettings, PoseAugmenter, paste_augmented
from ..age_reenact.augment.diffusers_loading import import_diffusers
from ..age_reenact.augment.pose3d import DRIVING_MODES, PoseTargets, target_landmarks
from ..age_reenact.augment.pose_maps import STYLES, draw_pose_maps
from ..age_reenact.face.paste import COLOR_MATCH
from ..age_reenact.images import to_image_batch
from .comfy_services import Progress, torch_device, validation_result

try:  # ComfyUI present
    import comfy.model_management as _model_management
    import folder_paths as _folder_paths
except Exception:  # noqa: BLE001 - any failure means "not inside ComfyUI"
    _model_management = _folder_paths = None

CATEGORY = "AgeReenact/augment"
DIFFUSERS_PREFIX = "diffusers/"
AUTO = "auto"


def _folders(kind: str) -> list[Path]:
    if _folder_paths is not None:
        return [Path(p) for p in _folder_paths.get_folder_paths(kind)]
    return [Path(p) / kind for p in os.environ.get(model_paths.ENV_VAR, "").split(os.pathsep) if p]


def _files(kind: str) -> list[str]:
    names = set()
    for folder in _folders(kind):
        if folder.is_dir():
            names.update(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".safetensors", ".sft"))
    return sorted(names)


def _model_dirs(kind: str, marker: str) -> list[str]:
    """Sub-folders (any depth) holding `marker`: diffusers model folders."""
    names = set()
    for folder in _folders(kind):
        if folder.is_dir():
            names.update(p.parent.relative_to(folder).as_posix() for p in folder.rglob(marker) if p.parent != folder)
    return sorted(names)


# The pack ships neither model (size and licences): the user brings them. Shown in the lists when a folder is
# empty, and in the validation message, so a missing model says what to get and where to put it.
MISSING_CHECKPOINT = model_paths.MISSING + "an SD1.5 checkpoint"
MISSING_CONTROLNET = model_paths.MISSING + "an SD1.5 openpose ControlNet"
GET_MODELS = ("The augmenter needs your own Stable Diffusion 1.5 checkpoint (a .safetensors file in models/checkpoints, or a diffusers "
              "SD1.5 folder in models/diffusers) and an SD1.5 openpose ControlNet such as control_v11p_sd15_openpose (models/controlnet); "
              "the pack ships neither, download them from their publishers (e.g. Hugging Face), and `pip install age-reenact[augment]`. "
              "After adding a file, press R in ComfyUI to refresh the lists.")


def _resolve(kind: str, name: str) -> Path:
    name = model_paths.validate_model_name(name.removeprefix(model_paths.MISSING))
    for folder in _folders(kind):
        if (folder / name).exists():
            return folder / name
    searched = ", ".join(str(f) for f in _folders(kind)) or f"(none: set {model_paths.ENV_VAR})"
    raise model_paths.ModelNotFoundError(f"{name!r} not found in the '{kind}' model folders: {searched}. {GET_MODELS}")


def _tokenizer_candidates(explicit: str) -> list[Path]:
    candidates = [Path(explicit).expanduser()] if explicit.strip() else []
    if _folder_paths is not None:  # ComfyUI ships SD1's CLIP vocabulary next to its own code
        candidates.append(Path(_folder_paths.__file__).resolve().parent / "comfy" / "sd1_tokenizer")
    return candidates


class FacePoseMap:
    DESCRIPTION = ("Draws target face pose maps from the face crops' 68 landmarks, turned by yaw/pitch/roll or to a driving face's pose. "
                   "The IMAGE also works with ComfyUI's own Apply ControlNet nodes (openpose_face for control_v11p_sd15_openpose).")
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES = ("IMAGE", "FACE_POSE")
    RETURN_NAMES = ("pose_map", "face_pose")
    OUTPUT_TOOLTIPS = ("One pose map per face crop, in crop pixels.", "The target landmarks and angles; feed it to Augment Pose for paste-back.")

    @classmethod
    def INPUT_TYPES(cls):
        angle = {"default": 0.0, "min": -90.0, "max": 90.0, "step": 1.0}
        return {
            "required": {
                "face_crop": ("FACE_CROP", {"tooltip": "From Face Crop, with 68 landmarks."}),
                "style": (list(STYLES), {"default": "openpose_face", "tooltip": "openpose_face: lllyasviel openpose ControlNet; mediapipe_face: CrucibleAI MediaPipe-face ControlNet; dlib68: Face-Landmark ControlNet."}),
                "yaw": ("FLOAT", {**angle, "tooltip": "Degrees; > 0 turns the face toward the image's right."}),
                "pitch": ("FLOAT", {**angle, "tooltip": "Degrees; > 0 tilts the face up."}),
                "roll": ("FLOAT", {**angle, "tooltip": "Degrees; > 0 rotates the face clockwise."}),
                "relative": ("BOOLEAN", {"default": True, "tooltip": "On: the angles are added to each face's own pose. Off: they are the absolute target pose (0 = frontal)."}),
                "size": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 8, "tooltip": "Map size in pixels; 0 = the crop size."}),
            },
            "optional": {
                "driving_face_crop": ("FACE_CROP", {"tooltip": "Take the target pose from these faces (one for all, or one per source face); the angles are added on top."}),
                "driving_mode": (list(DRIVING_MODES), {"default": "pose", "tooltip": "pose: the source face's shape in the driving head pose; landmarks: the driving face's own landmarks (expression too)."}),
            },
        }

    def make(self, face_crop, style, yaw, pitch, roll, relative, size, driving_face_crop=None, driving_mode="pose"):
        size = size or face_crop.size
        source = face_crop.crop_landmarks(size)
        if source.shape[1] != 68:
            raise ValueError("pose maps need 68 landmarks; set 'landmarks' to 68 in Face Crop.")
        driving = None if driving_face_crop is None else driving_face_crop.crop_landmarks(size)
        landmarks, angles = target_landmarks(source, yaw, pitch, roll, relative, driving, driving_mode)
        maps = draw_pose_maps(landmarks, size, style)
        text = [f"face {i}: yaw {a[0]:.1f}, pitch {a[1]:.1f}, roll {a[2]:.1f}" for i, a in enumerate(angles)]
        return {"ui": {"text": text}, "result": (maps, PoseTargets(landmarks, angles, size))}


class AugmenterLoader:
    DESCRIPTION = "Loads Stable Diffusion 1.5 + a face ControlNet (diffusers, offline) for the pose augmenter."
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("AUGMENTER",)
    RETURN_NAMES = ("augmenter",)

    @classmethod
    def INPUT_TYPES(cls):
        checkpoints = _files("checkpoints") + [DIFFUSERS_PREFIX + d for d in _model_dirs("diffusers", "model_index.json")]
        controlnets = _files("controlnet") + _model_dirs("controlnet", "config.json")
        return {
            "required": {
                "checkpoint": (checkpoints or [MISSING_CHECKPOINT], {"tooltip": "An SD1.5 checkpoint (.safetensors in models/checkpoints) or a diffusers SD1.5 folder (models/diffusers). " + GET_MODELS}),
                "controlnet": (controlnets or [MISSING_CONTROLNET], {"tooltip": "An SD1.5 face/pose ControlNet (.safetensors file or diffusers folder in models/controlnet). " + GET_MODELS}),
                "precision": (list(PRECISIONS), {"default": AUTO, "tooltip": "auto: fp16 on GPU, bf16 on CPUs with native bf16, else fp32."}),
                "device": (list(DEVICES), {"default": AUTO, "tooltip": "auto: ComfyUI's device (GPU if present)."}),
                "offload": ("BOOLEAN", {"default": True, "tooltip": "GPU only: keep models on the CPU and move each to the GPU only while it runs."}),
            },
            "optional": {
                "tokenizer_dir": ("STRING", {"default": "", "tooltip": "Folder with the SD1.5 CLIP tokenizer (vocab.json + merges.txt). Empty: the diffusers folder's own, else ComfyUI's comfy/sd1_tokenizer."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, checkpoint, controlnet):
        return validation_result(lambda: (_checkpoint_path(checkpoint), _resolve("controlnet", controlnet)))

    def load(self, checkpoint, controlnet, precision, device, offload, tokenizer_dir=""):
        import_diffusers()  # a missing install is the first thing to report
        augmenter = PoseAugmenter.load(
            _checkpoint_path(checkpoint), _resolve("controlnet", controlnet), _tokenizer_candidates(tokenizer_dir), torch_device(device), precision, offload
        )
        return (augmenter,)


def _checkpoint_path(name: str) -> Path:
    """A single-file checkpoint in models/checkpoints, or (with the `diffusers/` prefix) a folder in models/diffusers."""
    if name.startswith(DIFFUSERS_PREFIX):
        return _resolve("diffusers", name[len(DIFFUSERS_PREFIX):])
    return _resolve("checkpoints", name)


class AugmentPose:
    DESCRIPTION = "Re-renders each face crop in the pose of its pose map (ControlNet img2img), optionally pasted back into the frames."
    CATEGORY = CATEGORY
    FUNCTION = "augment"
    RETURN_TYPES = ("IMAGE", "IMAGE", "MASK")
    RETURN_NAMES = ("crops", "image", "mask")
    OUTPUT_TOOLTIPS = (
        "The re-posed face crops at 'size' px.",
        "The frames with the re-posed faces pasted in (when frames and face_crop are connected), else the crops.",
        "Where faces were pasted.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        defaults = AugmentSettings()
        return {
            "required": {
                "augmenter": ("AUGMENTER", {"tooltip": "From Augmenter Loader."}),
                "image": ("IMAGE", {"tooltip": "Source face crops (one for all maps, or one per map)."}),
                "pose_map": ("IMAGE", {"tooltip": "Target pose maps from Face Pose Map, in the style the ControlNet expects."}),
                "prompt": ("STRING", {"default": defaults.prompt, "multiline": True, "tooltip": "What the result shows."}),
                "negative_prompt": ("STRING", {"default": defaults.negative_prompt, "multiline": True, "tooltip": "What to avoid."}),
                "strength": ("FLOAT", {"default": defaults.strength, "min": 0.05, "max": 1.0, "step": 0.05, "tooltip": "How far the source may change: 1 ignores it; lower keeps more of it but turns the pose less."}),
                "steps": ("INT", {"default": defaults.steps, "min": 1, "max": 150, "tooltip": "Scheduler steps; int(steps x strength) of them run."}),
                "cfg": ("FLOAT", {"default": defaults.guidance, "min": 1.0, "max": 20.0, "step": 0.5, "tooltip": "Classifier-free guidance scale."}),
                "control_strength": ("FLOAT", {"default": defaults.control_scale, "min": 0.0, "max": 2.0, "step": 0.05, "tooltip": "How strongly the pose map steers the result."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1, "tooltip": "Output i uses seed + i."}),
                "size": ("INT", {"default": defaults.size, "min": 64, "max": 2048, "step": 8, "tooltip": "Working and output size; SD1.5 is trained at 512."}),
                "scheduler": (list(SCHEDULERS), {"default": defaults.scheduler, "tooltip": "Sampler."}),
            },
            "optional": {
                "frames": ("IMAGE", {"tooltip": "For paste-back: the frames the face crops came from."}),
                "face_crop": ("FACE_CROP", {"tooltip": "For paste-back: from Face Crop."}),
                "face_pose": ("FACE_POSE", {"tooltip": "For paste-back: from Face Pose Map, so the paste mask follows the new pose."}),
                "feather": ("FLOAT", {"default": 0.06, "min": 0.0, "max": 0.3, "step": 0.01, "tooltip": "Paste mask edge width (fraction of the crop)."}),
                "color_match": (list(COLOR_MATCH), {"default": "none", "tooltip": "mean_std: match the pasted face's colours to the original face."}),
            },
        }

    def augment(self, augmenter, image, pose_map, prompt, negative_prompt, strength, steps, cfg, control_strength, seed, size, scheduler,
                frames=None, face_crop=None, face_pose=None, feather=0.06, color_match="none"):
        settings = AugmentSettings(prompt, negative_prompt, strength, steps, cfg, control_strength, seed, size, scheduler)
        image, pose_map = to_image_batch(image, "image"), to_image_batch(pose_map, "pose_map")
        count = max(len(image), len(pose_map))
        if _model_management is not None and augmenter.device.type != "cpu":
            _model_management.free_memory(augmenter.gpu_bytes(), augmenter.device)
        crops = augmenter(image, pose_map, settings, Progress(count * settings.denoising_steps()))
        if _model_management is not None:
            _model_management.soft_empty_cache()
        if frames is None or face_crop is None:
            return (crops, crops, torch.zeros(crops.shape[:3]))
        if len(crops) != len(face_crop):
            raise ValueError(f"{len(crops)} augmented crops for {len(face_crop)} face crops; paste-back needs one per face crop.")
        target = None if face_pose is None else face_pose.landmarks_at(face_crop.size)
        pasted, mask = paste_augmented(frames, crops, face_crop, target, feather, color_match)
        return (crops, pasted, mask)


NODES = {
    "AgeReenactFacePoseMap": (FacePoseMap, "Face Pose Map (AgeReenact)"),
    "AgeReenactAugmenterLoader": (AugmenterLoader, "Augmenter Loader (AgeReenact)"),
    "AgeReenactAugmentPose": (AugmentPose, "Augment Pose (AgeReenact)"),
}
