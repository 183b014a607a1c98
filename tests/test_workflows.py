"""The shipped workflows: example_workflows/ (ComfyUI's UI format, with thumbnails) and api_workflows/ (API format).

- UI files follow the frontend's workflow schema (version 0.4), link consistently, use only existing node
  ids, and give widget values in each node's INPUT_TYPES order with the right types and ranges;
- each API file is its UI file converted the way the frontend exports it;
- each API graph runs through the nodes' Python functions in dependency order, as ComfyUI would run it:
  on tiny random models written under the bundled file names (always), and on the bundled weights
  (skipped, naming the file, until they are shipped).

ComfyUI's own LoadImage / SaveImage / PreviewImage / PreviewAny are stood in for by classes with their inputs
(as in ComfyUI 0.3.64); the real server runs these graphs in test_comfyui_integration.py.

Layouts: no two nodes overlap, with every image node given a generous preview height, and links run left to
right; each note says which models the workflow needs that the pack does not ship yet.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from age_reenact import model_paths
from age_reenact.images import load_image
from benchmarks.bench_chain import write_models

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
EXAMPLES = ROOT / "example_workflows"
API = ROOT / "api_workflows"
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.json"))
NEEDS_USER_FILES = {"augment_multipose"}  # SD1.5 + ControlNet: the user's own files
FRONTEND_ONLY = {"Note", "MarkdownNote"}  # frontend nodes, dropped from API graphs
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
FILE_INPUTS = {"model_name", "identity_model", "checkpoint", "controlnet", "image"}  # combos listing installed files
LOADER_FAMILIES = {
    "AgeReenactAgeTransGANLoader": "agetransgan",
    "AgeReenactReenactorLoader": "reenactor",
    "AgeReenactAgeEstimatorLoader": "age_estimator",
    "AgeReenactIdentityEncoderLoader": "aifd",
}
SAVED = {  # images per output node on the sample inputs
    "age_sweep": {"4": 10},
    "reenact": {"5": 1, "6": 1},
    "reenact_and_age": {"6": 2},
    "reenact_and_age_wired": {"7": 1},
    "estimate_ages": {"6": 1, "7": 2},  # Einstein and the seated man
    "augment_multipose": {"6": 1, "9": 1, "12": 1},
}

TEXTS = {  # what each Preview Any node shows on the sample inputs (start of the text), in node id order
    "age_sweep": ("0-2\n3-6\n",),
    "reenact_and_age": ("frame 0",),
    "estimate_ages": ("frame 0",),
}
IMAGE_NODES = {"LoadImage", "PreviewImage", "SaveImage"}  # they show images inside the node
PREVIEW_HEIGHT = 400  # an image node's box is at least this tall, whatever its saved size
TITLE_HEIGHT = 30  # the frontend draws the title bar above pos
MARGIN = 20  # room for the pack badge above a title


class LoadImage:
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": (sorted(p.name for p in FIXTURES.glob("*.*") if p.suffix in (".png", ".jpg")), {"image_upload": True})}}

    def load_image(self, image):
        frame = load_image(FIXTURES / image)
        return (frame, torch.zeros(frame.shape[:3]))


class SaveImage:
    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE", {"tooltip": "The images to save."}), "filename_prefix": ("STRING", {"default": "ComfyUI"})}}

    def save_images(self, images, filename_prefix="ComfyUI"):
        return {"ui": {"images": images}}


class PreviewImage(SaveImage):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}


class PreviewAny:
    """ComfyUI's Preview Any: shows any value (a STRING as it is) as text on the canvas."""
    RETURN_TYPES = ()
    FUNCTION = "main"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"source": ("*", {})}}

    def main(self, source=None):
        return {"ui": {"text": (source if isinstance(source, str) else json.dumps(source),)}}


CORE = {"LoadImage": LoadImage, "SaveImage": SaveImage, "PreviewImage": PreviewImage, "PreviewAny": PreviewAny}


@pytest.fixture(scope="module")
def classes(pack):
    return {**pack.NODE_CLASS_MAPPINGS, **CORE}


def read(folder: Path, name: str) -> dict:
    return json.loads((folder / f"{name}.json").read_text())


def declared_inputs(cls) -> list[tuple[str, object, dict, bool]]:
    """(name, type, options, is_widget) in INPUT_TYPES order, required then optional."""
    spec = cls.INPUT_TYPES()
    rows = []
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            kind, options = entry[0], (entry[1] if len(entry) > 1 else {})
            widget = isinstance(kind, list) or (kind in ("INT", "FLOAT", "STRING", "BOOLEAN") and not options.get("forceInput"))
            rows.append((name, kind, options, widget))
    return rows


def extra_widget_values(name: str, options: dict) -> int:
    """Frontend widgets that add a value after an input's own: seed controls and the image upload button."""
    return int(name in ("seed", "noise_seed") or bool(options.get("control_after_generate"))) + int(bool(options.get("image_upload")))


def ui_to_api(workflow: dict, classes: dict) -> dict:
    """What the frontend's Export (API) writes: widget values by name, links as [source id, slot]."""
    links = {link[0]: link for link in workflow["links"]}
    graph = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node["mode"] != 0:
            continue
        values, inputs = list(node.get("widgets_values") or []), {}
        for name, _, options, widget in declared_inputs(classes[node["type"]]):
            if widget:
                inputs[name] = values.pop(0)
                del values[: extra_widget_values(name, options)]
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        graph[str(node["id"])] = {"inputs": inputs, "class_type": node["type"]}
    return graph


def check_value(where: str, name: str, kind, options: dict, value) -> None:
    if isinstance(kind, list):
        if name in FILE_INPUTS:
            assert isinstance(value, str) and value, f"{where}: {name} must name a file"
        else:
            assert value in kind, f"{where}: {name}={value!r} is not one of {kind}"
        return
    expected = {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool}[kind]
    assert isinstance(value, expected) and (kind == "BOOLEAN" or not isinstance(value, bool)), f"{where}: {name}={value!r} is not {kind}"
    if kind in ("INT", "FLOAT"):
        assert options.get("min", -math.inf) <= value <= options.get("max", math.inf), f"{where}: {name}={value} outside {options.get('min')}..{options.get('max')}"


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_schema_nodes_links_and_widgets(name, classes):
    workflow = read(EXAMPLES, name)
    # The frontend's schema for version 0.4 graphs (workflowSchema.ts).
    assert workflow["version"] == 0.4 and isinstance(workflow["last_link_id"], int)
    assert isinstance(workflow["nodes"], list) and isinstance(workflow["links"], list)
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert len(nodes) == len(workflow["nodes"]) and workflow["last_node_id"] >= max(nodes)
    for node in workflow["nodes"]:
        where = f"{name}: node {node['id']} ({node['type']})"
        assert isinstance(node["id"], int) and isinstance(node["type"], str) and isinstance(node["properties"], dict), where
        assert all(len(node[key]) == 2 and all(isinstance(v, (int, float)) for v in node[key]) for key in ("pos", "size")), where
        assert isinstance(node["flags"], dict) and isinstance(node["order"], int) and node["mode"] == 0, where
        if node["type"] in FRONTEND_ONLY:
            assert isinstance(node["widgets_values"][0], str), where
            continue
        assert node["type"] in classes, f"{where}: no such node"
        cls = classes[node["type"]]
        assert [o["type"] for o in node["outputs"]] == list(cls.RETURN_TYPES), where
        declared = declared_inputs(cls)
        sockets = {n: kind for n, kind, _, widget in declared if not widget}
        required = cls.INPUT_TYPES()["required"]
        for slot in node["inputs"]:
            assert sockets.get(slot["name"]) == slot["type"], f"{where}: input {slot['name']}"
        assert {n for n in sockets if n in required} <= {s["name"] for s in node["inputs"] if s["link"] is not None}, f"{where}: required input unconnected"
        values = list(node["widgets_values"])
        for input_name, kind, options, widget in declared:
            if widget:
                assert values, f"{where}: widgets_values ends before {input_name}"
                check_value(where, input_name, kind, options, values.pop(0))
                extra = values[: extra_widget_values(input_name, options)]
                del values[: len(extra)]
                assert all(v in CONTROL_VALUES + ("image",) for v in extra), f"{where}: {input_name} is followed by {extra}"
        assert not values, f"{where}: {len(values)} widget value(s) left over"
    for link_id, source, source_slot, target, target_slot, kind in workflow["links"]:
        assert link_id <= workflow["last_link_id"]
        output, slot = nodes[source]["outputs"][source_slot], nodes[target]["inputs"][target_slot]
        assert link_id in output["links"] and slot["link"] == link_id, f"{name}: link {link_id}"
        assert output["type"] == kind and slot["type"] in (kind, "*"), f"{name}: link {link_id} joins {output['type']} to {slot['type']}"


@pytest.mark.parametrize("name", NAMES)
def test_api_copy_is_the_exported_ui_workflow(name, classes):
    api = read(API, name)
    assert {k: {"inputs": v["inputs"], "class_type": v["class_type"]} for k, v in api.items()} == ui_to_api(read(EXAMPLES, name), classes)
    assert any(getattr(classes[node["class_type"]], "OUTPUT_NODE", False) for node in api.values())  # else ComfyUI refuses it


@pytest.mark.parametrize("name", NAMES)
def test_thumbnail(name):
    """The template browser shows <name>.jpg next to <name>.json."""
    from PIL import Image

    path = EXAMPLES / f"{name}.jpg"
    assert path.is_file() and path.stat().st_size < 150_000
    with Image.open(path) as image:
        assert image.format == "JPEG" and max(image.size) <= 640


def node_boxes(workflow: dict) -> dict[int, tuple[float, float, float, float]]:
    """(left, top, right, bottom) of each node as the frontend draws it: title bar, body, image previews."""
    boxes = {}
    for node in workflow["nodes"]:
        (x, y), (w, h) = node["pos"], node["size"]
        if node["type"] in IMAGE_NODES:
            h = max(h, PREVIEW_HEIGHT)
        boxes[node["id"]] = (x, y - TITLE_HEIGHT - MARGIN, x + w, y + h)
    return boxes


@pytest.mark.parametrize("name", NAMES)
def test_layout_has_no_overlaps_and_links_run_left_to_right(name):
    workflow = read(EXAMPLES, name)
    boxes = node_boxes(workflow)
    ids = sorted(boxes)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            (l1, t1, r1, b1), (l2, t2, r2, b2) = boxes[a], boxes[b]
            assert r1 <= l2 or r2 <= l1 or b1 <= t2 or b2 <= t1, f"{name}: nodes {a} and {b} overlap"
    for _, source, _, target, _, _ in workflow["links"]:
        assert boxes[source][2] < boxes[target][0], f"{name}: link {source} -> {target} runs right to left"


@pytest.mark.parametrize("name", NAMES)
def test_note_names_the_models_not_shipped_yet(name):
    """A workflow that cannot run on the pack's own files says so: one "Needs model" line per missing family."""
    workflow = read(EXAMPLES, name)
    (note,) = [node["widgets_values"][0] for node in workflow["nodes"] if node["type"] in FRONTEND_ONLY]
    assert "listed automatically" not in note and "preselected" not in note
    for family in sorted({LOADER_FAMILIES[n["type"]] for n in workflow["nodes"] if n["type"] in LOADER_FAMILIES}):
        shipped = (model_paths.PACK_WEIGHTS / family / model_paths.BUNDLED[family]).is_file()
        assert (f"**Needs model:** `models/{family}/`" in note) != shipped, f"{name}: the note must say whether {family} is needed"


def test_folders_hold_the_same_workflows():
    assert NAMES and NAMES == sorted(p.stem for p in API.glob("*.json"))
    assert sorted(p.stem for p in EXAMPLES.glob("*.jpg")) == NAMES


def run_graph(graph: dict, classes: dict) -> dict[str, dict]:
    """Run an API graph like ComfyUI: the nodes the output nodes need, each after its inputs, in inference mode.

    Returns {node id: {"result": outputs tuple, "ui": ui dict}} for every node that ran.
    """
    done: dict[str, dict] = {}

    def run(node_id: str, path: tuple = ()) -> dict:
        assert node_id not in path, f"cycle through node {node_id}"
        if node_id in done:
            return done[node_id]
        node = graph[node_id]
        cls = classes[node["class_type"]]
        kwargs = {}
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                source, slot = value
                upstream = run(source, path + (node_id,))
                assert not getattr(classes[graph[source]["class_type"]], "OUTPUT_IS_LIST", (False,) * (slot + 1))[slot], "list outputs are not consumed here"
                value = upstream["result"][slot]
            kwargs[name] = value
        out = getattr(cls(), cls.FUNCTION)(**kwargs)
        out = out if isinstance(out, dict) else {"result": out}
        done[node_id] = {"result": tuple(out.get("result", ())), "ui": out.get("ui", {})}
        return done[node_id]

    outputs = [k for k, v in graph.items() if getattr(classes[v["class_type"]], "OUTPUT_NODE", False)]
    with torch.inference_mode():  # ComfyUI runs every prompt so: loaded weights are inference tensors
        for node_id in outputs:
            run(node_id)
    return done


def check_outputs(name: str, graph: dict, ran: dict) -> None:
    for node_id, count in SAVED[name].items():
        images = ran[node_id]["ui"]["images"]
        assert images.ndim == 4 and images.shape[0] == count and images.shape[-1] == 3, (node_id, images.shape)
        assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    for node_id, node in graph.items():
        if node["class_type"] == "AgeReenactEstimateAge":
            assert ran[node_id]["ui"]["text"][0].startswith("frame 0, face 0: ")
    shown = [ran[k]["ui"]["text"][0] for k, v in graph.items() if v["class_type"] == "PreviewAny"]
    assert len(shown) == len(TEXTS.get(name, ())) and all(text.startswith(start) for text, start in zip(shown, TEXTS.get(name, ()))), shown


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return write_models(tmp_path_factory.mktemp("models"))


@pytest.mark.parametrize("name", sorted(set(NAMES) - NEEDS_USER_FILES))
def test_api_workflow_runs_on_tiny_models(name, classes, tiny_models, monkeypatch):
    monkeypatch.setenv(model_paths.ENV_VAR, str(tiny_models))
    graph = read(API, name)
    check_outputs(name, graph, run_graph(graph, classes))


@pytest.mark.parametrize("name", sorted(set(NAMES) - NEEDS_USER_FILES))
def test_api_workflow_runs_on_bundled_weights(name, classes, monkeypatch):
    monkeypatch.delenv(model_paths.ENV_VAR, raising=False)
    graph = read(API, name)
    for node in graph.values():
        family = LOADER_FAMILIES.get(node["class_type"])
        if family and not (model_paths.PACK_WEIGHTS / family / node["inputs"]["model_name"]).is_file():
            pytest.skip(f"needs the bundled weights/{family}/{node['inputs']['model_name']} (not found)")
    check_outputs(name, graph, run_graph(graph, classes))


def test_augment_workflow_on_tiny_diffusers_models(classes, tmp_path, monkeypatch):
    """The multi-pose dataset graph with a tiny random SD1.5 + ControlNet in place of the user's files."""
    pytest.importorskip("diffusers", reason="the augmenter needs the 'augment' extra (diffusers, transformers)")
    from age_reenact.augment.diffusers_loading import SD15_TINY, build_random_pipeline, load_tokenizer, write_byte_tokenizer

    tokenizer = load_tokenizer(write_byte_tokenizer(tmp_path / "tokenizer"), SD15_TINY.vocab_size, SD15_TINY.max_length)
    pipe = build_random_pipeline(SD15_TINY, tokenizer, torch.float32, seed=0)
    pipe.save_pretrained(tmp_path / "diffusers" / "tiny_sd15")
    pipe.controlnet.save_pretrained(tmp_path / "controlnet" / "tiny_openpose")
    monkeypatch.setenv(model_paths.ENV_VAR, str(tmp_path))
    graph = read(API, "augment_multipose")
    graph["3"]["inputs"].update(checkpoint="diffusers/tiny_sd15", controlnet="tiny_openpose", precision="fp32", device="cpu")
    for node in graph.values():
        if node["class_type"] == "AgeReenactAugmentPose":
            node["inputs"].update(size=64, steps=2)
    check_outputs("augment_multipose", graph, run_graph(graph, classes))
