"""Which neurons fire unusually here: each prompt token's neurons whose activation is rarest for that neuron.

Rarity is read from the built dashboards (core.corpus.dashboards): every neuron's histogram of its activations over
the corpus, in bins shared by all neurons. For an activation a of neuron n, its tail share is the fraction of corpus
positions where n's activation is at least as extreme: P(X ≥ a) on the high side, P(X ≤ a) on the low side, read from
the bins with a linear interpolation inside a's own bin (the bins are quarter octaves, ~19 % of |a| wide). A share
of 0.001 means "n fires this high on 0.1 % of the corpus": the "top x %" a page shows. Where a lies beyond every
corpus value the share is 0, and ties are broken by how far beyond (a over the corpus's maximum; on the low side,
over the lowest bin's edge: the dashboards keep no minimum).

No target is needed: this is the prompt's own fingerprint on the neurons. The BOS position the model's convention
prepends is left out, as the dashboards leave it out of the histograms.
Shapes: P positions, L layers, m d_mlp, B histogram bins.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import pandas as pd
import torch

from core.analyses.congruence import label
from core.corpus import scan
from core.corpus.dashboards import EDGES, HIST_BINS, Dashboards, bin_of
from core.engine import forward as fw
from core.engine.model import Model
from core.engine.tokens import Prompt
from core.errors import UserError

Side = Literal["both", "high", "low"]
SIDES: tuple[Side, ...] = get_args(Side)
DEFAULT_PER_TOKEN = 5


def require(model: Model, dash: Dashboards | None) -> Dashboards:
    """The dashboards, checked to belong to this model; one line saying how to build them when there are none."""
    if dash is None:
        raise UserError(
            f"no dashboards built for {model.name}: rarity reads each neuron's corpus histogram; build them with "
            f"python -m core dashboards build --model {model.name}"
        )
    shape = dash.arrays["hist"].shape
    if shape != (model.n_layers, HIST_BINS, model.d_mlp):
        raise UserError(
            f"these dashboards were built for {dash.model} ({shape[0]} layers × {shape[2]} neurons), not for "
            f"{model.name}; build them with python -m core dashboards build --model {model.name}"
        )
    return dash


def tail_shares(
    hist: np.ndarray, acts: np.ndarray, top_vals: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(P(X ≥ a), P(X ≤ a)) of each activation against its neuron's histogram: each [P, L, m].

    hist: [L, B, m] counts; acts: [P, L, m]. Inside a's bin the bin's count is split linearly at a (the end bins,
    which also hold values beyond ±2^10, are treated as ending at their edge).
    top_vals: [L, m, k] each neuron's k highest corpus activations (the dashboards' examples, best first): where
    a reaches the k-th of them, P(X ≥ a) is counted from them exactly (0 above the corpus's maximum) — the far
    tail, where rarity is decided and a bin is widest."""
    counts = hist.astype(np.float64)
    total = np.maximum(counts.sum(1), 1.0)  # [L, m]
    above = counts[:, ::-1].cumsum(1)[:, ::-1] - counts  # [L, B, m]: positions in bins above b
    below = counts.cumsum(1) - counts  # positions in bins below b
    bins = bin_of(torch.from_numpy(np.ascontiguousarray(acts, dtype=np.float32))).numpy()  # [P, L, m]
    lo, hi = EDGES[bins], EDGES[bins + 1]
    inside = np.clip((acts - lo) / (hi - lo), 0.0, 1.0)  # share of a's bin below a

    def pick(table: np.ndarray) -> np.ndarray:
        """table[l, bins[p, l, n], n] for every p, l, n."""
        return np.take_along_axis(table[None], bins[:, :, None, :], axis=2)[:, :, 0, :]

    own = pick(counts)
    high = (pick(above) + (1 - inside) * own) / total
    low = (pick(below) + inside * own) / total
    if top_vals is not None:
        kth = top_vals[None, :, :, -1]  # [1, L, m]
        exact = (top_vals[None] >= acts[..., None]).sum(-1) / total  # [P, L, m]
        high = np.where(np.isfinite(kth) & (acts >= kth), exact, high)
    return high, low


def extremes(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The corpus's highest and lowest activation edges per neuron (upper edge of the highest non-empty bin, lower
    edge of the lowest): ([L, m], [L, m]); NaN where the histogram is empty."""
    seen = hist > 0  # [L, B, m]
    any_seen = seen.any(1)
    top = HIST_BINS - 1 - np.argmax(seen[:, ::-1], axis=1)
    bottom = np.argmax(seen, axis=1)
    return np.where(any_seen, EDGES[top + 1], np.nan), np.where(any_seen, EDGES[bottom], np.nan)


@torch.no_grad()
def prompt_activations(model: Model, prompt: Prompt) -> np.ndarray:
    """Every neuron's activation at every position of the prompt: [P, L, m] (fp32)."""
    trace = fw.run(model.weights, prompt.tensor(model.device), record={"mlp_post"})
    return torch.stack([post[0] for post in trace.mlp_post], 1).float().cpu().numpy()


def counted_positions(model: Model, prompt: Prompt) -> list[int]:
    """The prompt's positions the dashboards' convention counts: all but a leading BOS of the model's convention."""
    lead = scan.context_bos(model)
    skip = 1 if lead and prompt.ids[:1] == lead else 0
    return list(range(skip, len(prompt.ids)))


def unusual_neurons(
    model: Model,
    prompt: Prompt,
    dash: Dashboards | None,
    per_token: int = DEFAULT_PER_TOKEN,
    side: Side = "both",
) -> pd.DataFrame:
    """For every token of the prompt, the `per_token` neurons whose activation there is rarest against their own
    corpus histogram.

    side: "high" (fires unusually high), "low" (unusually low: gated MLPs' neurons act with both signs) or "both"
    (the rarer tail of each). Columns: position, token, rank (1 = rarest at that position), layer, neuron, label,
    activation, side, share (the fraction of corpus positions at least as extreme), top_percent (100 × share),
    beyond_corpus and corpus_edge: above the corpus's maximum (exact, from the kept examples) on the high side;
    below the lowest non-empty bin's lower edge on the low side."""
    dash = require(model, dash)
    if side not in SIDES:
        raise UserError(f"side {side!r} unknown; use one of {', '.join(SIDES)}")
    m_all = model.n_layers * model.d_mlp
    if not 1 <= per_token <= m_all:
        raise UserError(f"neurons per token {per_token} is out of range; use 1..{m_all}")
    positions = counted_positions(model, prompt)
    if not positions:
        raise UserError("the prompt has no token besides BOS; type some text")
    hist = dash.arrays["hist"]
    acts = prompt_activations(model, prompt)[positions]  # [P', L, m]
    top_vals = dash.arrays["vals"]  # [L, m, k]
    high, low = tail_shares(hist, acts, top_vals)
    top_edge, bottom_edge = extremes(hist)
    top_edge = np.where(np.isfinite(top_vals[..., 0]), top_vals[..., 0], top_edge)  # the exact maximum
    # How far beyond the corpus's extreme an activation lies (> 1: beyond): the tie-break among shares of 0.
    with np.errstate(divide="ignore", invalid="ignore"):
        high_excess = np.where(top_edge > 0, acts / top_edge, 0.0)
        low_excess = np.where(bottom_edge < 0, acts / bottom_edge, 0.0)
    if side == "high":
        use_high = np.ones_like(high, dtype=bool)
    elif side == "low":
        use_high = np.zeros_like(high, dtype=bool)
    else:
        use_high = high <= low
    share = np.where(use_high, high, low)
    excess = np.nan_to_num(np.where(use_high, high_excess, low_excess))
    edge = np.where(use_high, top_edge[None], bottom_edge[None])
    beyond = np.where(use_high, acts > top_edge[None], acts < bottom_edge[None])
    P = len(positions)
    flat_share, flat_excess = share.reshape(P, -1), excess.reshape(P, -1)
    rows = []
    m = model.d_mlp
    for row, pos in enumerate(positions):
        order = np.lexsort((-flat_excess[row], flat_share[row]))[:per_token]  # rarest first, then furthest out
        for rank, i in enumerate(order, start=1):
            layer, neuron = int(i // m), int(i % m)
            rows.append(
                {
                    "position": pos,
                    "token": prompt.pieces[pos],
                    "rank": rank,
                    "layer": layer,
                    "neuron": neuron,
                    "label": label(layer, neuron),
                    "activation": float(acts[row, layer, neuron]),
                    "side": "high" if use_high[row, layer, neuron] else "low",
                    "share": float(flat_share[row, i]),
                    "top_percent": 100.0 * float(flat_share[row, i]),
                    "beyond_corpus": bool(beyond[row, layer, neuron]),
                    "corpus_edge": float(edge[row, layer, neuron]),
                }
            )
    return pd.DataFrame(rows)


def corpus_means(dash: Dashboards) -> np.ndarray:
    """Every neuron's mean activation over the corpus, estimated from its histogram: [L, m] (for mean ablation).

    Approximate: each bin counts as its midpoint (bins are ~19 % of |a| wide: a few % of error on a neuron's mean;
    the end bins also hold the rare values beyond ±2^10). The dashboards keep no exact sums."""
    hist = dash.arrays["hist"].astype(np.float64)  # [L, B, m]
    centres = (EDGES[:-1] + EDGES[1:]) / 2
    return ((hist * centres[None, :, None]).sum(1) / np.maximum(hist.sum(1), 1.0)).astype(np.float32)


def observed_range(dash: Dashboards, layer: int, neuron: int) -> tuple[float, float] | None:
    """The neuron's lowest and highest activation seen over the dashboards' corpus (bin edges: within a bin of the
    true extremes, and never inside them); None when its histogram is empty."""
    hist = dash.arrays["hist"][layer : layer + 1, :, neuron : neuron + 1]  # [1, B, 1]
    high, low = extremes(hist)
    lo, hi = float(low[0, 0]), float(high[0, 0])
    return None if np.isnan(lo) or np.isnan(hi) else (lo, hi)
