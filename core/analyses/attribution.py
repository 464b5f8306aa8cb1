"""Attribution patching: every neuron of every layer (and every head, every layer × position) at once.

Linear approximation of activation patching (Nanda 2023): the patched metric is approximated by its first-order
Taylor expansion around the corrupted run,
    score ≈ (clean act − corrupted act) · ∂(logit diff)/∂act |corrupted  /  (clean − corrupted logit diff),
with the same normalisation as exact patching, from one clean forward, one corrupted forward and one backward.
Known to be poor where the model is far from linear in the activation: MLP 0 (its output feeds every later
layer's norms at once) and the residual stream (a large patch); the top candidates are therefore re-scored with
exact patching (core.analyses.patching), and both scores are shown side by side.
Only clean patching is approximated (zero / mean / negate ablations have no attribution form here).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from core.analyses import patching
from core.analyses.congruence import label
from core.engine import forward as fw
from core.errors import UserError
from core.hosting import check_top_k
from core.jsonable import to_jsonable
from core.progress import Progress

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

    def to_json(self) -> dict:
        return to_jsonable(self)


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
    """The top_k neurons by attribution (exact column left empty): rank, layer, neuron, label, attribution, exact."""
    check_top_k(top_k, attribution.neurons.size)
    flat = attribution.neurons.ravel()
    order = np.argsort(-flat, kind="stable")[:top_k]
    layers, neurons = order // model.d_mlp, order % model.d_mlp
    return pd.DataFrame(
        {
            "rank": np.arange(1, top_k + 1),
            "layer": layers,
            "neuron": neurons,
            "label": [label(int(l), int(n)) for l, n in zip(layers, neurons)],
            "attribution": flat[order],
            "exact": np.full(top_k, np.nan, dtype=np.float32),
        }
    )


def verify_top(
    setup: patching.Setup, attribution: Attribution, top_k: int = 50, progress: Progress | None = None
) -> pd.DataFrame:
    """The top_k neurons by attribution, re-scored exactly (one depth-staggered batch over all their layers).

    Columns: rank, layer, neuron, label, attribution, exact; highest attribution first.
    """
    frame = top_neurons(setup.model, attribution, top_k)
    wanted: dict[int, list[int]] = {}
    for layer, neuron in zip(frame.layer.tolist(), frame.neuron.tolist()):
        wanted.setdefault(int(layer), []).append(int(neuron))
    chosen: dict[int, list[int] | None] = dict(wanted)
    swept = patching.patch_neuron_sets(setup, chosen, progress=progress)
    exact = {
        (layer, int(n)): float(v) for layer, result in swept.items() for n, v in zip(result.neurons, result.scores)
    }
    return frame.assign(exact=[exact[int(l), int(n)] for l, n in zip(frame.layer, frame.neuron)])


# A layer whose whole MLP, patched at all positions, moves at least this share of the gap (either sign) is swept
# neuron by neuron, so that a neuron attribution underrates (saturated, nonlinear) still reaches the table.
SWEEP_MIN_LAYER_SCORE = 0.2
SWEEP_MAX_LAYERS = 4  # the largest such layers; each sweep costs about one layer's worth of the page's time
SWEEP_WINNERS = 3  # neurons taken from each sweep into the table
DISAGREE_RATIO = 2.0


@dataclass
class TopNeurons:
    """The verified candidates of "which neuron anywhere restores most", ranked by the *exact* score.

    table: rank (by exact), layer, neuron, label, exact, attribution, source, disagree; highest exact first.
    sweeps: the full sweeps run (layer → NeuronPatching), reusable by callers that show a layer's sweep.
    """

    table: pd.DataFrame
    layer_totals: np.ndarray  # [L] mlp_out patched at all positions, the sweep selection's input
    swept_layers: list[int]
    sweeps: dict[int, patching.NeuronPatching]
    spearman: float  # attribution vs exact over the attribution top-k
    top_k: int

    @property
    def best(self) -> pd.Series:
        return self.table.iloc[0]

    def rule(self) -> str:
        return (
            f"candidates: the top {self.top_k} neurons by attribution, plus the top {SWEEP_WINNERS} of a full "
            f"exact sweep of each layer (MLP 0 aside) whose all-positions mlp_out score is ≥ "
            f"{SWEEP_MIN_LAYER_SCORE} in magnitude (the {SWEEP_MAX_LAYERS} largest); ranked by exact score. "
            f"'disagree' marks rows where attribution and exact differ by more than {DISAGREE_RATIO:g}× "
            "(or in sign)."
        )

    def to_json(self) -> dict:
        best = self.best
        return to_jsonable(
            {
                "top_neuron": {
                    "layer": int(best.layer),
                    "neuron": int(best.neuron),
                    "label": best.label,
                    "exact": float(best.exact),
                    "attribution": float(best.attribution),
                },
                "candidates": self.table[
                    ["rank", "layer", "neuron", "label", "exact", "attribution", "source", "disagree"]
                ],
                "swept_layers": self.swept_layers,
                "layer_totals_mlp_out": self.layer_totals,
                "spearman_top_k": self.spearman,
                "rule": self.rule(),
                "caveat": CAVEAT,
            }
        )


def disagree(attribution: np.ndarray, exact: np.ndarray, ratio: float = DISAGREE_RATIO) -> np.ndarray:
    """True where the two scores differ by more than `ratio`× in magnitude, or in sign (ignoring both ≈ 0)."""
    a, e = np.abs(attribution), np.abs(exact)
    big, small = np.maximum(a, e), np.minimum(a, e)
    opposite = np.sign(attribution) * np.sign(exact) < 0
    return (big >= 0.01) & ((big > ratio * small) | opposite)


def swept_layers(layer_totals: np.ndarray) -> list[int]:
    """Layers (MLP 0 aside: it acts as an extended embedding) whose |all-positions score| ≥ the threshold."""
    order = [int(l) for l in np.argsort(-np.abs(layer_totals), kind="stable") if l > 0]
    return [l for l in order if abs(layer_totals[l]) >= SWEEP_MIN_LAYER_SCORE][:SWEEP_MAX_LAYERS]


def find_top_neurons(
    setup: patching.Setup,
    approx: Attribution,
    top_k: int = 50,
    layer_totals: np.ndarray | None = None,
    extra_sweeps: tuple[int, ...] = (),
    progress: Progress | None = None,
    screen: bool = False,
) -> TopNeurons:
    """Which neuron anywhere restores most: attribution proposes, exact patching decides (AtP*'s lesson).

    layer_totals: mlp_out of each layer patched at all positions ([L]); computed (cheap) when not given.
    extra_sweeps: layers to sweep fully besides the selected ones (e.g. the page's chosen layer), shared work.
    screen: the full sweeps are screened in bfloat16 (patching.patch_neuron_sets); every row of the table is
    still exact: a sweep's winners are among its verified rows, and attribution's candidates are verified too.
    """
    model = setup.model
    if layer_totals is None:
        layer_totals = patching.patch_layer_totals(setup)["mlp_out"]
    proposed = top_neurons(model, approx, top_k)
    sweep_layers = swept_layers(layer_totals)
    full = sorted(set(sweep_layers) | set(extra_sweeps))
    wanted: dict[int, list[int] | None] = {layer: None for layer in full}
    in_sweeps: dict[int, list[int]] = {}  # attribution's candidates inside a swept layer: verified in fp32
    for layer, neuron in zip(proposed.layer.tolist(), proposed.neuron.tolist()):
        if layer in full:
            in_sweeps.setdefault(int(layer), []).append(int(neuron))
            continue
        listed = wanted.setdefault(int(layer), [])
        assert listed is not None
        listed.append(int(neuron))
    results = patching.patch_neuron_sets(setup, wanted, progress=progress, screen=screen, verify=in_sweeps)
    exact = {(layer, int(n)): float(v) for layer, r in results.items() for n, v in zip(r.neurons, r.scores)}
    rows = {(int(l), int(n)): "attribution top-k" for l, n in zip(proposed.layer, proposed.neuron)}
    for layer in sweep_layers:
        for n in results[layer].winners(SWEEP_WINNERS).neuron.tolist():
            rows.setdefault((layer, int(n)), f"sweep of MLP {layer}")
    keys = list(rows)
    flat = approx.neurons
    table = pd.DataFrame(
        {
            "layer": [l for l, _ in keys],
            "neuron": [n for _, n in keys],
            "label": [label(l, n) for l, n in keys],
            "exact": np.array([exact[k] for k in keys], dtype=np.float32),
            "attribution": np.array([flat[l, n] for l, n in keys], dtype=np.float32),
            "source": [rows[k] for k in keys],
        }
    )
    table = table.sort_values("exact", ascending=False, kind="stable").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    table["disagree"] = disagree(table.attribution.to_numpy(), table.exact.to_numpy())
    in_top = proposed.assign(exact=[exact[int(l), int(n)] for l, n in zip(proposed.layer, proposed.neuron)])
    rho = spearman(in_top.attribution.to_numpy(), in_top.exact.to_numpy())
    sweeps = {layer: results[layer] for layer in full}
    return TopNeurons(table, np.asarray(layer_totals), sweep_layers, sweeps, rho, top_k)
