"""The pack's MTLFace encoder against the official code, side by side in one process, same weights.

    python benchmarks/bench_official_speed.py --mtlface PATH/TO/MTLFace [--batch 1 8] [--repeats 7]

PATH is a checkout of github.com/Hzzone/MTLFace (never part of this repository); its
`python_package/mtlface/modules.py` is imported as it is. The official `Encoder.encode` and
`AgeEstimationModule` are built from the official modules; the timed call is the official `encode`
(backbone, attention, identity embedding) against the pack's `identity_embedding` on an `AIFDEncoder`
holding the same random weights (released layout: IR-50, TPAMI attention, 112 px).
Official bf16 is the official code under torch.autocast (it has no bf16 path of its own); the pack runs
bf16 under autocast and as an encoder cast to bf16 (`.to(torch.bfloat16)`).

Timings interleave the variants repeat by repeat and count the process's CPU time, not wall time:
on a shared, loaded CPU (this one runs a training job) wall time mostly measures the scheduler. The table
gives medians per image and the load average. Without the official code the script says so and exits 0.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the repository root first
from age_reenact.aifd import AIFDEncoder, identity_embedding  # noqa: E402
from age_reenact.devices import autocast, describe_device  # noqa: E402

MODULES = Path("python_package") / "mtlface" / "modules.py"


def official_modules(repo: Path):
    spec = importlib.util.spec_from_file_location("official_mtlface_modules", repo / MODULES)
    module = importlib.util.module_from_spec(spec)
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
    """Give every BN non-trivial statistics so that a layout or fusion bug cannot hide behind identity BNs."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)


def median_ms(times: list[float], batch: int) -> float:
    return 1000 * statistics.median(times) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mtlface", type=Path, help="a checkout of github.com/Hzzone/MTLFace")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.mtlface is None or not (args.mtlface / MODULES).is_file():
        print(f"skipped: the official MTLFace code was not found ({args.mtlface or 'no --mtlface given'} has no {MODULES}).")
        return
    torch.set_num_threads(args.threads)
    official = OfficialEncoder(official_modules(args.mtlface)).eval()
    randomise(official)
    pack = AIFDEncoder(afd_variant="tpami").eval()
    pack.load_state_dict(official.state_dict(), strict=True)

    def run_official(x, dtype):
        with autocast("cpu", dtype):
            return official.encode(x)[1].float()

    pack_bf16 = copy.deepcopy(pack).to(torch.bfloat16)

    def run_pack(x, dtype):
        return identity_embedding(pack, x, dtype=dtype)

    variants = {("official", "fp32"): (run_official, torch.float32), ("pack", "fp32"): (run_pack, torch.float32),
                ("official", "bf16 autocast"): (run_official, torch.bfloat16), ("pack", "bf16 autocast"): (run_pack, torch.bfloat16),
                ("pack", "bf16 weights"): (lambda x, _: identity_embedding(pack_bf16, x), torch.bfloat16)}
    print(f"{describe_device('cpu')}; load average before {os.getloadavg()[0]:.2f}\n")
    print("| batch | variant | CPU ms / image | speed-up vs official fp32 | embedding vs official fp32: max / mean abs diff | min cosine |")
    print("|---|---|---|---|---|---|")
    with torch.no_grad():
        for batch in args.batch:
            x = torch.rand(batch, 3, 112, 112, generator=torch.Generator().manual_seed(batch)) * 2 - 1
            reference = run_official(x, torch.float32)
            times: dict = {key: [] for key in variants}
            outputs = {key: fn(x, dtype) for key, (fn, dtype) in variants.items()}  # warm-up
            for _ in range(args.repeats):
                for key, (fn, dtype) in variants.items():
                    start = time.process_time()
                    fn(x, dtype)
                    times[key].append(time.process_time() - start)
            base = median_ms(times[("official", "fp32")], batch)
            for key, vec in outputs.items():
                ms = median_ms(times[key], batch)
                diff = (vec - reference).abs()
                cosine = (vec * reference).sum(1).min()
                print(f"| {batch} | {key[0]} {key[1]} | {ms:.1f} | {base / ms:.2f}x | {diff.max():.2e} / {diff.mean():.2e} | {cosine:.5f} |")
    print(f"\nload average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
