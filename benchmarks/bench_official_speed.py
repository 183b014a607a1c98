"""The pack's MTLFace encoder and dual-generator RFG against the official code, side by side in one process, same weights.

    python benchmarks/bench_official_speed.py --mtlface PATH/TO/MTLFace --dg PATH/TO/DG [--batch 1 8] [--repeats 5]

Each PATH is a checkout of the official code, never part of this repository; give either or both.

- MTLFace (github.com/Hzzone/MTLFace): `python_package/mtlface/modules.py` is imported as it is. Timed: the
  official `Encoder.encode` (backbone, attention, identity embedding) against the pack's `identity_embedding`
  on an `AIFDEncoder` holding the same random weights (released layout: IR-50, TPAMI attention, 112 px), as
  loaded (unfolded) and as the Identity Encoder Loader node leaves it (`fold_for_inference()`).
- DG (Dual_Generator_Face_Reenactment): `core/model_lm_talking.py` is imported as it is, with stand-ins for
  the two training-only imports its networks never call (munch, core.wing). Its `Generator` and
  `StyleEncoder` in the released configuration (256 px, style 128, w_hpf 0, no self-attention; checked against
  the converter's expected layout, tests/test_reenact_models.py) get random weights; that official-layout
  checkpoint, with a random shape generator, goes through `age-reenact convert dual_generator` and
  `load_reenactor`, the Reenactor Loader node's path. Timed: the generator per frame (sketch + style code),
  and the style encoder (once per source face).

Official bf16 is the official code under torch.autocast (it has no bf16 path of its own). Pack bf16: the
MTLFace encoder under autocast and cast to bf16 (`.to(torch.bfloat16)`); the reenactor loaded at
precision "bf16" (its folded RFG holds bf16 weights).

Timings interleave the variants repeat by repeat and count the process's CPU time, not wall time: on a
shared, loaded CPU (this one runs a training job) wall time mostly measures the scheduler. The tables give
medians per image, the speed-up over the official fp32 code, each variant's difference from the official
fp32 output (max / mean absolute, and the smallest cosine between flattened outputs), and the load average.
Without the official code the script says so and exits 0.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Callable
from unittest import mock

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run from anywhere; the official-layout builders live in tests/
from age_reenact.aifd import AIFDEncoder, identity_embedding  # noqa: E402
from age_reenact.devices import autocast, describe_device  # noqa: E402
from age_reenact.reenact.pipeline import Reenactor, load_reenactor  # noqa: E402
from age_reenact.weights import build_model, convert_checkpoint, read_weights  # noqa: E402
from test_reenact_models import _random, official_idsg, official_rfg  # noqa: E402

MTLFACE_MODULES = Path("python_package") / "mtlface" / "modules.py"
DG_MODULES = Path("core") / "model_lm_talking.py"
SIZE, STYLE_DIM = 256, 128  # the released reenactor


def load_official(path: Path, name: str, stand_ins: dict[str, types.ModuleType] | None = None) -> types.ModuleType:
    """Import an official source file as it is; `stand_ins` take the place of imports only its training code uses."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    with mock.patch.dict(sys.modules, stand_ins or {}):
        spec.loader.exec_module(module)
    return module


class OfficialEncoder(nn.Module):
    """The identity parts of the official `Encoder`, built as its __init__ builds them (no synthesis parts)."""

    def __init__(self, official):
        super().__init__()
        facenet = official.IR_50(input_size=112)
        self.input_layer = facenet.input_layer
        self.block1, self.block2, self.block3, self.block4 = facenet.body
        self.output_layer = nn.Sequential(facenet.bn2, nn.Flatten(), facenet.dropout, facenet.fc, facenet.features)
        self.fsm = official.AttentionModule()
        self.age_estimator = official.AgeEstimationModule(112, 7)
        self.encode = lambda x: official.Encoder.encode(self, x)  # the official forward, unchanged


def randomise(model: nn.Module) -> None:
    """Non-trivial BN statistics and norm affines, so that a layout or fold bug cannot hide behind identity norms."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
        elif isinstance(module, nn.InstanceNorm2d) and module.affine:
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)


def compare(title: str, batch: int, variants: dict[str, Callable[[], torch.Tensor]], repeats: int) -> None:
    """Time the variants (the first is the reference, official fp32), interleaved repeat by repeat, and print
    one table row each: CPU ms per image (median), speed-up, and output difference from the reference."""
    outputs = {name: run().float().flatten(1) for name, run in variants.items()}  # also the warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.process_time()
            run()
            times[name].append(time.process_time() - start)
    reference = next(iter(outputs.values()))
    base = statistics.median(next(iter(times.values())))
    for name, out in outputs.items():
        ms = 1000 * statistics.median(times[name]) / batch
        diff = (out - reference).abs()
        cosine = torch.nn.functional.cosine_similarity(out, reference, dim=1).min()
        print(f"| {title} | {batch} | {name} | {ms:.1f} | {1000 * base / batch / ms:.2f}x | {diff.max():.1e} / {diff.mean():.1e} | {cosine:.5f} |")


def mtlface(repo: Path, batches: list[int], repeats: int) -> None:
    official = OfficialEncoder(load_official(repo / MTLFACE_MODULES, "official_mtlface_modules")).eval()
    randomise(official)
    loaded = AIFDEncoder(afd_variant="tpami").eval()
    loaded.load_state_dict(official.state_dict(), strict=True)
    folded = copy.deepcopy(loaded).fold_for_inference()
    folded_bf16 = copy.deepcopy(folded).to(torch.bfloat16)

    def run_official(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        with autocast("cpu", dtype):
            return official.encode(x)[1]

    for batch in batches:
        x = torch.rand(batch, 3, 112, 112, generator=torch.Generator().manual_seed(batch)) * 2 - 1
        compare("MTLFace encoder", batch, {
            "official fp32": lambda: run_official(x, torch.float32),
            "pack fp32, unfolded": lambda: identity_embedding(loaded, x),
            "pack fp32": lambda: identity_embedding(folded, x),
            "official bf16 autocast": lambda: run_official(x, torch.bfloat16),
            "pack bf16 autocast": lambda: identity_embedding(folded, x, dtype=torch.bfloat16),
            "pack bf16 weights": lambda: identity_embedding(folded_bf16, x),
        }, repeats)


def official_rfg_networks(repo: Path) -> tuple[nn.Module, nn.Module]:
    """The official generator and style encoder in the released configuration, random weights, eval mode."""
    munch, wing = types.ModuleType("munch"), types.ModuleType("core.wing")
    munch.Munch, wing.FAN = dict, None  # build_model's container and the landmark network of the training code
    stand_ins = {"munch": munch, "core": types.ModuleType("core"), "core.wing": wing}
    official = load_official(repo / DG_MODULES, "official_dg_model", stand_ins)
    torch.manual_seed(0)
    generator = official.Generator(SIZE, STYLE_DIM, w_hpf=0).eval()
    style_encoder = official.StyleEncoder(SIZE, STYLE_DIM).eval()
    randomise(generator)
    for name, network in (("generator", generator), ("style_encoder", style_encoder)):
        layout = {k: tuple(v.shape) for k, v in network.state_dict().items()}
        if layout != official_rfg()[name]:
            raise SystemExit(f"{repo / DG_MODULES}: its {name} is not the released layout the converter reads.")
    return generator, style_encoder


def dg(repo: Path, batches: list[int], repeats: int) -> None:
    generator, style_encoder = official_rfg_networks(repo)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        torch.save({"generator": generator.state_dict(), "style_encoder": style_encoder.state_dict()}, folder / "501500_nets_ema.ckpt")
        torch.save(_random(official_idsg()), folder / "30000_nets_ema.ckpt")
        path = convert_checkpoint("dual_generator", [folder / "501500_nets_ema.ckpt", folder / "30000_nets_ema.ckpt"], folder / "dg.safetensors")
        unfolded = Reenactor(build_model(read_weights(path)))
        fp32, bf16 = (load_reenactor(path, precision=precision) for precision in ("fp32", "bf16"))

    def official_fp32_or_autocast(network: nn.Module, dtype: torch.dtype) -> Callable[..., torch.Tensor]:
        def run(*inputs: torch.Tensor) -> torch.Tensor:
            with autocast("cpu", dtype):
                return network(*inputs)
        return run

    def pack_generator(reenactor: Reenactor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return lambda sketches, style: reenactor.generate(sketches, style).permute(0, 3, 1, 2)  # IMAGE -> NCHW

    for batch in batches:
        seed = torch.Generator().manual_seed(batch)
        sketches, faces = torch.rand(batch, 3, SIZE, SIZE, generator=seed).round(), torch.rand(batch, 3, SIZE, SIZE, generator=seed)
        crops = faces.permute(0, 2, 3, 1)  # the pack's style() takes IMAGE batches
        style = style_encoder(faces)
        runs = {"official fp32": official_fp32_or_autocast(generator, torch.float32), "pack fp32, unfolded": pack_generator(unfolded),
                "pack fp32": pack_generator(fp32), "official bf16 autocast": official_fp32_or_autocast(generator, torch.bfloat16),
                "pack bf16 weights": pack_generator(bf16)}
        compare("DG RFG generator", batch, {name: (lambda run=run: run(sketches, style)) for name, run in runs.items()}, repeats)
        compare("DG RFG style encoder", batch, {
            "official fp32": lambda: style_encoder(faces),
            "pack fp32, unfolded": lambda: unfolded.style(crops),
            "pack fp32": lambda: fp32.style(crops),
            "official bf16 autocast": lambda: official_fp32_or_autocast(style_encoder, torch.bfloat16)(faces),
            "pack bf16 weights": lambda: bf16.style(crops),
        }, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mtlface", type=Path, help="a checkout of github.com/Hzzone/MTLFace")
    parser.add_argument("--dg", type=Path, help="a checkout of the official Dual_Generator_Face_Reenactment code")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    found = {name: path for name, path, file in (("mtlface", args.mtlface, MTLFACE_MODULES), ("dg", args.dg, DG_MODULES)) if path and (path / file).is_file()}
    if not found:
        print(f"skipped: the official code was not found (--mtlface needs {MTLFACE_MODULES}, --dg {DG_MODULES} in the checkout).")
        return
    torch.set_num_threads(args.threads)
    print(f"{describe_device('cpu')}; load average before {os.getloadavg()[0]:.2f}\n")
    print("| network | batch | variant | CPU ms / image | speed-up vs official fp32 | vs official fp32: max / mean abs diff | min cosine |")
    print("|---|---|---|---|---|---|---|")
    with torch.no_grad():
        if "mtlface" in found:
            mtlface(found["mtlface"], args.batch, args.repeats)
        if "dg" in found:
            dg(found["dg"], args.batch, args.repeats)
    print(f"\nload average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
