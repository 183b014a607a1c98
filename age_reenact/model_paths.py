"""Where model files live, how to get them, and safe resolution of model names that arrive from workflows.

Each model family has a folder name. Inside ComfyUI the node layer registers those names with
`folder_paths` (models/<family>/, extra_model_paths.yaml, and this pack's weights/<family>/). Outside
ComfyUI the same files are found in `$AGE_REENACT_MODELS/<family>/` and the pack's `weights/<family>/`.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

FAMILIES = {
    "age_estimator": "age estimators",
    "agetransgan": "AgeTransGAN generators",
    "aifd": "AIFD identity encoders",
    "reenactor": "dual-generator reenactors",
}
# The pack's own file of each family (in weights/<family>/ once it is shipped).
BUNDLED = {
    "agetransgan": "agereenact_agetransgan_utkface.safetensors",
    "reenactor": "agereenact_reenactor_lfw.safetensors",
    "age_estimator": "agereenact_age_utkface.safetensors",
    "aifd": "agereenact_aifd_lfw.safetensors",
}
# Where each family's official checkpoints are published, how to convert one, and how to train one.
SOURCES = {
    "agetransgan": (
        "the official FFHQ generator ffhq_10group_910k.pt (or ffhq_4group_750k.pt), linked from the README of "
        "github.com/AvLab-CV/AgeTransGAN: `age-reenact convert agetransgan ffhq_10group_910k.pt agetransgan_ffhq10.safetensors`",
        "python -m training agetransgan --images FACES --out runs/agetransgan",
    ),
    "reenactor": (
        "the official models linked from the README of github.com/AvLab-CV/Dual_Generator_Face_Reenactment (RFG "
        "expr/checkpoints/501500_nets_ema.ckpt and IDSG expr_lm/checkpoints/30000_nets_ema.ckpt): `age-reenact convert "
        "dual_generator 501500_nets_ema.ckpt 30000_nets_ema.ckpt dual_generator.safetensors`, plus for the absolute mode "
        "Oxford's VGG-Face: `age-reenact convert vggface_dag vgg_face_dag.pth vggface_fc7.safetensors`",
        "python -m training reenactor --lfw LFW --out runs/reenactor",
    ),
    "age_estimator": (
        "AgeTransGAN's estimator (mean_variance_ffhq/model_best_loss, linked from the README of github.com/AvLab-CV/AgeTransGAN): "
        "`age-reenact convert agetransgan_age_estimator model_best_loss age_agetransgan.safetensors`, or a ResNet of "
        "github.com/paplhjak/Facial-Age-Estimation-Benchmark: `age-reenact convert benchmark_age_resnet CHECKPOINT age_resnet.safetensors`",
        "python -m training age_estimator --images FACES --out runs/age_estimator",
    ),
    "aifd": (
        "MTLFace's mtlface_checkpoints.tar, linked from the README of github.com/Hzzone/MTLFace: "
        "`age-reenact convert mtlface_tpami mtlface_checkpoints.tar mtlface_tpami.safetensors`",
        "python -m training aifd --lfw LFW --utkface UTKFACE --out runs/aifd",
    ),
}
MISSING = "missing: "  # prefix of the placeholder a loader lists when its family has no file
ENV_VAR = "AGE_REENACT_MODELS"
PACK_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
EXTENSIONS = (".safetensors", ".sft")


class ModelNotFoundError(FileNotFoundError):
    """A model name that matches no file; the message names the file and the folders searched."""


def validate_model_name(name: str) -> str:
    """Reject names that could escape the model folders: absolute paths, drive letters, '..'."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("model name is empty; pick a file from the list.")
    for pure in (PurePosixPath(name), PureWindowsPath(name)):
        if pure.is_absolute() or pure.drive or pure.root:
            raise ValueError(f"model name {name!r} is an absolute path; give a name relative to the model folder.")
        if ".." in pure.parts:
            raise ValueError(f"model name {name!r} contains '..'; give a name inside the model folder.")
    return name.replace("\\", "/")


def search_dirs(family: str) -> list[Path]:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(FAMILIES)}")
    dirs = []
    if os.environ.get(ENV_VAR):
        dirs += [Path(p) / family for p in os.environ[ENV_VAR].split(os.pathsep) if p]
    dirs.append(PACK_WEIGHTS / family)
    return dirs


def list_models(family: str) -> list[str]:
    names = set()
    for folder in search_dirs(family):
        if folder.is_dir():
            names.update(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix in EXTENSIONS and p.is_file())
    return sorted(names)


def how_to_get(family: str) -> str:
    """Where a file of the family comes from: the bundled file, an official checkpoint to convert, or training."""
    official, train = SOURCES[family]
    bundled = PACK_WEIGHTS / family / BUNDLED[family]
    shipped = f"it is in {bundled.parent}" if bundled.is_file() else f"this copy of the pack has none in weights/{family}/ yet"
    return (f"Get one: (1) the pack's bundled {BUNDLED[family]} ({shipped}); (2) convert {official}; "
            f"(3) train one: `{train}` (`--help` lists the options; the run folder gets the .safetensors).")


def placeholder(family: str) -> str:
    """The list entry a loader shows when no file of the family is installed: it names the file it wants."""
    return MISSING + BUNDLED[family]


def missing_model_message(family: str, name: str, folders) -> str:
    """Which file is wanted, where to put it, and how to get it: the text of every missing-model error."""
    name = name.removeprefix(MISSING)
    return (f"Model file {name!r} not found ({FAMILIES[family]}). Put a .safetensors file in one of: "
            + ", ".join(str(f) for f in folders) + ". " + how_to_get(family))


def resolve_model(family: str, name: str) -> Path:
    name = validate_model_name(name)
    dirs = search_dirs(family)
    for folder in dirs:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError(missing_model_message(family, name, dirs) + f" {ENV_VAR} may add folders, each with a subfolder named {family}.")
