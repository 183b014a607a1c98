"""AgeTransGAN nodes: load a generator, age faces in frames or crops, sweep one face through all ages."""
from __future__ import annotations

import torch

from ..age_reenact.age_groups import FFHQ_AGING_4, FFHQ_AGING_10, groups_for
from ..age_reenact.devices import DEVICES, PRECISIONS
from ..age_reenact.agetransgan import AgeTransGAN, age_code, code_label, group_codes, load_generator, one_hot_code, sweep_codes
from ..age_reenact.agetransgan.pipeline import SWEEP_FACE_CHOICES, check_convention
from ..age_reenact.face.crop import FACE_CHOICES, NO_FACE_ACTIONS, FaceCrops
from ..age_reenact.face.detect import FaceDetector
from ..age_reenact.face.paste import COLOR_MATCH
from ..age_reenact.images import to_image_batch
from .comfy_services import Progress, check_model, model_input, resolve_model, torch_device

CATEGORY = "AgeReenact/agetransgan"
# One list for both released models: the 10 FFHQ-Aging groups, then the 4-group model's own two.
GROUP_NAMES = list(dict.fromkeys(FFHQ_AGING_10.names + FFHQ_AGING_4.names))
SEED = ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Seed of the generator's noise: the same seed gives the same image."})
BATCH = ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": "Faces per forward pass; lower it if memory runs out."})


def _face_inputs() -> dict:
    return {
        "face_choice": (list(FACE_CHOICES), {"default": "largest", "tooltip": "Without a face_crop input: which faces to age (largest, the n-th from the left, or all)."}),
        "face_index": ("INT", {"default": 0, "min": 0, "max": 64, "tooltip": "With face_choice 'index': 0 is the leftmost face."}),
        "on_no_face": (list(NO_FACE_ACTIONS), {"default": "error", "tooltip": "error: stop and name the frame; passthrough: leave frames without a face unchanged."}),
        "feather": ("FLOAT", {"default": 0.06, "min": 0.0, "max": 0.3, "step": 0.01, "tooltip": "Soft edge of the pasted face, as a fraction of the crop size."}),
        "color_match": (list(COLOR_MATCH), {"default": "none", "tooltip": "mean_std: match the aged face's colours to the original face."}),
    }


def _face_crop_input() -> dict:
    return {"face_crop": ("FACE_CROP", {"tooltip": "Connect Face Crop's output to treat the image input as aligned crops (use crop convention 'agetransgan'); the node then returns crops for Face Paste."})}


class AgeTransGANLoader:
    DESCRIPTION = "Loads an AgeTransGAN generator (.safetensors; convert official .pt files once with `age-reenact convert agetransgan`)."
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("AGETRANSGAN_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The generator, its age groups and the chosen device and precision.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": model_input("agetransgan", "An AgeTransGAN generator (10 or 4 age groups)"),
                "device": (list(DEVICES), {"default": "auto", "tooltip": "auto: ComfyUI's device (the GPU when there is one)."}),
                "precision": (list(PRECISIONS), {"default": "auto", "tooltip": "auto: fp16 on GPUs, bf16 on CPUs with native bf16 (AMX/AVX512-BF16), else fp32. fp32 is the reference."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, model_name):
        return check_model("agetransgan", model_name)

    def load(self, model_name, device, precision):
        model = load_generator(resolve_model("agetransgan", model_name))
        return (AgeTransGAN.create(model, torch_device(device), precision),)


def _target_code(runner: AgeTransGAN, target: str, target_group: str, target_age: float) -> torch.Tensor:
    groups = groups_for(runner.group_count)
    if target == "age":
        return age_code(groups, target_age)
    if target_group not in groups.names:
        raise ValueError(f"this {groups.count}-group model has no group {target_group!r}; choose one of {list(groups.names)}.")
    return one_hot_code(groups, target_group)


class AgeTransform:
    DESCRIPTION = (
        "Ages or rejuvenates faces to a target age group or age with AgeTransGAN. Frames: faces are found, "
        "aligned, aged and pasted back. With a face_crop input: the image input is aligned crops, and aged crops come out."
    )
    CATEGORY = CATEGORY
    FUNCTION = "transform"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The frames with aged faces, or the aged crops when a face_crop is connected.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("AGETRANSGAN_MODEL", {"tooltip": "From AgeTransGAN Loader."}),
                "image": ("IMAGE", {"tooltip": "Frames (one image or a video batch), or aligned face crops when face_crop is connected."}),
                "target": (["group", "age"], {"default": "group", "tooltip": "group: a one-hot age group; age: a continuous age between group centres."}),
                "target_group": (GROUP_NAMES, {"default": "50-69", "tooltip": "Target group with target 'group'. 10-group models: 0-2 ... 70+; 4-group: 15-29, 30-39, 40-49, 50+."}),
                "target_age": ("FLOAT", {"default": 60.0, "min": 0.0, "max": 100.0, "step": 0.5, "tooltip": "Target age in years with target 'age' (mapped to a blend of the two nearest groups)."}),
                "seed": SEED,
                "seed_per_face": ("BOOLEAN", {"default": False, "tooltip": "Off: the same noise for every face (steady video). On: seed + face number."}),
                "batch_size": BATCH,
                **_face_inputs(),
            },
            "optional": _face_crop_input(),
        }

    def transform(self, model, image, target, target_group, target_age, seed, seed_per_face, batch_size,
                  face_choice, face_index, on_no_face, feather, color_match, face_crop: FaceCrops | None = None):
        code = _target_code(model, target, target_group, target_age)
        label = code_label(groups_for(model.group_count), code)
        image = to_image_batch(image)
        if face_crop is not None:
            out = model.transform_crops(image, face_crop, code, seed, seed_per_face, batch_size, Progress(len(image)))
        else:
            detector = FaceDetector()
            out, _, _ = model.transform_frames(image, detector, code, seed, seed_per_face, face_choice, face_index,
                                               on_no_face, feather, color_match, batch_size, Progress(len(image)))
        return {"ui": {"text": [f"target {label}"]}, "result": (out,)}


class AgeSweep:
    DESCRIPTION = (
        "One face through every age: one image per group, or the official demo's smooth sweep ((groups-1)*steps+1 "
        "images, 91 for 10 groups), with the same noise throughout. Feed the batch to a video combine node."
    )
    CATEGORY = CATEGORY
    FUNCTION = "sweep"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("images", "labels")
    OUTPUT_TOOLTIPS = ("The aged face crops (or frames, with paste_back), one per age code.", "One line per image: its group or blend of groups.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("AGETRANSGAN_MODEL", {"tooltip": "From AgeTransGAN Loader."}),
                "image": ("IMAGE", {"tooltip": "A frame (face_choice picks its face), or aligned crops when face_crop is connected (the first crop is used). Only the first image is used."}),
                "mode": (["groups", "smooth"], {"default": "smooth", "tooltip": "groups: one image per age group; smooth: `steps` images between each pair of adjacent groups."}),
                "steps": ("INT", {"default": 10, "min": 1, "max": 60, "tooltip": "Images per pair of adjacent groups in smooth mode (10 = the official demo)."}),
                "paste_back": ("BOOLEAN", {"default": False, "tooltip": "Frames only: paste every aged face into the frame instead of returning crops."}),
                "seed": SEED,
                "batch_size": BATCH,
                "face_choice": (list(SWEEP_FACE_CHOICES), {"default": "largest", "tooltip": "Without a face_crop input: the face to age, the largest or the n-th from the left (as in Face Crop)."}),
                "face_index": _face_inputs()["face_index"],
                "upsample": ("INT", {"default": 1, "min": 0, "max": 3, "tooltip": "Face detector upsampling; higher finds smaller faces, about 4x slower per step."}),
                "feather": _face_inputs()["feather"],
            },
            "optional": _face_crop_input(),
        }

    def sweep(self, model, image, mode, steps, paste_back, seed, batch_size, face_choice, face_index, upsample, feather, face_crop: FaceCrops | None = None):
        groups = groups_for(model.group_count)
        codes = sweep_codes(groups, steps) if mode == "smooth" else group_codes(groups)
        image = to_image_batch(image)[:1]
        progress = Progress(len(codes))
        if face_crop is not None:
            check_convention(face_crop)
            out = model.sweep(image, codes, seed, batch_size, progress)
        else:
            out = model.sweep_frame(image, FaceDetector(upsample=upsample), codes, seed, paste_back, feather, batch_size, progress, face_choice, face_index)
        labels = [code_label(groups, c) for c in codes]
        return {"ui": {"text": [f"{len(labels)} images: {labels[0]} .. {labels[-1]}"]}, "result": (out, "\n".join(labels))}


NODES = {
    "AgeReenactAgeTransGANLoader": (AgeTransGANLoader, "AgeTransGAN Loader (AgeReenact)"),
    "AgeReenactAgeTransform": (AgeTransform, "Age Transform (AgeReenact)"),
    "AgeReenactAgeSweep": (AgeSweep, "Age Sweep (AgeReenact)"),
}
