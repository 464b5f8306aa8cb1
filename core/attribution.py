"""Attribution patching: every neuron of every layer (and every head, every layer × position) at once.

Linear approximation of activation patching (Nanda 2023): the patched metric is approximated by its first-order
Taylor expansion around the corrupted run,
    score ≈ (clean act − corrupted act) · ∂(logit diff)/∂act |corrupted  /  (clean − corrupted logit diff),
with the same normalisation as exact patching, from one clean forward, one corrupted forward and one backward.
Known to be poor where the model is far from linear in the activation: MLP 0 (its output feeds every later
layer's norms at once) and the residual stream (a large patch); the top candidates are therefore re-scored with
exact patching (core.patching), and both scores are shown side by side.
Only clean patching is approximated (zero / mean / negate ablations have no attribution form here).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from core import forward as fw
from core import patching
from core.congruence import label
from core.errors import UserError
from core.hosting import check_top_k

CAVEAT = (
    "Attribution patching is a linear approximation: it is known to be poor on MLP 0 and on the residual stream; "
    "the top candidates are verified with exact patching."
)


@dataclass
class Attribution:
    neurons: np.ndarray  # [L, d_mlp], all positions
    heads: np.ndarray  # [L, H], all positions
    heads_per_position: np.ndarray  # [L, H, P]
    layers: dict[str, np.ndarray]  # resid_pre / attn_out / mlp_out → [L, P]
    layers_all_positions: dict[str, np.ndarray]  # attn_out / mlp_out → [L]


def attribute(setup: patching.Setup) -> Attribution:
    """Attribution scores for clean patching; setup must use ablation='clean'."""
    if setup.ablation != "clean":
        raise UserError("attribution patching approximates clean patching only; use ablation 'clean'")
    model = setup.model
    w = model.weights
    names = ["resid_pre", "attn_out", "mlp_out", "mlp_post", "z"]
    with torch.enable_grad():
        trace = fw.run(w, setup.corrupted.tensor(model.device), record=set(names), track_grad=True)
        metric = setup.metric(w, trace.resid_final[0, -1])
        acts = [a for name in names for a in getattr(trace, name)]
        grads = torch.autograd.grad(metric, acts, allow_unused=True)
    gap = setup.clean_logit_diff - setup.corrupted_logit_diff
    L = w.n_layers
    out: dict[str, np.ndarray] = {}
    for i, name in enumerate(names):
        rows = []
        for layer in range(L):
            grad = grads[i * L + layer]
            delta = (getattr(setup.clean_trace, name)[layer] - getattr(setup.corrupted_trace, name)[layer])[0]
            product = delta * (torch.zeros_like(delta) if grad is None else grad[0])
            rows.append(product.detach())
        stacked = torch.stack(rows) / gap  # [L, P, ...]
        if name in ("resid_pre", "attn_out", "mlp_out"):
            out[name] = stacked.sum(-1).float().cpu().numpy()  # [L, P]
        elif name == "mlp_post":
            out[name] = stacked.sum(1).float().cpu().numpy()  # [L, d_mlp]
        else:
            per_position = stacked.sum(-1)  # [L, P, H]
            out["heads_per_position"] = per_position.permute(0, 2, 1).float().cpu().numpy()
            out["heads"] = per_position.sum(1).float().cpu().numpy()
    return Attribution(
        neurons=out["mlp_post"],
        heads=out["heads"],
        heads_per_position=out["heads_per_position"],
        layers={k: out[k] for k in ("resid_pre", "attn_out", "mlp_out")},
        layers_all_positions={k: out[k].sum(1) for k in ("attn_out", "mlp_out")},
    )


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (average ranks for ties); NaN when either side is constant."""
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def top_neurons(model, attribution: Attribution, top_k: int = 50) -> pd.DataFrame:
    """The top_k neurons by attribution (exact column left empty). Same columns as verify_top."""
    check_top_k(top_k, attribution.neurons.size)
    flat = attribution.neurons.ravel()
    order = np.argsort(-flat, kind="stable")[:top_k]
    layers, neurons = order // model.d_mlp, order % model.d_mlp
    return pd.DataFrame({
        "rank": np.arange(1, top_k + 1), "layer": layers, "neuron": neurons,
        "label": [label(int(l), int(n)) for l, n in zip(layers, neurons)],
        "attribution": flat[order], "exact": np.full(top_k, np.nan, dtype=np.float32),
    })


def verify_top(setup: patching.Setup, attribution: Attribution, top_k: int = 50,
               progress: patching.Progress | None = None) -> pd.DataFrame:
    """The top_k neurons by attribution, re-scored exactly (batched per layer).

    Columns: rank, layer, neuron, label, attribution, exact; highest attribution first.
    """
    frame = top_neurons(setup.model, attribution, top_k)
    layers, neurons = frame.layer.to_numpy(), frame.neuron.to_numpy()
    exact = np.empty(len(frame), dtype=np.float32)
    distinct = sorted(set(layers.tolist()))
    for i, layer in enumerate(distinct):
        rows = np.nonzero(layers == layer)[0]
        exact[rows] = patching.patch_neurons(setup, layer, neurons=neurons[rows].tolist()).scores
        if progress:
            progress(i + 1, len(distinct))
    return frame.assign(exact=exact)
