"""Seconds per face of each official model family at its official size, through the loader its node uses.

    nice -n 10 python benchmarks/bench_official_models.py [--threads 1] [agetransgan dg mtlface estimator]

Official-layout files with random weights in the official shapes (speed does not depend on the values)
are written by the test suite's builders, converted with `age-reenact convert`, loaded and timed: the
process's CPU time (on a shared, loaded CPU wall time mostly measures the scheduler), median of 3 calls
after a warm-up (AgeTransGAN 1024 px: one call). The numbers fill the table of docs/official_models.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run from anywhere; the official-layout builders live in tests/
from age_reenact import cli  # noqa: E402
from age_reenact.agetransgan.convert import load_generator  # noqa: E402
from age_reenact.agetransgan.pipeline import AgeTransGAN  # noqa: E402
from age_reenact.aifd import identity_embedding, load_encoder  # noqa: E402
from age_reenact.estimator.predict import AgeEstimator  # noqa: E402
from age_reenact.reenact.pipeline import load_reenactor  # noqa: E402
from test_age_estimator import official_vggface2_state_dict  # noqa: E402
from test_agetransgan import official_shapes  # noqa: E402
from test_aifd_model import official_tpami_state_dict  # noqa: E402
from test_reenact_models import _random, _vgg_dag, official_idsg, official_rfg  # noqa: E402

FAMILIES = ("agetransgan", "dg", "mtlface", "estimator")


def median_s(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def convert(converter: str, folder: Path, files: dict[str, object]) -> Path:
    for name, content in files.items():
        torch.save(content, folder / name)
    out = folder / f"{converter}.safetensors"
    cli.main(["convert", converter, *(str(folder / name) for name in files), str(out)])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("families", nargs="*", metavar="FAMILY", help=f"any of {', '.join(FAMILIES)} (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    args.families = args.families or FAMILIES
    if set(args.families) - set(FAMILIES):
        parser.error(f"families are {', '.join(FAMILIES)}")
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s); load average {os.getloadavg()[0]:.2f}")
    # The official-layout and converted files (AgeTransGAN's at 1024 px: over 200 MB each) go when the run ends.
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        folder = Path(tmp)
        if "mtlface" in args.families:
            # Folded as the Identity Encoder Loader node folds it.
            encoder = load_encoder(convert("mtlface_tpami", folder, {"mtlface_checkpoints.tar": official_tpami_state_dict()})).fold_for_inference()
            faces = torch.rand(1, 3, 112, 112)
            for dtype in (torch.float32, torch.bfloat16):
                print(f"MTLFace encoder, flip-averaged, {dtype}: {median_s(lambda: identity_embedding(encoder, faces, (0, 1), True, dtype)):.2f} s")
        if "estimator" in args.families:
            estimator = AgeEstimator.load(convert("agetransgan_age_estimator", folder, {"model_best_loss": official_vggface2_state_dict()}))
            crops = torch.rand(1, 224, 224, 3)
            for dtype in (torch.float32, torch.bfloat16):
                print(f"AgeTransGAN's age estimator, flip-averaged, {dtype}: {median_s(lambda: estimator.estimate_crops(crops, dtype=dtype)):.2f} s")
        if "dg" in args.families:
            vgg = convert("vggface_dag", folder, {"vgg_face_dag.pth": _vgg_dag(4096)})
            dg = convert("dual_generator", folder, {"501500_nets_ema.ckpt": _random(official_rfg()), "30000_nets_ema.ckpt": _random(official_idsg())})
            for precision in ("fp32", "bf16"):
                reenactor = load_reenactor(dg, vgg, "cpu", precision)
                crops, sketches = torch.rand(1, 256, 256, 3), torch.rand(1, 3, 256, 256)
                style = reenactor.style(crops)
                print(f"VGG-Face identity code (fp32): {median_s(lambda: reenactor.identity(crops)):.2f} s")
                print(f"reenactor face generator 256 px, {precision}: {median_s(lambda: reenactor.generate(sketches, style)):.2f} s")
        if "agetransgan" in args.families:
            state = {k: torch.randn(shape) * 0.05 for k, shape in official_shapes(1024, 10).items()}
            model = load_generator(convert("agetransgan", folder, {"ffhq_10group_910k.pt": {"g_ema": state}}))
            for precision in ("fp32", "bf16"):
                runner = AgeTransGAN.create(model, "cpu", precision)
                crops, codes = torch.rand(1, 1024, 1024, 3), torch.eye(10)[[7]]
                print(f"AgeTransGAN 1024 px, {precision}: {median_s(lambda: runner.generate(crops, codes, [0]), repeats=1):.1f} s")


if __name__ == "__main__":
    main()
