"""Batches sized by memory: how many bytes a batched pass may use, and what one row of it costs.

Every batched pass (patching sweeps, the searches, the atlas, the effects' verification, scans, generation)
picks its batch from `budget_bytes`, so a big model runs in smaller batches instead of running out of memory:

- on a GPU: the device's free memory (plus what torch's caching allocator holds unused) × GPU_SHARE;
- on a CPU: MemAvailable from /proc/meminfo × CPU_SHARE (4 GiB where it cannot be read: macOS, Windows);
- TNE_MEMORY_BUDGET_MB, when set, caps either: it is the whole process's budget (the loader refuses a model
  whose weights exceed it, core.engine.loader.check_budget), so the loaded weights count against it and what is
  left is the batches'. (MemAvailable and the GPU's free memory already exclude the weights: nothing is
  subtracted from them twice.)

The per-row costs below are stated from the model's shapes and dtype (elements alive at a sublayer's peak in
core.engine.forward, rounded up); they are estimates, which is why only a share of free memory is spent.
Shapes: d d_model, m d_mlp, H query heads, K key/value heads, h d_head, L layers, V vocabulary.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

import torch

from core.engine.forward import Weights
from core.errors import UserError

BUDGET_VAR = "TNE_MEMORY_BUDGET_MB"
GPU_SHARE = 0.8  # of free device memory: the rest covers the allocator's fragmentation and cuBLAS workspaces
CPU_SHARE = 0.5  # of MemAvailable: other processes and the estimate's own error
UNREADABLE_FREE = 4 << 30  # free memory assumed where the system does not say
TYPICAL_KEYS = 512  # key positions assumed where a caller does not say (patching prompts are far shorter)


class SetBudget(NamedTuple):
    raw: str  # as the user wrote it (for messages)
    bytes: int


def set_budget() -> SetBudget | None:
    """TNE_MEMORY_BUDGET_MB as bytes, None when unset; a value that is not a positive number of megabytes is refused
    in one line (read at every call, so tests and the app can change it)."""
    raw = os.environ.get(BUDGET_VAR, "").strip()
    if not raw:
        return None
    try:
        mb = float(raw)
    except ValueError:
        mb = math.nan
    if not (math.isfinite(mb) and mb > 0):
        raise UserError(
            f"{BUDGET_VAR}={raw!r} is not a valid memory budget; set a positive number of megabytes "
            f"(e.g. {BUDGET_VAR}=16000 for 16 GB) or leave it unset to use free memory"
        )
    return SetBudget(raw, int(mb * 2**20))


def free_bytes(device: torch.device) -> int:
    """Memory a pass could use now: free device memory plus torch's cached-but-unused blocks on a GPU,
    MemAvailable on a CPU."""
    if device.type == "cuda":
        free = int(torch.cuda.mem_get_info(device)[0])
        return free + int(torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return UNREADABLE_FREE


def held_bytes(w: Weights) -> int:
    """Bytes of the loaded weights (tensors that share storage counted once)."""
    seen: dict[int, int] = {}
    for value in vars(w).values():
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def budget_bytes(device: torch.device, held: int = 0) -> int:
    """Bytes a batched pass may use on `device`: a share of free memory, capped by TNE_MEMORY_BUDGET_MB − held
    (held: the bytes already counted against the set budget, i.e. the loaded weights). ≥ 0."""
    share = GPU_SHARE if device.type == "cuda" else CPU_SHARE
    budget = int(free_bytes(device) * share)
    setting = set_budget()
    if setting is not None:
        budget = min(budget, setting.bytes - held)
    return max(0, budget)


def rows_that_fit(bytes_per_row: int, budget: int, *, floor: int = 1, cap: int | None = None) -> int:
    """How many rows of `bytes_per_row` fit in `budget` bytes, at least `floor` (a pass must make progress: a
    row over the budget still runs, alone) and at most `cap`."""
    rows = budget // max(1, bytes_per_row)
    if cap is not None:
        rows = min(rows, cap)
    return int(max(floor, rows))


def rows_for(w: Weights, bytes_per_row: int, *, floor: int = 1, cap: int | None = None) -> int:
    """rows_that_fit for a pass over the model with weights `w`: the budget of their device, the weights held."""
    return rows_that_fit(bytes_per_row, budget_bytes(w.W_E.device, held_bytes(w)), floor=floor, cap=cap)


def element_bytes(w: Weights) -> int:
    """Bytes per activation element: activations are in the weights' dtype."""
    return w.W_E.element_size()


def forward_bytes_per_token(
    w: Weights, keys: int, *, recorded_layers: int = 0, unembed_columns: int = 0, dtype: torch.dtype | None = None
) -> int:
    """Bytes one token (one row × one position) of a forward or resumed forward holds at its peak.

    keys: positions each query attends over (the prompt's length; the context for a KV-cached step): the attention
    scores grow with it (H × keys per token, ~3 copies alive: scores, the masked scores, the softmax).
    recorded_layers: layers whose activations the pass keeps (a Trace: resid_pre/mid, attn_out, mlp_out, mlp_post,
    z, k, v per layer; 0 for a resumed forward, which keeps nothing). unembed_columns: logits computed per token (2
    for the logit diff, V for full logits). dtype: of the activations (default the weights').
    The peak is the larger of attention's (input norm, q/k/v and their rotary copies, scores, z) and the MLP's
    (pre, gate, act(gate), product for gated MLPs; pre and act otherwise), plus ~8 residual-sized tensors alive
    around them (the pass's input rows, the running residual, norm outputs, sublayer outputs, the caller's change).
    """
    d, m, H, K, h = w.d_model, w.d_mlp, w.n_heads, w.n_kv_heads, w.d_head
    attention = (H + 2 * K) * h + 3 * H * h + 3 * H * max(1, keys)
    mlp = (4 if w.arch.gated else 3) * m
    kept = recorded_layers * (4 * d + m + (H + 2 * K) * h)
    elements = 8 * d + max(attention, mlp) + kept + unembed_columns
    size = torch.empty(0, dtype=dtype).element_size() if dtype is not None else element_bytes(w)
    return elements * size


def kv_cache_bytes_per_row(w: Weights, capacity: int) -> int:
    """Bytes of one row's key/value cache over `capacity` positions: L × 2 × K × capacity × h elements."""
    return w.n_layers * 2 * w.n_kv_heads * capacity * w.d_head * element_bytes(w)
