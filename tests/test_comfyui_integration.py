"""The pack in a real ComfyUI server, driven by the headless client (skipped unless COMFYUI_DIR is set).

COMFYUI_DIR: a ComfyUI checkout whose Python has ComfyUI's requirements and this pack's requirements.txt
(COMFYUI_PYTHON names that Python; default: <COMFYUI_DIR>/venv/bin/python or .venv/bin/python, else this
one). The server runs on loopback with --cpu and a temporary --base-directory: the pack is linked into its
custom_nodes/ under another folder name, tiny random models (under the bundled file names) are in its
models/, so the checkout itself is not touched. Each API workflow is posted with its images uploaded, and
its outputs are checked; broken workflows must come back with ComfyUI's validation or execution errors.
The augmenter workflow also needs diffusers in the server's Python (the pack's 'augment' extra).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from age_reenact import cli, headless
from benchmarks.bench_chain import BUNDLED, write_models
from test_workflows import API, EXAMPLES, FIXTURES, FRONTEND_ONLY, LOADER_FAMILIES, NAMES, NEEDS_USER_FILES, SAVED, TEXTS, read

ROOT = Path(__file__).resolve().parents[1]
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
MODULE = "AgeReenact_under_test"  # any folder name must work
STARTUP_S = 300
UPLOADS = {"einstein.jpg": FIXTURES / "einstein.jpg", "astronaut.png": FIXTURES / "astronaut.png"}


def comfy_python(root: Path) -> str:
    if os.environ.get("COMFYUI_PYTHON"):
        return os.environ["COMFYUI_PYTHON"]
    for candidate in (root / "venv" / "bin" / "python", root / ".venv" / "bin" / "python", root.parent / "python_embeded" / "python.exe"):
        if candidate.is_file():
            return str(candidate)
    return sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tiny_diffusers(models: Path) -> bool:
    """A tiny SD1.5 folder and ControlNet for the augmenter workflow, if diffusers is here."""
    try:
        from age_reenact.augment.diffusers_loading import SD15_TINY, build_random_pipeline, load_tokenizer, write_byte_tokenizer
    except ImportError:
        return False
    tokenizer = load_tokenizer(write_byte_tokenizer(models / "tokenizer"), SD15_TINY.vocab_size, SD15_TINY.max_length)
    pipe = build_random_pipeline(SD15_TINY, tokenizer, torch.float32, seed=0)
    pipe.save_pretrained(models / "diffusers" / "tiny_sd15")
    pipe.controlnet.save_pretrained(models / "controlnet" / "tiny_openpose")
    return True


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not COMFYUI_DIR:
        pytest.skip("set COMFYUI_DIR to a ComfyUI checkout to run the pack in a real server")
    root = Path(COMFYUI_DIR).resolve()
    if not (root / "main.py").is_file():
        pytest.fail(f"COMFYUI_DIR={root} has no main.py; point it at a ComfyUI checkout.")
    python = comfy_python(root)
    base = tmp_path_factory.mktemp("comfy")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / MODULE).symlink_to(ROOT, target_is_directory=True)
    write_models(base / "models")
    server_has_diffusers = subprocess.run([python, "-c", "import diffusers"], capture_output=True).returncode == 0
    augment = server_has_diffusers and write_tiny_diffusers(base / "models")
    port = free_port()
    log = open(base / "server.log", "w")
    process = subprocess.Popen(
        [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory", str(base),
         "--database-url", "sqlite:///:memory:", "--disable-auto-launch"],
        cwd=root, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + STARTUP_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"ComfyUI exited with code {process.returncode}:\n{(base / 'server.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/system_stats", timeout=5) as response:
                stats = json.loads(response.read())
            break
        except OSError:
            if time.time() > deadline:
                process.kill()
                pytest.fail(f"ComfyUI did not answer within {STARTUP_S} s:\n{(base / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
    yield {"url": url, "base": base, "augment": augment, "diffusers": server_has_diffusers, "version": stats["system"].get("comfyui_version")}
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()
    print(f"\nComfyUI {stats['system'].get('comfyui_version')} at {root}; log: {base / 'server.log'}")


def get(server, path: str):
    with urllib.request.urlopen(server["url"] + path, timeout=30) as response:
        return json.loads(response.read())


def image_uploads(graph: dict) -> dict[str, str]:
    return {node_id: str(UPLOADS[node["inputs"]["image"]]) for node_id, node in graph.items() if node["class_type"] == "LoadImage"}


def test_pack_nodes_and_templates_are_served(server, pack):
    info = get(server, "/object_info")
    missing = set(pack.NODE_CLASS_MAPPINGS) - set(info)
    assert not missing, f"nodes not registered in ComfyUI: {missing}; see {server['base'] / 'server.log'}"
    assert all(info[n]["python_module"].startswith(f"custom_nodes.{MODULE}") for n in pack.NODE_CLASS_MAPPINGS)
    assert sorted(get(server, "/workflow_templates")[MODULE]) == NAMES
    with urllib.request.urlopen(f"{server['url']}/api/workflow_templates/{MODULE}/reenact_and_age.jpg", timeout=30) as response:
        assert response.headers["Content-Type"] == "image/jpeg"
    assert BUNDLED["agetransgan"] in info["AgeReenactAgeTransGANLoader"]["input"]["required"]["model_name"][0]


@pytest.mark.parametrize("name", NAMES)
def test_api_workflow_runs_in_comfyui(server, name, tmp_path):
    graph = json.loads((API / f"{name}.json").read_text())
    settings = {}
    if name in NEEDS_USER_FILES:
        if not server["augment"]:
            pytest.skip("the augmenter needs diffusers in ComfyUI's Python and here (pip install age-reenact[augment])")
        settings = {"3.checkpoint": "diffusers/tiny_sd15", "3.controlnet": "tiny_openpose", "3.device": "cpu", "3.precision": "fp32"}
        settings.update({f"{k}.{field}": value for k, node in graph.items() if node["class_type"] == "AgeReenactAugmentPose"
                         for field, value in (("size", 64), ("steps", 2))})
    result = headless.run_file(API / f"{name}.json", server["url"], image_uploads(graph), settings, tmp_path, timeout=600)
    outputs = json.loads((tmp_path / "outputs.json").read_text())["outputs"]
    for node_id, count in SAVED[name].items():
        assert len(outputs[node_id]["images"]) == count, (node_id, outputs[node_id])
    assert len(result.files) == sum(SAVED[name].values()) and all(f.stat().st_size > 0 for f in result.files)
    if any(node["class_type"] == "AgeReenactEstimateAge" for node in graph.values()):
        assert any(text.startswith("frame 0, face 0: ") for texts in result.texts.values() for text in texts)
    shown = [result.texts[k][0] for k in sorted(graph, key=int) if graph[k]["class_type"] == "PreviewAny"]
    assert [text[: len(start)] for text, start in zip(shown, TEXTS.get(name, ()))] == list(TEXTS.get(name, ())), shown


def test_absolute_mode_with_the_bundled_identity_encoder_runs_in_comfyui(server, tmp_path):
    """The photo-driver setting the reenact workflow's note points to: the AIFD encoder in the Reenactor Loader's
    identity list, the absolute mode, in the real server."""
    info = get(server, "/object_info")
    assert BUNDLED["aifd"] in info["AgeReenactReenactorLoader"]["input"]["required"]["identity_model"][0]
    graph = json.loads((API / "reenact.json").read_text())
    settings = {"3.identity_model": BUNDLED["aifd"], "4.mode": "absolute"}
    result = headless.run_file(API / "reenact.json", server["url"], image_uploads(graph), settings, tmp_path, timeout=600)
    assert len(result.files) == sum(SAVED["reenact"].values()) and all(f.stat().st_size > 0 for f in result.files)


def ui_to_prompt(workflow: dict, info: dict) -> dict:
    """A UI workflow converted with the server's own node definitions (/object_info), as the frontend does:
    every node type must exist there, widget values map to the inputs in the server's input order."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        assert node["type"] in info, f"node type {node['type']} is missing from the server"
        spec, values, inputs = info[node["type"]], list(node.get("widgets_values") or []), {}
        for section in ("required", "optional"):
            for name in spec["input_order"].get(section, []):
                kind, options = spec["input"][section][name][0], (spec["input"][section][name] + [{}])[1]
                if isinstance(kind, list) or kind == "COMBO" or (kind in ("INT", "FLOAT", "STRING", "BOOLEAN") and not options.get("forceInput")):
                    inputs[name] = values.pop(0)
                    del values[: int(bool(options.get("control_after_generate")) or name in ("seed", "noise_seed")) + int(bool(options.get("image_upload")))]
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        assert not values, f"node {node['id']} ({node['type']}): {len(values)} widget value(s) the server's definition has no input for"
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": node["type"]}
    return prompt


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_converts_to_its_api_prompt_with_the_servers_nodes(server, name):
    api = json.loads((API / f"{name}.json").read_text())
    assert ui_to_prompt(read(EXAMPLES, name), get(server, "/object_info")) == {k: {"inputs": v["inputs"], "class_type": v["class_type"]} for k, v in api.items()}


@pytest.mark.parametrize("node_type", sorted(LOADER_FAMILIES))
def test_loader_with_a_missing_file_says_where_to_put_it_and_how_to_get_one(server, node_type):
    """In place of "not in [...]", the loader's validation names the file, the server's folders for it, and the
    three ways to get one (the core's text). Also for the placeholder a loader lists when it has no file."""
    from age_reenact import model_paths

    family = LOADER_FAMILIES[node_type]
    spec = get(server, f"/object_info/{node_type}")[node_type]["input"]["required"]
    assert spec["model_name"][0] and model_paths.how_to_get(family) in spec["model_name"][1]["tooltip"]
    for name in ("nothere.safetensors", model_paths.placeholder(family)):
        inputs = {key: entry[1].get("default", entry[0][0]) for key, entry in spec.items()}
        inputs["model_name"] = name
        graph = {"1": {"class_type": node_type, "inputs": inputs}, "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
        with pytest.raises(headless.ComfyError) as raised:
            headless.ComfyClient(server["url"], timeout=60).queue(graph)
        message, wanted = str(raised.value), name.removeprefix(model_paths.MISSING)
        assert "HTTP 400" in message and f"Custom validation failed for node: model_name - Model file '{wanted}' not found" in message, message
        assert str(server["base"] / "models" / family) in message and model_paths.how_to_get(family) in message, message
        assert "`age-reenact convert " in message and f"`python -m training {family} " in message


def broken(change) -> dict:
    graph = json.loads((API / "reenact_and_age.json").read_text())
    change(graph)
    return graph


BROKEN = {
    "unknown node": (lambda g: g["5"].update(class_type="AgeReenactNoSuchNode"), "AgeReenactNoSuchNode"),
    "missing model file": (lambda g: g["4"]["inputs"].update(model_name="missing.safetensors"), "model_name - Model file 'missing.safetensors' not found"),
    "out of range": (lambda g: g["5"]["inputs"].update(chunk_size=0), "Value 0 smaller than min of 1: chunk_size"),
    "missing input": (lambda g: g["5"]["inputs"].pop("driving_images"), "Required input is missing: driving_images"),
    "wrong link type": (lambda g: g["5"]["inputs"].update(agetransgan=["3", 0]), "Return type mismatch between linked nodes: agetransgan"),
    "unknown age group": (lambda g: g["5"]["inputs"].update(target_groups="30-39, 80+"), "Custom validation failed for node: target_groups"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_workflows_fail_with_the_servers_validation_error(server, case, tmp_path, capsys):
    change, expected = BROKEN[case]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken(change)))
    argv = ["headless", str(path), "--server", server["url"], "--out", str(tmp_path / "out"), "--quiet"]
    argv += [f"--upload={k}={v}" for k, v in image_uploads(json.loads(path.read_text())).items()]
    assert cli.main(argv) == 1
    error = capsys.readouterr().err
    assert "HTTP 400" in error and expected in error, error


def test_execution_error_exits_non_zero_with_the_exception_text(server, tmp_path, capsys):
    from PIL import Image

    black = tmp_path / "no_face.png"
    Image.new("RGB", (128, 128)).save(black)
    argv = ["headless", str(API / "reenact_and_age.json"), "--server", server["url"], "--out", str(tmp_path / "out"), "--quiet",
            f"--upload=1={black}", f"--upload=2={UPLOADS['astronaut.png']}"]
    assert cli.main(argv) == 1
    error = capsys.readouterr().err
    assert "node 5 (AgeReenactReenactAndAge) raised NoFaceError: source image: no face found" in error, error


def test_unreachable_server_and_bad_arguments_are_clear_errors(tmp_path, capsys):
    """(No server needed.)"""
    argv = ["headless", str(API / "reenact.json"), "--server", f"http://127.0.0.1:{free_port()}", "--out", str(tmp_path), "--quiet"]
    assert cli.main(argv) == 1
    assert "cannot reach ComfyUI at http://127.0.0.1:" in capsys.readouterr().err
    assert cli.main(argv + ["--set", "99.seed=1"]) == 1
    assert "the workflow has no node '99'" in capsys.readouterr().err
    assert cli.main(["headless", str(ROOT / "example_workflows" / "reenact.json"), "--quiet"]) == 1
    assert "UI-format workflow" in capsys.readouterr().err


def test_overrides_and_error_texts():
    """(No server needed.)"""
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}}, "2": {"class_type": "X", "inputs": {"seed": 0}}}
    out = headless.apply_overrides(graph, {"1": "up.png"}, {"2.seed": headless.parse_value("7"), "2.text": headless.parse_value("hello")})
    assert out["1"]["inputs"]["image"] == "up.png" and out["2"]["inputs"] == {"seed": 7, "text": "hello"} and graph["2"]["inputs"] == {"seed": 0}
    body = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": ""},
            "node_errors": {"4": {"class_type": "L", "errors": [{"message": "Value not in list", "details": "model_name: 'm' not in []"}]}}}
    assert headless.validation_text(body) == "Prompt outputs failed validation\nnode 4 (L): Value not in list: model_name: 'm' not in []"
    data = {"node_id": "5", "node_type": "N", "exception_type": "NoFaceError", "exception_message": "source image: no face found\n"}
    assert headless.execution_text(data) == "node 5 (N) raised NoFaceError: source image: no face found"


def test_report_version(server):
    """Names the ComfyUI version the tests ran against (shown with -rA or -s)."""
    print(f"ComfyUI version under test: {server['version']}")
    assert server["version"]

