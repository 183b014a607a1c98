"""Safetensors weights with their architecture, config and preprocessing in the header metadata.

Every model the pack loads goes through `read_weights` -> `build_model`, so a wrong, corrupt or
truncated file fails with one clear message that names the file. Official checkpoints are converted
once by a registered converter; pickled files are only ever opened with `weights_only=True`.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

FORMAT = "age-reenact/1"
_ARCHITECTURES: dict[str, Callable[[dict], nn.Module]] = {}
_CONVERTERS: dict[str, "Converter"] = {}


class WeightsError(ValueError):
    """A weights file that cannot be used; the message names the file and what to do."""


@dataclass
class Weights:
    state_dict: dict[str, torch.Tensor]
    architecture: str
    config: dict[str, Any]
    preprocessing: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def register_architecture(name: str) -> Callable:
    """Register a model class (or factory) built from a config dict: `cls(**config)`."""

    def decorate(factory):
        _ARCHITECTURES[name] = factory
        factory.architecture = name
        return factory

    return decorate


def architectures() -> list[str]:
    return sorted(_ARCHITECTURES)


def save_weights(
    path: str | Path,
    state_dict: dict[str, torch.Tensor],
    architecture: str,
    config: dict[str, Any],
    preprocessing: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix not in (".safetensors", ".sft"):
        raise WeightsError(f"{path}: weights are written as .safetensors only.")
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": FORMAT,
        "architecture": architecture,
        "config": json.dumps(config, sort_keys=True),
        "preprocessing": json.dumps(preprocessing or {}, sort_keys=True),
        "provenance": json.dumps(provenance or {}, sort_keys=True),
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    tmp = path.with_suffix(path.suffix + ".partial")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)  # an interrupted save never leaves a truncated file under the real name
    return path


def read_weights(path: str | Path, architecture: str | tuple[str, ...] | None = None) -> Weights:
    """Read a safetensors file written by `save_weights`, checking its architecture if one is expected."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix not in (".safetensors", ".sft"):
        raise WeightsError(
            f"{path.name}: only .safetensors files are loaded. Convert an official checkpoint once with "
            f"`age-reenact convert <converter> {path.name} out.safetensors`."
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        state_dict = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        if _is_pickle(path):
            raise WeightsError(
                f"{path}: a pickled PyTorch checkpoint (torch.save) renamed to {path.suffix}, not a safetensors file. "
                f"Convert it once with `age-reenact convert <converter> {path.name} out.safetensors` "
                "(`age-reenact convert --help` lists the converters) and load the result."
            ) from exc
        raise WeightsError(
            f"{path}: not a readable safetensors file, probably corrupt or truncated ({exc}). "
            "Download or convert it again."
        ) from exc
    if metadata.get("format") != FORMAT or "architecture" not in metadata:
        raise WeightsError(
            f"{path.name}: no AgeReenact metadata (architecture and config). It was not written by this pack; "
            "if it is an official checkpoint, convert it with `age-reenact convert`."
        )
    expected = (architecture,) if isinstance(architecture, str) else architecture
    if expected and metadata["architecture"] not in expected:
        raise WeightsError(
            f"{path.name} holds a '{metadata['architecture']}' model, but this loader needs "
            f"{' or '.join(repr(a) for a in expected)}. Pick a file of the right kind."
        )
    try:
        parsed = {k: json.loads(metadata.get(k, "{}")) for k in ("config", "preprocessing", "provenance")}
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path.name}: its metadata is not valid JSON ({exc}).") from exc
    return Weights(state_dict, metadata["architecture"], path=path, **parsed)


def _is_pickle(path: Path) -> bool:
    """torch.save writes a zip archive (PyTorch 1.6+), or before that a protocol-2 pickle of its magic number."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head in (b"PK\x03\x04", b"\x80\x02\x8a\x0a")


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Strict load that lists every missing, unexpected and mis-shaped key instead of torch's first error;
    `source` names the file (or part of one) in the message."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in state_dict and own[k].shape != state_dict[k].shape]
    if missing or unexpected or shapes:
        def head(items):
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

        parts = [f"{len(missing)} missing: {head(missing)}" if missing else "", f"{len(unexpected)} unexpected: {head(unexpected)}" if unexpected else "", f"{len(shapes)} wrong shape: {head(shapes)}" if shapes else ""]
        raise WeightsError(f"{source} does not fit {type(model).__name__}: " + "; ".join(p for p in parts if p))
    model.load_state_dict(state_dict, strict=True)


def create_model(architecture: str, config: dict[str, Any], source: str = "config") -> nn.Module:
    """A registered architecture built from its config, with fresh (random) weights."""
    factory = _ARCHITECTURES.get(architecture)
    if factory is None:
        raise WeightsError(f"{source}: unknown architecture '{architecture}'; known: {architectures()}.")
    try:
        return factory(**config)
    except TypeError as exc:
        raise WeightsError(f"{source}: its config does not fit '{architecture}' ({exc}).") from exc


def build_model(weights: Weights) -> nn.Module:
    """Instantiate the architecture named in the metadata from its config and load the tensors strictly."""
    model = create_model(weights.architecture, weights.config, str(weights.path or "the converted tensors"))
    load_state_dict_strict(model, weights.state_dict, source=str(weights.path or "the converted tensors"))
    model.preprocessing = weights.preprocessing  # travels with the model to its pipeline
    return model.eval()


def load_checkpoint(path: str | Path) -> Any:
    """Open an official pickled checkpoint safely (tensors and plain containers only, never code).

    rosinality-style trainers store their argparse options beside the weights; a Namespace only holds
    attributes, so allowing it keeps loading safe and lets such files open.
    """
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure gets the same advice
        raise WeightsError(f"{path}: cannot be read as a plain checkpoint with weights_only=True ({exc}).") from exc


@dataclass
class Converter:
    """Turns official checkpoints into (state_dict, architecture, config, preprocessing[, left_out]).

    `inputs` names the files it takes, in order (most converters take one); `convert` gets their
    contents, as `load` reads them, in that order: official pickles by default, or this pack's own files
    (`read_weights`) for a converter that reshapes one of them. `left_out` names what the files hold but
    the pack deliberately does not use (optimisers, discriminators, other heads); the command lists it.
    Keys the converter does not recognise are passed through, so the strict check below refuses them by name.
    """

    name: str
    description: str
    convert: Callable[..., tuple]
    inputs: tuple[str, ...] = ("checkpoint",)
    load: Callable[[str | Path], Any] = load_checkpoint


def register_converter(
    name: str, description: str, inputs: tuple[str, ...] = ("checkpoint",), load: Callable[[str | Path], Any] = load_checkpoint
) -> Callable:
    def decorate(fn):
        _CONVERTERS[name] = Converter(name, description, fn, inputs, load)
        return fn

    return decorate


def converters() -> dict[str, Converter]:
    return dict(_CONVERTERS)


def convert_checkpoint(
    name: str,
    sources: str | Path | Sequence[str | Path],
    destination: str | Path,
    report: Callable[[str], None] | None = None,
) -> Path:
    """Convert official checkpoint file(s), or reshape a pack file, to a safetensors file with metadata.

    The converted tensors go through the loaders' own strict check (`build_model`) before anything is
    written, so a missing, unexpected or mis-shaped key is refused now, by name. Every refusal names the
    converter and each file with its role. What the files hold but the pack leaves out goes to `report`
    (the command prints it) and into the file's provenance, with the provenance of any pack file converted.
    """
    if name not in _CONVERTERS:
        raise WeightsError(f"unknown converter {name!r}; available: {sorted(_CONVERTERS)}")
    converter = _CONVERTERS[name]
    sources = [sources] if isinstance(sources, (str, Path)) else list(sources)
    if len(sources) != len(converter.inputs):
        raise WeightsError(
            f"converter {name!r} takes {len(converter.inputs)} file(s) ({', '.join(converter.inputs)}, in that order), got {len(sources)}."
        )
    files = ", ".join(f"{role} {Path(s).name}" for role, s in zip(converter.inputs, sources))
    try:
        contents = [converter.load(s) for s in sources]
        state_dict, architecture, config, preprocessing, *rest = converter.convert(*contents)
        build_model(Weights(state_dict, architecture, config, preprocessing))
    except WeightsError as exc:
        raise WeightsError(f"{name} ({files}): {exc}") from exc
    left_out = sorted(rest[0]) if rest else []
    if left_out and report:
        report(f"left out (the source files hold them, the pack does not use them): {', '.join(left_out)}")
    provenance = {"converted_from": " + ".join(Path(s).name for s in sources), "converter": name, "left_out": left_out}
    # A pack file's own record (data, steps, command) stays with what is made from it.
    made_from = {Path(s).name: c.provenance for s, c in zip(sources, contents) if isinstance(c, Weights) and c.provenance}
    if made_from:
        provenance["source_provenance"] = made_from
    return save_weights(destination, state_dict, architecture, config, preprocessing, provenance)
