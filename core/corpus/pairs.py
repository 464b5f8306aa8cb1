"""Every token–neuron pair of a search tested on real text (the post's last figure, and the test it did not run).

The post ends with its mutual-exclusive search, the top five pairs' corpus curves ("smooth correlations for every
pair") and "We have not tested the other pairs, but we expect many of them to correlate". This module tests them:
for each of the top-K pairs of a search (core.analyses.search: mutual or standout), over a corpus —
- positions scanned, how often the pair's token is the model's top-1 prediction and the true next token;
- the curve: the neuron's activation in the dashboards' fixed bins (quarter octaves, core.corpus.dashboards) →
  positions, how many of them have the token as top-1 (and as true next), and the shares;
- AUC: the chance that a position where the token is the top-1 has a higher activation than one where it is not
  (ties in a bin count half), read from the curve: 0.5 = no relation, 1 = top-1 only where the neuron fires highest;
- Spearman's ρ between the activation and the token's probability, per position (scan pass only: built dashboards
  keep per-bin counts, not probabilities);
- a verdict from the curve (so it is the same whichever path computed it): THRESHOLDS below, stated in the JSON.

One pass for all K neurons, each with its own token. Pairs whose token is the neuron's top congruent token by W_U
(every mutual W_U pair) are read from built dashboards when dashboards of this model, corpus and budget exist
(core.corpus.dashboards.find_built); the others share one scan pass (batched; the forward once per batch, the
unembedding in row chunks, every pair's activation and token probability gathered from it). The corpus is read as
the dashboards read it: contexts spread evenly over the corpus (core.corpus.scan.cut, spread=True), so both paths
see the same positions, and `scan` with ScanSpec(spread=True) on the same corpus and budget gives the same totals.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from core import cache
from core.analyses import search
from core.analyses.congruence import label
from core.corpus import dashboards as dash_mod
from core.corpus import scan
from core.corpus.sources import Corpus, load_corpus
from core.engine import forward as fw
from core.engine.model import Model
from core.errors import UserError
from core.hosting import limits
from core.jsonable import to_jsonable
from core.progress import Progress

DEFAULT_TOP_K = 100
DEFAULT_TOKENS = 20_000
# The verdict, from the curve (identical from built dashboards and from a scan pass):
MIN_TOP1 = 10  # fewer positions with the token as the model's top-1: "too rare to tell"
CORRELATES_AUC = 0.75  # AUC at least this: "correlates"
WEAK_AUC = 0.6  # at least this (and below CORRELATES_AUC): "weak"; below: "none"
VERDICTS = ("correlates", "weak", "none", "too rare to tell")
THRESHOLDS = {
    "min_top1": MIN_TOP1,
    "correlates_auc": CORRELATES_AUC,
    "weak_auc": WEAK_AUC,
    "rule": f"too rare to tell if the token is the model's top-1 at fewer than {MIN_TOP1} positions; else "
    f"correlates if AUC >= {CORRELATES_AUC}, weak if AUC >= {WEAK_AUC}, none otherwise. AUC = the chance that a "
    "position where the token is the top-1 has a higher activation bin than one where it is not (ties half)",
}
SPEARMAN_POSITIONS = 200_000  # ρ from at most this many positions (every k-th): bounded memory on big budgets
CURVE_MIN_COUNT = 10  # figures draw bins with at least this many positions (the JSON has every bin)
VERSION = 1


@dataclass(frozen=True)
class PairsSpec:
    """kind: mutual or standout; matrix: the congruence basis of the search; dataset None = the dashboards' default
    corpus (Brown when installed, else the bundled one); ctx None = min(256, the model's context)."""

    kind: str = "mutual"
    top_k: int = DEFAULT_TOP_K
    dataset: str | None = None
    max_tokens: int = DEFAULT_TOKENS
    matrix: str = "W_U"
    ctx: int | None = None
    batch_size: int | None = None  # contexts per forward; None: what the memory budget fits (scan.forward_contexts)


def verdict(top1: int, auc: float) -> str:
    if top1 < MIN_TOP1 or not np.isfinite(auc):
        return "too rare to tell"
    if auc >= CORRELATES_AUC:
        return "correlates"
    return "weak" if auc >= WEAK_AUC else "none"


def auc_of(counts: np.ndarray, top1: np.ndarray) -> float:
    """AUC of the activation bins (ascending) as a score for "the token is the top-1": per-bin counts."""
    pos = top1.astype(np.float64)
    neg = counts.astype(np.float64) - pos
    P, N = pos.sum(), neg.sum()
    if P == 0 or N == 0:
        return float("nan")
    below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return float((pos * (below + 0.5 * neg)).sum() / (P * N))


def curve_of(counts: np.ndarray, top1: np.ndarray, nxt: np.ndarray) -> list[dict]:
    """Non-empty bins of one pair: lo, hi, count, top1, top1_share, next, next_share."""
    keep = np.nonzero(counts)[0]
    return [
        {
            "lo": float(dash_mod.EDGES[b]),
            "hi": float(dash_mod.EDGES[b + 1]),
            "count": int(counts[b]),
            "top1": int(top1[b]),
            "top1_share": float(top1[b] / counts[b]),
            "next": int(nxt[b]),
            "next_share": float(nxt[b] / counts[b]),
        }
        for b in keep
    ]


@dataclass
class PairsResult:
    model: str
    kind: str
    matrix: str
    corpus: str
    positions: int
    settings: dict
    pairs: list[dict] = field(default_factory=list)  # one per pair, rank order (see to_json)

    COLUMNS = [
        "rank",
        "label",
        "layer",
        "neuron",
        "token",
        "id",
        "score",
        "positions",
        "token_top1",
        "token_next",
        "spearman",
        "auc",
        "verdict",
        "source",
    ]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame([{c: p[c] for c in self.COLUMNS} for p in self.pairs], columns=self.COLUMNS)

    def curves(self, ranks: int | None = None, min_count: int = 1) -> pd.DataFrame:
        """Long table of the curves: rank, label, token, then the bin's columns (bins of at least min_count)."""
        rows = [
            {"rank": p["rank"], "label": p["label"], "token": p["token"], **b}
            for p in self.pairs[:ranks]
            for b in p["curve"]
            if b["count"] >= min_count
        ]
        columns = ["rank", "label", "token", "lo", "hi", "count", "top1", "top1_share", "next", "next_share"]
        return pd.DataFrame(rows, columns=columns)

    def summary(self) -> dict:
        counts = {v: sum(p["verdict"] == v for p in self.pairs) for v in VERDICTS}
        testable = len(self.pairs) - counts["too rare to tell"]
        return {
            "pairs": len(self.pairs),
            **counts,
            "testable": testable,
            "share_correlating_of_testable": counts["correlates"] / testable if testable else None,
        }

    def to_json(self) -> dict:
        return to_jsonable(
            {
                "model": self.model,
                "kind": self.kind,
                "score": search.KIND_HELP.get(self.kind, ""),  # type: ignore[call-overload]
                "matrix": self.matrix,
                "corpus": self.corpus,
                "positions": self.positions,
                "settings": self.settings,
                "thresholds": THRESHOLDS,
                "summary": self.summary(),
                "pairs": self.pairs,
            }
        )


# ---------------------------------------------------------------- inputs


def _validate(model: Model, spec: PairsSpec) -> PairsSpec:
    if spec.kind not in search.KINDS:
        raise UserError(f"search kind {spec.kind!r} unknown; use {' or '.join(search.KINDS)}")
    if spec.top_k < 1:
        raise UserError(f"top-k {spec.top_k} is out of range; use at least 1 pair")
    cap = limits().max_scan_tokens
    if not 1 <= spec.max_tokens <= cap:
        raise UserError(f"token budget {spec.max_tokens:,} is out of range; use 1..{cap:,}")
    ctx = spec.ctx or min(scan.DEFAULT_CTX, model.n_ctx)
    if not 8 <= ctx <= model.n_ctx:
        raise UserError(f"context length {ctx} is out of range; use 8..{model.n_ctx}")
    if spec.batch_size is not None and spec.batch_size < 1:
        raise UserError("batch size must be at least 1")
    return dataclasses.replace(spec, dataset=spec.dataset or dash_mod.default_corpus(), ctx=ctx)


def available(tables: search.Tables, kind: str) -> int:
    """How many pairs the search of `kind` has: every token (standout), the pairs that choose each other (mutual)."""
    if kind == "standout":
        return len(tables.token_top_ids)
    top_token = tables.neuron_top_ids[:, 0].astype(np.int64)
    return int((tables.token_top_ids[top_token, 0] == np.arange(len(top_token))).sum())


def ranked_pairs(model: Model, spec: PairsSpec, progress: Progress | None = None) -> pd.DataFrame:
    """The top-K pairs of the search; refuses K above the number of pairs the search has."""
    tables = search.tables(model, spec.matrix, progress)
    count = available(tables, spec.kind)
    cap = limits().max_top_k
    upper = count if cap is None else min(count, cap)
    if not 1 <= spec.top_k <= upper:
        raise UserError(
            f"top-k {spec.top_k} is out of range; the {spec.kind} search of {model.name} has {count:,} pairs"
            + (f" (this demo shows at most {cap})" if cap is not None and cap < count else "")
            + f"; use 1..{upper}"
        )
    return search.ranked(model, spec.kind, tables, spec.top_k)  # type: ignore[arg-type]


def matching_dashboards(model: Model, spec: PairsSpec) -> dash_mod.DashboardSpec | None:
    """Built dashboards that read exactly this corpus, budget and context length (the same positions), or None."""
    wanted = dash_mod.DashboardSpec(spec.dataset, spec.max_tokens, ctx=spec.ctx)
    try:
        if dash_mod.is_built(model, wanted):
            return wanted
        found = dash_mod.find_built(model, spec.dataset)
    except UserError:
        return None
    if found is not None and found.max_tokens == spec.max_tokens and (found.ctx or spec.ctx) == spec.ctx:
        return found
    return None


# ---------------------------------------------------------------- the scan pass


@dataclass
class Counts:
    """Per-pair binned counts [BINS, K] and ρ [K] (NaN where not computed)."""

    hist: np.ndarray
    top1: np.ndarray
    nxt: np.ndarray
    spearman: np.ndarray
    positions: int

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "hist": self.hist,
            "top1": self.top1,
            "nxt": self.nxt,
            "spearman": self.spearman,
            "positions": np.array(self.positions),
        }


def spearman_columns(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's ρ of each column pair of x, y [n, K] (average ranks for ties); NaN where a column is constant."""
    rx = pd.DataFrame(x).rank(axis=0).to_numpy(dtype=np.float64, copy=True)
    ry = pd.DataFrame(y).rank(axis=0).to_numpy(dtype=np.float64, copy=True)
    rx -= rx.mean(0)
    ry -= ry.mean(0)
    den = np.sqrt((rx * rx).sum(0) * (ry * ry).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(0) / np.where(den > 0, den, 1), np.nan)


@torch.no_grad()
def scan_pass(
    model: Model,
    contexts: list[tuple[int, int, list[int]]],
    neurons: list[tuple[int, int]],
    token_ids: list[int],
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> Counts:
    """One pass over the contexts for K pairs (neuron k with token k): binned counts and ρ(activation, P(token)).

    batch_size: contexts per forward; None = what the memory budget fits (scan.forward_contexts, recording the
    layers the pairs span)."""
    w, K, dev = model.weights, len(neurons), model.device
    skip = len(scan.context_bos(model))
    total = sum(len(ids) - skip for _, _, ids in contexts)
    stride = max(1, -(-total // SPEARMAN_POSITIONS))
    layers = sorted({layer for layer, _ in neurons})
    if batch_size is None:
        longest = max(len(ids) for _, _, ids in contexts)
        batch_size = scan.forward_contexts(model, longest, layers[-1] - layers[0] + 1)
    cols = {layer: [k for k, (l, _) in enumerate(neurons) if l == layer] for layer in layers}
    units = {layer: torch.tensor([neurons[k][1] for k in cols[layer]], device=dev) for layer in layers}
    order = torch.tensor([k for layer in layers for k in cols[layer]], device=dev)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(K, device=dev)
    tokens = torch.tensor(token_ids, device=dev)
    table = dash_mod.BIN_TABLE.to(dev)
    bins_n = dash_mod.HIST_BINS
    hist = torch.zeros(bins_n * K, dtype=torch.long, device=dev)
    hit1 = torch.zeros_like(hist)
    hitn = torch.zeros_like(hist)
    column = torch.arange(K, device=dev)
    rows = scan.logit_rows(model)
    kept_act: list[np.ndarray] = []
    kept_prob: list[np.ndarray] = []
    done = 0
    for first in range(0, len(contexts), batch_size):
        batch = [ids for _, _, ids in contexts[first : first + batch_size]]
        ids = scan.batch_tokens(model, batch)
        B, P = ids.shape
        trace = fw.run(w, ids, record={"mlp_post"}, layers=range(layers[0], layers[-1] + 1))
        lengths = [len(c) for c in batch]
        flat = torch.cat([torch.arange(skip, n, device=dev) + row * P for row, n in enumerate(lengths)])
        acts = torch.cat(
            [
                trace.mlp_post[layer - layers[0]].reshape(B * P, -1).index_select(0, flat).index_select(1, units[layer])
                for layer in layers
            ],
            1,
        )[:, inverse].float()  # [T, K], pair order
        final = trace.resid_final
        assert final is not None
        resid = final.reshape(B * P, -1).index_select(0, flat)
        del trace
        T = resid.shape[0]
        top = torch.empty(T, dtype=torch.long, device=dev)
        prob = torch.empty(T, K, device=dev)
        for start in range(0, T, rows):
            logits = fw.unembed(w, resid[start : start + rows]).float()
            top[start : start + rows] = logits.argmax(-1)
            prob[start : start + rows] = (logits[:, tokens] - logits.logsumexp(-1, keepdim=True)).exp()
        nxt = torch.cat([torch.cat([ids[row, skip + 1 : n], ids.new_full((1,), -1)]) for row, n in enumerate(lengths)])
        keys = (acts.contiguous().view(torch.int32) >> 21) & 0x7FF
        where = (table.index_select(0, keys.reshape(-1)).view(T, K) * K + column).reshape(-1)
        hist.index_add_(0, where, torch.ones_like(where))
        hit1.index_add_(0, where, (top[:, None] == tokens[None, :]).reshape(-1).long())
        hitn.index_add_(0, where, (nxt[:, None] == tokens[None, :]).reshape(-1).long())
        pick = (torch.arange(done, done + T, device=dev) % stride) == 0
        kept_act.append(acts[pick].cpu().numpy())
        kept_prob.append(prob[pick].cpu().numpy())
        done += T
        if progress:
            progress(done, total)
    rho = spearman_columns(np.concatenate(kept_act), np.concatenate(kept_prob)) if kept_act else np.full(K, np.nan)

    def shaped(x: torch.Tensor) -> np.ndarray:
        return x.view(bins_n, K).cpu().numpy()

    return Counts(shaped(hist), shaped(hit1), shaped(hitn), rho, done)


# ---------------------------------------------------------------- the whole test


def _cache_path(model: Model, corpus: Corpus, spec: PairsSpec, neurons: list, token_ids: list[int]):
    params = {
        "corpus": corpus.identity,
        "neurons": neurons,
        "tokens": token_ids,
        "max_tokens": spec.max_tokens,
        "ctx": spec.ctx,
        "bins": [dash_mod.OCTAVE_MIN, dash_mod.OCTAVE_MAX, dash_mod.STEPS],
        "spearman_positions": SPEARMAN_POSITIONS,
        "version": VERSION,
    }
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache.key_path(model.fingerprint, "pairs", {"digest": digest})


def pairs(
    model: Model,
    spec: PairsSpec = PairsSpec(),
    progress: Progress | None = None,
    use_cache: bool = True,
    use_dashboards: bool = True,
) -> PairsResult:
    """Test the top-K pairs of the search on the corpus (see the module docstring)."""
    spec = _validate(model, spec)
    assert spec.ctx is not None
    corpus = load_corpus(spec.dataset)
    table = ranked_pairs(model, spec)
    neurons = [(int(l), int(n)) for l, n in zip(table.layer, table.neuron)]
    token_ids = [int(t) for t in table.id]
    K = len(neurons)
    from_dash = np.zeros(K, dtype=bool)
    built = matching_dashboards(model, spec) if use_dashboards else None
    hist = np.zeros((dash_mod.HIST_BINS, K), dtype=np.int64)
    hit1, hitn = np.zeros_like(hist), np.zeros_like(hist)
    rho = np.full(K, np.nan)
    positions = 0
    if built is not None:
        dash = dash_mod.build(model, built)
        a = dash.arrays
        layers, units = np.array([l for l, _ in neurons]), np.array([n for _, n in neurons])
        from_dash = a["neuron_top_token"][layers, units] == np.array(token_ids)
        hist[:, from_dash] = a["hist"][layers[from_dash], :, units[from_dash]].T
        hit1[:, from_dash] = a["hit_top1"][layers[from_dash], :, units[from_dash]].T
        hitn[:, from_dash] = a["hit_next"][layers[from_dash], :, units[from_dash]].T
        positions = dash.positions
    rest = np.nonzero(~from_dash)[0]
    if len(rest):
        sub_neurons = [neurons[i] for i in rest]
        sub_tokens = [token_ids[i] for i in rest]
        path = _cache_path(model, corpus, spec, sub_neurons, sub_tokens)
        hit = cache.load(path) if use_cache else None
        if hit is not None and set(hit) == {"hist", "top1", "nxt", "spearman", "positions"}:
            counts = Counts(hit["hist"], hit["top1"], hit["nxt"], hit["spearman"], int(hit["positions"]))
            if progress:
                progress(counts.positions, counts.positions)
        else:
            contexts = scan.cut(model, corpus.texts, spec.ctx, spec.max_tokens, spread=True)
            if not contexts:
                raise UserError(f"corpus {corpus.name!r} has no document of 2 tokens or more")
            counts = scan_pass(model, contexts, sub_neurons, sub_tokens, spec.batch_size, progress)
            if use_cache:
                cache.save(path, counts.arrays())
        hist[:, rest], hit1[:, rest], hitn[:, rest] = counts.hist, counts.top1, counts.nxt
        rho[rest] = counts.spearman
        positions = counts.positions
    elif progress:
        progress(positions, positions)
    rows = []
    for k, r in enumerate(table.itertuples()):
        auc = auc_of(hist[:, k], hit1[:, k])
        top1 = int(hit1[:, k].sum())
        rows.append(
            {
                "rank": int(r.rank),
                "label": label(*neurons[k]),
                "layer": neurons[k][0],
                "neuron": neurons[k][1],
                "token": r.token,
                "id": token_ids[k],
                "score": float(r.score),
                "congruence": float(r.congruence),
                "positions": int(hist[:, k].sum()),
                "token_top1": top1,
                "token_next": int(hitn[:, k].sum()),
                "spearman": None if np.isnan(rho[k]) else float(rho[k]),
                "auc": None if np.isnan(auc) else auc,
                "verdict": verdict(top1, auc),
                "source": "dashboards" if from_dash[k] else "scan",
                "curve": curve_of(hist[:, k], hit1[:, k], hitn[:, k]),
            }
        )
    settings: dict[str, Any] = {
        "corpus": spec.dataset,
        "max_tokens": spec.max_tokens,
        "ctx": spec.ctx,
        "sampling": "contexts spread evenly over the corpus (as the dashboards read it)",
        "bins": f"the dashboards' {dash_mod.HIST_BINS} fixed bins: quarter octaves of |a| from "
        f"2^{dash_mod.OCTAVE_MIN} to 2^{dash_mod.OCTAVE_MAX} on each side",
        "spearman": f"Spearman's rho of the activation with the token's probability, per position (from at most "
        f"{SPEARMAN_POSITIONS:,}, every k-th); null for pairs read from built dashboards (per-bin counts only)",
        "dashboards": None if built is None else dataclasses.asdict(built),
        "pairs_from_dashboards": int(from_dash.sum()),
        "pairs_scanned": int(len(rest)),
        "bos": model.bos_convention(),
        "neuron_activation": model.facts()["neuron_activation"],
    }
    return PairsResult(model.name, spec.kind, spec.matrix, corpus.description, positions, settings, rows)
