"""This machine's own matmul rate, measured once per device and dtype: the yardstick of time estimates and of
whether a bfloat16 screen pays."""

from __future__ import annotations

import functools
import time

import torch


@functools.lru_cache(maxsize=8)
def matmul_flops_per_s(device: str, d: int = 576, m: int = 1536, dtype: torch.dtype = torch.float32) -> float:
    """This machine's plain matmul rate (fp32 unless told), measured once (~0.1 s): the yardstick of estimates."""
    a, b = torch.randn(2048, d, device=device, dtype=dtype), torch.randn(d, m, device=device, dtype=dtype)
    a @ b  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    began, reps = time.perf_counter(), 5
    for _ in range(reps):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return reps * 2.0 * 2048 * d * m / max(time.perf_counter() - began, 1e-9)
