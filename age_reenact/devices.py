"""Device and precision choices shared by every model family (one policy, one set of names).

auto device: CUDA when torch sees a GPU, else the CPU (inside ComfyUI the node layer passes ComfyUI's own
device instead). auto precision: fp16 on CUDA, bf16 on CPUs with native bf16 (AVX512-BF16 / AMX, about
4x the fp32 matmul speed here), else fp32.
"""
from __future__ import annotations

import platform
from contextlib import nullcontext
from typing import ContextManager

import torch

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA GPU; use 'cpu' or 'auto'.")
    return device


def describe_device(device: str | torch.device = "cpu") -> str:
    """One line for benchmark headers: the GPU's name, or the CPU and its thread count, and torch's version."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    return f"{name}, torch {torch.__version__}"


def cpu_has_fast_bf16() -> bool:
    """oneDNN reports native bf16; elsewhere bf16 convolutions are emulated and slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bf16() else torch.float32
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 is the GPU path; on a CPU choose bf16 (fast on CPUs with AMX/AVX512-BF16) or fp32.")
    return DTYPES[precision]


def autocast(device: str | torch.device, dtype: torch.dtype) -> ContextManager:
    """Run a block under autocast at `dtype` (bf16 or fp16); fp32 runs as written."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
