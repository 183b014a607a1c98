"""The pack as ComfyUI sees it: importable under any folder name without ComfyUI, well-formed node
definitions, model folders registered the way that keeps extra_model_paths.yaml entries."""
import subprocess
import sys
import types

import pytest
import torch

from conftest import ROOT

VALID_TYPES = {"IMAGE", "MASK", "INT", "FLOAT", "STRING", "BOOLEAN", "LATENT"}


def test_pack_imports_without_comfyui_under_any_name():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('some-clone_name', r'{ROOT / '__init__.py'}', submodule_search_locations=[r'{ROOT}'])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules[spec.name] = m; spec.loader.exec_module(m)\n"
        "assert 'comfy' not in sys.modules and 'folder_paths' not in sys.modules\n"
        "print(len(m.NODE_CLASS_MAPPINGS))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 3


def test_core_never_imports_comfyui():
    for path in (ROOT / "age_reenact").rglob("*.py"):
        text = path.read_text()
        for banned in ("import comfy", "import folder_paths", "from comfy", "from folder_paths"):
            assert banned not in text, f"{path} imports ComfyUI"


def test_node_definitions_are_well_formed(pack):
    mappings, titles = pack.NODE_CLASS_MAPPINGS, pack.NODE_DISPLAY_NAME_MAPPINGS
    assert set(mappings) == set(titles)
    for node_id, cls in mappings.items():
        assert node_id.startswith("AgeReenact"), node_id
        assert cls.CATEGORY.startswith("AgeReenact/")
        assert isinstance(cls.RETURN_TYPES, tuple)
        assert callable(getattr(cls, cls.FUNCTION))
        if hasattr(cls, "RETURN_NAMES"):
            assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
        inputs = cls.INPUT_TYPES()
        assert set(inputs) <= {"required", "optional", "hidden"} and "required" in inputs
        for section in ("required", "optional"):
            for name, spec in inputs.get(section, {}).items():
                kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
                assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
                if isinstance(kind, list):
                    # Model lists are never empty: without files, a placeholder (tests below).
                    assert kind and all(isinstance(k, str) for k in kind) and ("default" not in options or options["default"] in kind), f"{node_id}.{name}"
                elif kind in ("INT", "FLOAT"):
                    assert options["min"] <= options["default"] <= options["max"], f"{node_id}.{name}"
                elif kind in ("BOOLEAN", "STRING"):
                    assert "default" in options or options.get("forceInput"), f"{node_id}.{name}"
                else:
                    assert kind in VALID_TYPES or (kind.isupper() and kind.replace("_", "").isalnum()), f"{node_id}.{name}: {kind}"


def test_model_folders_keep_yaml_paths_and_add_the_pack_weights(pack, tmp_path):
    fake = types.SimpleNamespace(models_dir=str(tmp_path / "models"), folder_names_and_paths={"agetransgan": (["/yaml/agetransgan"], set())})

    def add_model_folder_path(name, path, is_default=False):
        fake.folder_names_and_paths[name][0].append(path)

    fake.add_model_folder_path = add_model_folder_path
    pack.nodes.comfy_services.register_model_folders(fake)
    paths, extensions = fake.folder_names_and_paths["agetransgan"]
    assert paths[0] == "/yaml/agetransgan" and paths[-1].endswith("weights/agetransgan") and ".safetensors" in extensions
    paths, _ = fake.folder_names_and_paths["age_estimator"]
    assert paths[0] == str(tmp_path / "models" / "age_estimator")


def test_face_nodes_crop_paste_and_draw(pack, astronaut):
    nodes = pack.NODE_CLASS_MAPPINGS
    frames = torch.cat([astronaut, astronaut])
    crops, face_crop = nodes["AgeReenactFaceCrop"]().crop(frames, "agetransgan", 128, "largest", 0, "error", 0, "68", False)
    assert crops.shape == (2, 128, 128, 3) and len(face_crop) == 2
    image, mask = nodes["AgeReenactFacePaste"]().paste(frames, crops, face_crop, 0.06, "mean_std")
    assert image.shape == frames.shape and mask.shape == frames.shape[:3]
    (preview,) = nodes["AgeReenactDrawLandmarks"]().draw(frames, face_crop, True)
    assert preview.shape == frames.shape and not torch.equal(preview, frames)
    with pytest.raises(ValueError, match="2 processed crop"):
        nodes["AgeReenactFacePaste"]().paste(frames[:1], crops, face_crop.select([0]), 0.06, "none")


LOADERS = {
    "AgeReenactAgeTransGANLoader": "agetransgan",
    "AgeReenactIdentityEncoderLoader": "aifd",
    "AgeReenactReenactorLoader": "reenactor",
    "AgeReenactAgeEstimatorLoader": "age_estimator",
}


@pytest.mark.parametrize("node_id", sorted(LOADERS))
def test_loader_without_models_says_which_file_where_and_how_to_get_it(pack, node_id, tmp_path, monkeypatch):
    """No file: the list holds a placeholder (ComfyUI refuses empty lists with "not in []"), and validating or
    loading any missing name gives the same message: the file, the folders, and the bundled / convert / train ways."""
    import importlib
    import re

    from age_reenact import cli, weights
    from training.__main__ import TASKS

    model_paths = importlib.import_module(f"{pack.__name__}.age_reenact.model_paths")  # the pack's own copy of the core
    family, cls = LOADERS[node_id], pack.NODE_CLASS_MAPPINGS[node_id]
    monkeypatch.setattr(model_paths, "PACK_WEIGHTS", tmp_path / "weights")
    monkeypatch.delenv(model_paths.ENV_VAR, raising=False)
    names, options = cls.INPUT_TYPES()["required"]["model_name"]
    assert names == [model_paths.placeholder(family)] and model_paths.how_to_get(family) in options["tooltip"]
    for name in (names[0], "other.safetensors"):
        message = cls.VALIDATE_INPUTS(name)
        assert isinstance(message, str) and f"'{name.removeprefix(model_paths.MISSING)}' not found" in message, message
        assert str(tmp_path / "weights" / family) in message and model_paths.BUNDLED[family] in message
        cli.build_parser()  # registers every converter
        converters = re.findall(r"`age-reenact convert (\w+) ", message)
        assert converters and set(converters) <= set(weights.converters()), converters
        assert re.search(rf"`python -m training {family} ", message) and family in TASKS
        with pytest.raises(model_paths.ModelNotFoundError) as raised:
            cls().load(**{**{key: spec[1].get("default", spec[0][0]) for key, spec in cls.INPUT_TYPES()["required"].items()}, "model_name": name})
        assert str(raised.value).startswith(message)
    assert "'..'" in cls.VALIDATE_INPUTS("../escape.safetensors")


def test_augmenter_loader_without_models_says_what_to_get(pack, tmp_path, monkeypatch):
    monkeypatch.setenv("AGE_REENACT_MODELS", str(tmp_path))  # empty model folders
    loader = pack.nodes.NODE_CLASS_MAPPINGS["AgeReenactAugmenterLoader"]
    required = loader.INPUT_TYPES()["required"]
    checkpoint, controlnet = required["checkpoint"][0], required["controlnet"][0]
    assert checkpoint[0].startswith("missing: ") and controlnet[0].startswith("missing: ")
    message = loader.VALIDATE_INPUTS(checkpoint[0], controlnet[0])
    assert isinstance(message, str) and "models/checkpoints" in message and "control_v11p_sd15_openpose" in message
    assert "pip install age-reenact[augment]" in message
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "controlnet").mkdir()
    (tmp_path / "checkpoints" / "sd15.safetensors").write_bytes(b"")
    (tmp_path / "controlnet" / "openpose.safetensors").write_bytes(b"")
    assert loader.VALIDATE_INPUTS("sd15.safetensors", "openpose.safetensors") is True
    assert "openpose2.safetensors" in loader.VALIDATE_INPUTS("sd15.safetensors", "openpose2.safetensors")
