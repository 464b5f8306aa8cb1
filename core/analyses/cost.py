"""How long patching work should take here: each phase of the Patching page in token-layers, and this machine's own
matmul rate as the yardstick. The page shows these estimates and puts slow phases behind a button."""

from __future__ import annotations

from core.analyses.attribution import SWEEP_MAX_LAYERS
from core.analyses.patching import PatchInputs
from core.analyses.screen import screen_share
from core.engine import tokens
from core.engine.model import Model
from core.engine.speed import matmul_flops_per_s


def token_layer_flops(model: Model) -> float:
    """FLOPs of one position through one layer (the projections; attention scores are small at these lengths)."""
    w = model.weights
    qkv, out = w.W_QKV.shape[1] * w.W_QKV.shape[2], w.n_heads * w.d_head * w.d_model
    mlp = (3 if w.W_gate is not None else 2) * w.d_model * w.d_mlp
    return 2.0 * (qkv + out + mlp)


def planned_work(model: Model, n_positions: int, start: int, sweeps: int = 1) -> dict[str, float]:
    """Token-layers (positions × layers recomputed, summed over rows) of each phase of the Patching page.

    Mirrors the engine: a patch at (layer l, position p) recomputes positions p.. of layers l..; an all-positions
    patch positions start..; a neuron sweep d_mlp rows from its layer on (a late layer, ~¼ of the depth, assumed).
    """
    L, H, m = model.n_layers, model.n_heads, model.d_mlp
    S = n_positions - start
    depth = L * (L + 1) / 2  # Σ over entry layers of the layers left to run
    suffixes = S * (S + 1) / 2  # Σ over patched positions of the positions left to run
    return {
        "layer totals": 2 * depth * S,
        "neuron sweeps": sweeps * m * S * max(L / 4, 1),
        "layers × positions": 3 * depth * suffixes,
        "heads": H * depth * S,
        "heads per position": H * depth * suffixes,
    }


# planned_work counts an upper bound (every sweep assumed 4 layers from the end; no last-layer trim); measured by
# bench/pages.py on the 5 scenarios, the page took 0.35–0.5× the work at the plain matmul rate: the plain rate,
# unscaled, gives an estimate that errs on the long side by at most ~2×.
ENGINE_RATE_SHARE = 1.0


def estimate_seconds(model: Model, token_layers: float) -> float:
    """Wall seconds for this much patching work on this machine, from its own matmul rate (an upper estimate)."""
    rate = matmul_flops_per_s(str(model.device)) * ENGINE_RATE_SHARE
    return token_layers * token_layer_flops(model) / rate


def page_estimates(model: Model, inputs: PatchInputs, per_position_heads: bool = False) -> dict[str, float]:
    """Seconds each phase of the Patching page should take here, from the work's size and this machine's rate.

    Full neuron sweeps are screened in bfloat16 where that pays (as the page runs them); clean patching runs
    attribution's sweeps of several layers."""
    n_positions = len(tokens.prompt(model, inputs.clean, "clean prompt").ids)
    clean = inputs.ablation == "clean"
    work = planned_work(model, n_positions, inputs.start_pos(model), sweeps=SWEEP_MAX_LAYERS if clean else 1)
    if not per_position_heads:
        work.pop("heads per position")
    seconds = {phase: estimate_seconds(model, amount) for phase, amount in work.items()}
    seconds["neuron sweeps"] *= screen_share(model)
    return seconds
