"""Where model files live, and safe resolution of model names that arrive from workflows.

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


def resolve_model(family: str, name: str) -> Path:
    name = validate_model_name(name)
    dirs = search_dirs(family)
    for folder in dirs:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError(
        f"{FAMILIES[family]} file {name!r} not found. Put it in one of: " + ", ".join(str(d) for d in dirs)
        + f" (or set {ENV_VAR} to a folder with a '{family}' subfolder)."
    )
