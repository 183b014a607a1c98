"""Shared fixtures: the pack imported as ComfyUI would (a package under an arbitrary folder name),
the bundled fixture images, and the shared datasets when present."""
from __future__ import annotations

import os

# On a busy machine, OpenMP threads that spin while waiting slow small tensor ops by 10-50x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = ROOT.parent / "shared" / "data"


def import_pack(name: str = "ComfyUI_AgeReenact_clone"):
    """Import the repository root the way ComfyUI does: as a package named after its folder."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Test models are tiny: threads gain nothing, and on a busy machine OpenMP's barriers cost 10-50x."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def pack():
    return import_pack()


@pytest.fixture(scope="session")
def einstein():
    """(IMAGE [1,H,W,3], hand-labelled 68 landmarks in 0-based pixels)."""
    from age_reenact.images import load_image

    # .pts files are 1-based: a header of 3 lines, then 68 "x y" lines.
    points = np.loadtxt(FIXTURES / "einstein.pts", skiprows=3, max_rows=68) - 1.0
    return load_image(FIXTURES / "einstein.jpg"), points


@pytest.fixture(scope="session")
def astronaut():
    from age_reenact.images import load_image

    return load_image(FIXTURES / "astronaut.png")


def shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"needs the shared dataset {name} at {path} (not part of a fresh clone)")
    return path


def bad_image_files(folder: Path) -> dict[str, str]:
    """A truncated JPEG, a text file named .jpg and a 12x9 PNG in `folder`, each with the reason it gets."""
    from PIL import Image

    with Image.open(FIXTURES / "astronaut.png") as image:
        image.save(folder / "cut.jpg", quality=90)
    data = (folder / "cut.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])  # a download that stopped half way
    (folder / "notes.jpg").write_text("not a picture")
    Image.new("RGB", (12, 9)).save(folder / "tiny.png")
    return {"cut.jpg": "truncated", "notes.jpg": "not an image", "tiny.png": "too small: 12x9 px"}
