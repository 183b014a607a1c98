"""`age-reenact bench`: every stage timed at each batch size and precision, the table and JSON written."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from age_reenact.benchmark import DEFAULT_STAGES, MODEL_STAGES, STAGES, run_benchmark, save_report
from age_reenact.bundled import BUNDLED
from age_reenact.cli import main
from benchmarks.bench_chain import write_models


@pytest.fixture()
def tiny_models(tmp_path, monkeypatch):
    """Tiny random models under the bundled names, found first through $AGE_REENACT_MODELS."""
    monkeypatch.setenv("AGE_REENACT_MODELS", str(write_models(tmp_path / "models")))


def test_every_stage_is_timed_per_batch_and_precision(tiny_models, tmp_path):
    pytest.importorskip("diffusers", reason="the augment stage needs diffusers (requirements-dev.txt)")
    stages = (*DEFAULT_STAGES, "augment")
    report = run_benchmark(stages, batches=(1, 2), precisions=("fp32", "bf16"), device="cpu", repeats=1, augment_models="sd15-tiny")

    expected = {(stage, batch, precision) for stage in DEFAULT_STAGES for batch in (1, 2)
                for precision in (("fp32", "bf16") if stage in MODEL_STAGES else ("fp32",))}
    expected |= {("augment", 1, precision) for precision in ("fp32", "bf16")}  # one image at a time: batch 1 only
    assert {(r.stage, r.batch, r.precision) for r in report.rows} == expected
    for row in report.rows:
        assert row.node == STAGES[row.stage][0]
        assert row.seconds > 0 and row.per_image_ms == pytest.approx(1000 * row.seconds / row.batch)
        assert row.peak_mib > 0 and np.isfinite(row.added_mib)
    models = {r.stage: r.model for r in report.rows}
    assert models["age_transform"] == BUNDLED["agetransgan"] and models["reenact"] == BUNDLED["reenactor"]
    assert models["augment"] == "sd15-tiny layout, random weights"
    assert {"device", "machine", "torch", "dlib", "python"} <= set(report.header)

    markdown, data = save_report(report, tmp_path / "out")
    saved = json.loads(data.read_text())
    assert len(saved["rows"]) == len(report.rows) and saved["header"]["torch"] == report.header["torch"]
    assert "| detect | AgeReenactFaceCrop | fp32 | 2 |" in markdown.read_text()


def test_command_line_writes_the_report(tiny_models, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--stages", "detect", "estimate", "--batch", "1", "--precision", "fp32", "--repeats", "1", "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| estimate | AgeReenactEstimateAge | fp32 | 1 |" in printed
    assert (out / "bench.md").is_file() and len(json.loads((out / "bench.json").read_text())["rows"]) == 2


def test_bad_requests_say_what_to_do(tiny_models, tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown stage"):
        run_benchmark(("warp_speed",))
    with pytest.raises(ValueError, match="unknown precision"):
        run_benchmark(("detect",), precisions=("fp8",))
    blank = tmp_path / "blank.png"
    Image.new("RGB", (300, 200), (90, 90, 90)).save(blank)
    with pytest.raises(ValueError, match="no face found"):
        run_benchmark(("detect",), image=blank)
    assert main(["bench", "--stages", "augment", "--controlnet", "cn.safetensors", "--out", str(tmp_path)]) == 1
    assert "needs both --augment-checkpoint and --controlnet" in capsys.readouterr().err
