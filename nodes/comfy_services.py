"""ComfyUI services the nodes use (progress, interruption, model folders), with plain fallbacks so the
nodes also run, and are tested, where ComfyUI is not installed."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from ..age_reenact import model_paths
from ..age_reenact.devices import resolve_device

try:  # ComfyUI present
    import comfy.model_management as _model_management
    import comfy.utils as _comfy_utils
    import folder_paths as _folder_paths
except Exception:  # noqa: BLE001 - any failure means "not inside ComfyUI"
    _model_management = _comfy_utils = _folder_paths = None


def torch_device(choice: str = "auto") -> torch.device:
    """The device a model runs on: inside ComfyUI, 'auto' is the device ComfyUI manages."""
    if choice == "auto" and _model_management is not None:
        return _model_management.get_torch_device()
    return resolve_device(choice)


class Progress:
    """Per-item progress for one node run: updates ComfyUI's bar and honours its Cancel button."""

    def __init__(self, total: int):
        self.total = max(1, total)
        self.bar = _comfy_utils.ProgressBar(self.total) if _comfy_utils else None

    def __call__(self, done: int, total: int | None = None) -> None:
        if _model_management is not None:
            _model_management.throw_exception_if_processing_interrupted()
        if self.bar is not None:
            self.bar.update_absolute(done, total or self.total)


def register_model_folders(folder_paths=None) -> None:
    """One models/<family> folder per model family, keeping any paths extra_model_paths.yaml gave it,
    plus this pack's weights/<family> as an extra search path."""
    folder_paths = folder_paths or _folder_paths
    if folder_paths is None:
        return
    for family in model_paths.FAMILIES:
        registry = folder_paths.folder_names_and_paths
        if family in registry:
            paths, extensions = registry[family]
            registry[family] = (list(paths), set(extensions) | set(model_paths.EXTENSIONS))
        else:
            registry[family] = ([os.path.join(folder_paths.models_dir, family)], set(model_paths.EXTENSIONS))
        pack_dir = str(model_paths.PACK_WEIGHTS / family)
        if pack_dir not in registry[family][0]:
            folder_paths.add_model_folder_path(family, pack_dir)


def model_files(family: str) -> list[str]:
    if _folder_paths is not None:
        return list(_folder_paths.get_filename_list(family))
    return model_paths.list_models(family)


def list_models(family: str) -> list[str]:
    """The family's files; never empty: without any, one placeholder that names the wanted file."""
    return model_files(family) or [model_paths.placeholder(family)]


def model_input(family: str, what: str) -> tuple:
    """A loader's model_name combo: the family's files, and a tooltip that says where files go and how to get one."""
    return (list_models(family), {"tooltip": f"{what} in models/{family}/ or the pack's weights/{family}/. {model_paths.how_to_get(family)}"})


def validation_result(resolve: Callable[[], object]) -> bool | str:
    """VALIDATE_INPUTS from a resolver: True, or the message of its error (which file is missing, how to get it).

    ComfyUI shows this in its validation error before the workflow runs, in place of "not in []"."""
    try:
        resolve()
    except (ValueError, FileNotFoundError) as exc:
        return str(exc)
    return True


def check_model(family: str, name: str) -> bool | str:
    """VALIDATE_INPUTS for a loader's model_name."""
    return validation_result(lambda: resolve_model(family, name))


def resolve_model(family: str, name: str) -> Path:
    name = model_paths.validate_model_name(name)
    if _folder_paths is not None:
        path = _folder_paths.get_full_path(family, name)
        if path is None:
            message = model_paths.missing_model_message(family, name, _folder_paths.get_folder_paths(family))
            raise model_paths.ModelNotFoundError(f"{message} After adding a file, press R in ComfyUI to refresh the lists.")
        return Path(path)
    return model_paths.resolve_model(family, name)


register_model_folders()
