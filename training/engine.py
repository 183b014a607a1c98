"""The training engine every model of the pack uses: one loop, one checkpoint format, one launcher.

A `Task` owns its models, optimisers and one training step; the engine owns everything around it:
processes (torch DDP through `torchrun`: gloo on CPU, nccl on GPU), bf16 autocast, resumable
checkpoints, progress, metrics and learning curves, and exports: the final one in the run folder and,
with `export_every`, snapshots in exports/step_NNNNNN/ to evaluate while training goes on. Randomness of
step `s` on rank `r` comes from a generator seeded with (seed, s, r), so a resumed run draws exactly what
the uninterrupted run would have.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import signal
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

CHECKPOINT = "checkpoint.pt"


@dataclass
class RunConfig:
    out_dir: str
    steps: int
    batch_size: int  # global: split evenly across processes
    seed: int = 0
    bf16: bool = True
    log_every: int = 25
    eval_every: int = 500
    checkpoint_every: int = 250
    threads: int | None = None
    stop_at: int | None = None  # pause here (checkpoint, no export): train in slices of a longer run
    export_every: int = 0  # also export a snapshot every N steps (0 = only the final export)


class Context:
    """What a task sees of the run: processes, device, precision, per-step randomness."""

    def __init__(self, config: RunConfig):
        self.config = config
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available() else torch.device("cpu")
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if config.batch_size % self.world_size:
            raise ValueError(f"batch size {config.batch_size} does not split over {self.world_size} processes")
        self.local_batch = config.batch_size // self.world_size
        self.out_dir = Path(config.out_dir)
        self.step = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def generator(self, step: int | None = None, stream: int = 0) -> torch.Generator:
        """Randomness for one step on this rank (reproducible across resumes)."""
        step = self.step if step is None else step
        return torch.Generator().manual_seed(hash((self.config.seed, step, self.rank, stream)) & 0x7FFFFFFF)

    def epoch_batch(self, pool: np.ndarray) -> np.ndarray:
        """This process's share of the step's batch from `pool`: an epoch-wise permutation derived from the
        step number alone, so it is resumable and consistent across DDP processes. A pool smaller than
        the batch repeats its items."""
        per_epoch = max(1, len(pool) // self.config.batch_size)
        epoch, position = divmod(self.step, per_epoch)
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(self.config.seed * 100003 + epoch))
        start = position * self.config.batch_size + self.rank * self.local_batch
        return pool[np.resize(order[start : start + self.local_batch].numpy(), self.local_batch)]

    def autocast(self):
        if not self.config.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def wrap(self, model: nn.Module, find_unused: bool = False) -> nn.Module:
        """The model as trained: on the device, wrapped in DDP when there are several processes.

        Under DDP, gradients are averaged only for what runs through the wrapper's forward.
        """
        model = model.to(self.device)
        if self.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused)
        return model

    def mean_over_processes(self, values: dict[str, float]) -> dict[str, float]:
        if self.world_size == 1 or not values:
            return values
        keys = sorted(values)
        tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(tensor)
        return {k: float(v) / self.world_size for k, v in zip(keys, tensor)}


class Task(ABC):
    """One trainable model family. Subclasses set `name` and implement the methods below."""

    name: str = "task"

    @abstractmethod
    def setup(self, ctx: Context) -> None:
        """Build data, models (through ctx.wrap) and optimisers."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """Objects with state_dict()/load_state_dict() to checkpoint (models, optimisers, schedulers)."""

    @abstractmethod
    def train_step(self, ctx: Context) -> dict[str, float]:
        """One optimisation step; returns scalar losses for logging."""

    def evaluate(self, ctx: Context) -> dict[str, float]:
        """Validation metrics (rank 0 is enough; called on every rank)."""
        return {}

    def export(self, ctx: Context, path: Path) -> None:
        """Write the deployable safetensors file."""


def training_command() -> str:
    """The command line of this run, as a user would type it again (for exported files' provenance)."""
    argv = sys.argv[1:]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # re-launched under torchrun, which was given everything but --nproc
        argv = [*argv, "--nproc", str(world)]
    return "python -m training " + shlex.join(argv)


def _unwrap(obj: Any) -> Any:
    return obj.module if isinstance(obj, nn.parallel.DistributedDataParallel) else obj


def save_checkpoint(ctx: Context, task: Task, history: list[dict]) -> Path:
    path = ctx.out_dir / CHECKPOINT
    payload = {"step": ctx.step, "history": json.dumps(history), "state": {k: _unwrap(v).state_dict() for k, v in task.state().items()}}
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # never leave a half-written checkpoint under the real name
    return path


def load_checkpoint(ctx: Context, task: Task) -> list[dict]:
    path = ctx.out_dir / CHECKPOINT
    if not path.is_file():
        return []
    payload = torch.load(path, map_location=ctx.device, weights_only=True)
    for key, obj in task.state().items():
        _unwrap(obj).load_state_dict(payload["state"][key])
    ctx.step = int(payload["step"])
    return json.loads(payload["history"])


def plot_curves(history: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no learning-curve PNG (pip install matplotlib)")
        return
    keys = sorted({k for row in history for k in row if k != "step"})
    if not keys:
        return
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.2 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        rows = [(r["step"], r[key]) for r in history if key in r and r[key] is not None and math.isfinite(r[key])]
        if rows:
            ax.plot(*zip(*rows), marker="." if len(rows) < 50 else None)
        ax.set_ylabel(key, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(task: Task, config: RunConfig) -> dict[str, float]:
    """Train `task` to `config.steps` (resuming from out_dir's checkpoint) and export it. Returns final metrics."""
    from tqdm import tqdm

    if config.threads:
        torch.set_num_threads(config.threads)
    ctx = Context(config)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    task.setup(ctx)
    history = load_checkpoint(ctx, task)
    if ctx.is_main:
        (ctx.out_dir / "run_config.json").write_text(json.dumps(asdict(config), indent=2))
        if ctx.step:
            print(f"resuming {task.name} at step {ctx.step}")
    bar = tqdm(total=config.steps, initial=ctx.step, disable=not ctx.is_main, desc=task.name, dynamic_ncols=True)
    running: dict[str, list[float]] = {}
    started, logged_step = time.perf_counter(), ctx.step
    try:
        with _sigterm_as_interrupt():
            while ctx.step < min(config.steps, config.stop_at or config.steps):
                losses = task.train_step(ctx)
                ctx.step += 1
                bar.update(1)
                for key, value in losses.items():
                    running.setdefault(key, []).append(value)
                evaluate = (config.eval_every and ctx.step % config.eval_every == 0) or ctx.step == config.steps
                if evaluate or (config.log_every and ctx.step % config.log_every == 0):  # evaluation steps need not be logging steps
                    row = ctx.mean_over_processes({k: sum(v) / len(v) for k, v in running.items()})
                    running = {}
                    row["images_per_s"] = config.batch_size * (ctx.step - logged_step) / max(1e-9, time.perf_counter() - started)
                    started, logged_step = time.perf_counter(), ctx.step
                    if evaluate:
                        row.update(task.evaluate(ctx))
                    history.append({"step": ctx.step, **row})
                    bar.set_postfix({k: f"{v:.3g}" for k, v in row.items()})
                    if ctx.is_main:
                        with open(ctx.out_dir / "metrics.jsonl", "a") as log:
                            log.write(json.dumps(history[-1]) + "\n")
                if ctx.is_main and ((config.checkpoint_every and ctx.step % config.checkpoint_every == 0) or ctx.step in (config.steps, config.stop_at)):
                    save_checkpoint(ctx, task, history)
                if ctx.is_main and config.export_every and ctx.step % config.export_every == 0 and ctx.step < config.steps:
                    task.export(ctx, ctx.out_dir / "exports" / f"step_{ctx.step:06d}")
    except KeyboardInterrupt:
        if ctx.is_main:
            path = save_checkpoint(ctx, task, history)
            print(f"\ninterrupted at step {ctx.step}; saved {path}; run the same command again to resume")
        raise
    finally:
        bar.close()
    final = {k: v for k, v in (history[-1] if history else {}).items() if k != "step"}
    if ctx.step < config.steps:
        if ctx.is_main:
            print(f"paused at step {ctx.step} of {config.steps}; run the same command without --stop-at to continue")
        return final
    if ctx.is_main:
        task.export(ctx, ctx.out_dir)
        (ctx.out_dir / "metrics.json").write_text(json.dumps({"step": ctx.step, **final}, indent=2))
        plot_curves(history, ctx.out_dir / "curves.png")
    if ctx.world_size > 1:
        dist.barrier()
    return final
