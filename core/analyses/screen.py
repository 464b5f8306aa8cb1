"""The bfloat16 screen of full neuron sweeps: where it pays, and the weights and prefix it runs on."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch

from core.engine import forward as fw
from core.engine.model import Model
from core.engine.speed import matmul_flops_per_s

# Where bfloat16 matmuls run much faster than fp32 (CPUs with AVX-512 BF16 or AMX: 3.4x measured here), a sweep
# is screened in bfloat16 and its top rows (by score and by |score|) are recomputed in fp32; every other row keeps
# its screen score, marked as such. Measured on SmolLM2 (bench/pages.py): screen error ≤ 0.024 in score, the
# verified winner never changed. Accumulation is fp32 inside the matmuls; the final norm and metric run in fp32.

SCREEN_DTYPE = torch.bfloat16
SCREEN_VERIFY = 32  # rows per screened layer recomputed in fp32 (by score, and by |score|)
SCREEN_MIN_SPEEDUP = 1.5  # screen only where bfloat16 matmuls are at least this much faster than fp32

# Keyed by id(w) because Weights is not hashable; each entry holds w itself, so its id cannot be taken by another
# Weights while the entry lives, and the identity check in screen_weights guards the lookup anyway.
_screen_cache: dict[int, tuple[fw.Weights, fw.Weights]] = {}


def screen_weights(w: fw.Weights) -> fw.Weights:
    """The blocks' weights in SCREEN_DTYPE (embedding and unembedding stay fp32: the screen never uses them)."""
    hit = _screen_cache.get(id(w))
    if hit is not None and hit[0] is w:
        return hit[1]
    keep = {"W_E", "W_pos", "W_U", "b_U", "lnf_w", "lnf_b"}
    tensors = {f.name: getattr(w, f.name) for f in dataclasses.fields(w) if f.name not in keep}
    cast: dict[str, Any] = {
        name: t.to(SCREEN_DTYPE) for name, t in tensors.items() if isinstance(t, torch.Tensor) and t.is_floating_point()
    }
    if len(_screen_cache) >= 2:  # one or two models are served at a time; a third evicts the oldest
        _screen_cache.pop(next(iter(_screen_cache)))
    _screen_cache[id(w)] = (w, dataclasses.replace(w, **cast))
    return _screen_cache[id(w)][1]


def screen_prefix(base: fw.Trace) -> fw.Trace:
    """The base run's keys/values (all a resumed forward reads from its prefix) in SCREEN_DTYPE."""
    return fw.Trace(
        k=[k.to(SCREEN_DTYPE) for k in base.k],
        v=[v.to(SCREEN_DTYPE) for v in base.v],
        resid_final=base.resid_final.to(SCREEN_DTYPE),
    )


@functools.lru_cache(maxsize=4)
def screen_pays(device: str) -> bool:
    """True where bfloat16 matmuls are SCREEN_MIN_SPEEDUP× faster than fp32 on `device` (measured once, ~0.2 s).

    GPUs are left exact: their fp32 sweeps already take well under a second.
    """
    if not device.startswith("cpu"):
        return False
    return matmul_flops_per_s(device, dtype=SCREEN_DTYPE) >= SCREEN_MIN_SPEEDUP * matmul_flops_per_s(device)


def screen_share(model: Model) -> float:
    """The time of a screened full sweep as a share of its fp32 time on this device (1 where it does not pay)."""
    device = str(model.device)
    if not screen_pays(device):
        return 1.0
    ratio = matmul_flops_per_s(device) / matmul_flops_per_s(device, dtype=SCREEN_DTYPE)
    return ratio + 2 * SCREEN_VERIFY / model.d_mlp
