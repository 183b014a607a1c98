"""One launcher for every training task.

    python -m training <task> [engine options] [task options]

With `--nproc N` (N > 1) it re-launches itself under torchrun (DDP: gloo on CPU, nccl on GPU).
Run the same command again to resume from the checkpoint in --out; Ctrl-C saves one first.
"""
from __future__ import annotations

import os

# Training shares the CPU with other work: OpenMP threads that spin while waiting slowed a run 20x
# (4.7 s a step instead of 0.25) once another process competed for the cores. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import importlib
import sys

from .engine import RunConfig

TASKS = {"age_estimator": "training.age_estimator", "aifd": "training.aifd", "agetransgan": "training.agetransgan", "reenactor": "training.reenactor"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = parser.add_subparsers(dest="task", required=True)
    for name, module in TASKS.items():
        sub = tasks.add_parser(name, help=importlib.import_module(module).__doc__.strip().splitlines()[0])
        sub.add_argument("--out", required=True, help="run folder: checkpoint, metrics, curves, exported weights")
        sub.add_argument("--steps", type=int, default=10000)
        sub.add_argument("--batch-size", type=int, default=64, help="global batch, split across processes")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in fp32")
        sub.add_argument("--log-every", type=int, default=25, help="log every N steps (0: at evaluations only)")
        sub.add_argument("--eval-every", type=int, default=500, help="evaluate every N steps and at the end (0: at the end only)")
        sub.add_argument("--checkpoint-every", type=int, default=250, help="checkpoint every N steps and at the end (0: at the end only)")
        sub.add_argument("--threads", type=int, default=None, help="torch threads per process")
        sub.add_argument("--stop-at", type=int, default=None, help="pause at this step (checkpointed) to continue later")
        sub.add_argument("--export-every", type=int, default=0, help="also export a snapshot to OUT/exports/step_NNNNNN/ every N steps")
        sub.add_argument("--nproc", type=int, default=1, help="processes (DDP through torchrun)")
        importlib.import_module(module).add_arguments(sub)
    return parser


def _without_nproc(argv: list[str]) -> list[str]:
    # torchrun's own parser would take "--nproc" for an abbreviation of its "--nproc-per-node".
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.nproc > 1 and "RANK" not in os.environ:
        from torch.distributed.run import main as torchrun

        torchrun(["--standalone", f"--nproc_per_node={args.nproc}", "-m", "training", *_without_nproc(argv)])
        return
    config = RunConfig(
        out_dir=args.out, steps=args.steps, batch_size=args.batch_size, seed=args.seed, bf16=args.bf16,
        log_every=args.log_every, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every, threads=args.threads, stop_at=args.stop_at,
        export_every=args.export_every,
    )
    importlib.import_module(TASKS[args.task]).main(args, config)


if __name__ == "__main__":
    main()
