"""The neuron atlas: every neuron of a model classified, from its weights alone, by what it does to the vocabulary.

A neuron's *vocabulary composition* is c_t = cos(w, W_U[:, t]) over every token t, where w is the neuron's output
direction (core.analyses.congruence.neuron_vectors: W_out[L, n], or W_out[L, n] ⊙ w_post[L] behind a post-MLP
norm) and W_U
the unembedding after the model's weight processing (under "tl-default" the final norm's weight is folded into W_U
and W_U is centred over the vocabulary). This is Gurnee et al. 2024's `compute_vocab_composition` (their
`W_U / ‖W_U‖` against `W_out / ‖W_out‖`). From it, per neuron, in one streamed pass over neurons × vocabulary
(core.analyses.search.blocks, the searches' own block loop):

- its mean, standard deviation, skew (Fisher–Pearson, m3 / m2^1.5) and kurtosis (Pearson, m4 / m2²: a Gaussian
  gives 3) — population moments over the V tokens, as the paper's `utils.vector_moments`;
- its top and bottom tokens, and the *stand-out gap*: the largest drop between consecutive top values among the
  first STANDOUT_MAX + 1, in units of the composition's standard deviation (the post's token neurons: a handful of
  tokens far out of the rest);
- ‖w‖, and the share of ‖w‖² in the span of W_U's NULL_FRACTION · d_model bottom left singular vectors (Stolfo et
  al. 2024's ρ, the unembedding's effective null space: what a neuron writes there moves the final norm's scale and
  hardly any logit);
- its classes (`classify`, thresholds in THRESHOLDS, each with its source) and a surface label of its top tokens.

The moments are computed without ever holding the [N, V] matrix: per block the scores are centred in place on the
block's means (w · mean_t û_t, exact up to a residual that is corrected), squared into a second buffer, and reduced
by a sum and two batched dot products (Σ d², Σ d²·d, Σ d²·d²): about four memory passes per element beside a
2·d-FLOP matmul per element.
"""

from __future__ import annotations

import math
import os
import re
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from core import cache
from core.analyses import search
from core.analyses.congruence import label, neuron_vectors, token_vectors
from core.engine import memory
from core.engine.model import Model
from core.errors import UserError
from core.jsonable import to_jsonable
from core.progress import Progress

VERSION = 1  # bump when what is cached changes meaning
TOP_K = 5  # top and bottom tokens reported per neuron
STANDOUT_MAX = 8  # a "handful": at most this many tokens above the stand-out gap
KEEP = STANDOUT_MAX + 1  # top values kept per neuron (the gap after the 8th needs the 9th)
GRAM_COLUMNS = 16384  # vocabulary columns per float64 chunk of W_U W_Uᵀ at most (fewer where memory is short)
NULL_FRACTION = 0.01  # Stolfo et al.: ρ with k ≈ 0.01 · d_model bottom singular vectors of W_U (k = 40 for d 4096)
CLASSES = ("prediction", "suppression", "partition", "entropy", "token")


@dataclass(frozen=True)
class Thresholds:
    """Where each class begins; every number with its source (docs/atlas.md shows the distributions)."""

    kurtosis: float = 10.0  # prediction / suppression: Gurnee et al. `vocab_kurt > 10` (skew > 0 / < 0)
    partition_variance_x_d: float = 5.12  # partition: Gurnee et al. `vocab_var > 0.005` at d_model 1024, × d_model
    entropy_null_share: float = 0.5  # entropy: most of ‖w‖² in W_U's effective null space (Stolfo et al.'s ρ)
    entropy_norm_quantile: float = 0.9  # …and a large ‖w‖: above its layer's 90th percentile of neuron norms
    token_false_positives: float = 1.0  # token: the gap a Gaussian composition passes in this many neurons a model

    def partition_variance(self, d_model: int) -> float:
        return self.partition_variance_x_d / d_model

    def token_gap(self, n_neurons: int, d_vocab: int) -> float:
        """The stand-out gap (in σ) that a Gaussian composition exceeds in `token_false_positives` neurons of the
        model on expectation: the top spacings of V Gaussian values, in σ, are ≈ Exp(√(2 ln V)), so
        P(gap ≥ g) ≈ exp(−g √(2 ln V)) (checked by simulation: docs/atlas.md); solve N · P = token_false_positives."""
        return math.log(n_neurons / self.token_false_positives) / math.sqrt(2 * math.log(d_vocab))

    def describe(self, model: Model) -> dict[str, str]:
        d, n, v = model.weights.d_model, model.n_layers * model.d_mlp, model.d_vocab
        return {
            "prediction": f"kurtosis > {self.kurtosis:g} and skew > 0 (Gurnee et al. 2024: vocab_kurt > 10)",
            "suppression": f"kurtosis > {self.kurtosis:g} and skew < 0 (Gurnee et al. 2024: vocab_kurt > 10)",
            "partition": f"variance > {self.partition_variance(d):.3g} = {self.partition_variance_x_d:g} / d_model "
            "(Gurnee et al. 2024: vocab_var > 0.005 at d_model 1024, i.e. 5.12× a random direction's 1 / d_model)",
            "entropy": f"null-space share > {self.entropy_null_share:g} and ‖w‖ above its layer's "
            f"{self.entropy_norm_quantile:.0%} quantile (Stolfo et al. 2024: a large norm written into W_U's "
            f"effective null space, its {null_space_size(d)} bottom singular vectors)",
            "token": f"≤ {STANDOUT_MAX} top tokens stand ≥ {self.token_gap(n, v):.2f} σ above the next: the gap a "
            f"Gaussian composition of {v:,} tokens passes in {self.token_false_positives:g} of the model's {n:,} "
            "neurons on expectation (the post's stand-out gap; docs/atlas.md)",
        }


THRESHOLDS = Thresholds()
STAT_FIELDS = ("mean", "std", "skew", "kurtosis", "norm", "null_space_share")


# ---------------------------------------------------------------- inputs


def check_layers(model: Model, layers: Any = None) -> tuple[int, int]:
    """None (all), 'A-B', 'A', (A, B): an inclusive layer range inside the model, or a UserError saying so."""
    last = model.n_layers - 1
    if layers is None or (isinstance(layers, str) and not layers.strip()):
        return 0, last
    if isinstance(layers, str):
        match = re.fullmatch(r"\s*(-?\d+)\s*(?:[-–:]\s*(-?\d+))?\s*", layers)
        if not match:
            raise UserError(f"layers {layers!r} not understood; write a range like 0-{last} or one layer like {last}")
        first, stop = int(match.group(1)), int(match.group(2) if match.group(2) is not None else match.group(1))
    else:
        first, stop = (int(x) for x in layers)
    if first > stop:
        raise UserError(f"layers {first}-{stop}: the first layer is after the last; write it as {stop}-{first}")
    if not (0 <= first and stop <= last):
        span = str(first) if first == stop else f"{first}-{stop}"
        raise UserError(f"layers {span} are outside {model.name}, which has layers 0-{last}")
    return first, stop


def null_space_size(d_model: int) -> int:
    return max(1, math.ceil(NULL_FRACTION * d_model))


@torch.no_grad()
def null_space_basis(W_U: torch.Tensor, k: int, columns: int = GRAM_COLUMNS) -> torch.Tensor:
    """[d, k]: the left singular vectors of W_U [d, V] with the k smallest singular values (eigenvectors of
    W_U W_Uᵀ, accumulated in float64 over chunks of `columns` vocabulary columns: the bottom of the spectrum is
    what fp32 loses; a chunk's float64 copy is [d, columns])."""
    d = W_U.shape[0]
    gram = torch.zeros(d, d, dtype=torch.float64, device=W_U.device)
    for chunk in W_U.split(columns, dim=1):
        c = chunk.double()
        gram += c @ c.T
    _, vectors = torch.linalg.eigh(gram)  # ascending eigenvalues
    return vectors[:, :k].to(torch.float32)


# ---------------------------------------------------------------- the streamed pass


@torch.no_grad()
def compute_stats(
    model: Model, layers: Any = None, progress: Progress | None = None, rows_per_block: int | None = None
) -> dict[str, np.ndarray]:
    """Per neuron of the layer range (flat order, layer-major): the composition's moments, top/bottom tokens,
    ‖w‖ and null-space share. One pass over neurons × vocabulary through core.analyses.search.blocks."""
    first, last = check_layers(model, layers)
    m = model.d_mlp
    raw = neuron_vectors(model)[first * m : (last + 1) * m].float()  # [N, d]
    W_U = token_vectors(model, "W_U").float()  # [d, V]
    N, V = raw.shape[0], W_U.shape[1]
    norms = raw.norm(dim=1)
    unit = raw / norms.clamp_min(1e-30)[:, None]
    tokens = (W_U / W_U.norm(dim=0).clamp_min(1e-30)).contiguous()  # unit columns: scores are cosines
    token_mean = tokens.mean(dim=1)  # [d]: the composition's mean is unit · token_mean
    columns = memory.rows_for(model.weights, W_U.shape[0] * 8, cap=GRAM_COLUMNS)  # a column: d float64s
    basis = null_space_basis(W_U, null_space_size(W_U.shape[0]), columns)
    null_share = (unit @ basis).square().sum(dim=1)

    out = {
        "mean": torch.empty(N),
        "m2": torch.empty(N),
        "m3": torch.empty(N),
        "m4": torch.empty(N),
        "top_vals": torch.empty(N, KEEP),
        "top_ids": torch.empty(N, KEEP, dtype=torch.int32),
        "bottom_vals": torch.empty(N, TOP_K),
        "bottom_ids": torch.empty(N, TOP_K, dtype=torch.int32),
    }
    rows = rows_per_block or search.chunk_rows(model, copies=3)  # the scores, their squares, topk's temporaries
    squares: torch.Tensor | None = None
    for start, scores in search.blocks(unit, tokens, rows, progress):
        r, sl = scores.shape[0], slice(start, start + scores.shape[0])
        mu = unit[sl] @ token_mean  # [r]
        dev = scores.sub_(mu[:, None])  # in place: deviations from (almost exactly) the mean
        top_vals, top_ids = dev.topk(min(KEEP, V), dim=1)
        low_vals, low_ids = dev.topk(min(TOP_K, V), dim=1, largest=False)
        if squares is None:
            squares = torch.empty_like(scores)
        sq = torch.mul(dev, dev, out=squares[:r])
        e = dev.sum(dim=1) / V  # what fp32 left of the mean: the moments below are corrected for it exactly
        s2 = sq.sum(dim=1) / V
        s3 = torch.bmm(sq.unsqueeze(1), dev.unsqueeze(2)).view(r) / V
        s4 = torch.bmm(sq.unsqueeze(1), sq.unsqueeze(2)).view(r) / V
        out["mean"][sl] = (mu + e).cpu()
        out["m2"][sl] = (s2 - e * e).cpu()
        out["m3"][sl] = (s3 - 3 * e * s2 + 2 * e**3).cpu()
        out["m4"][sl] = (s4 - 4 * e * s3 + 6 * e * e * s2 - 3 * e**4).cpu()
        out["top_vals"][sl, : top_vals.shape[1]] = (top_vals + mu[:, None]).cpu()
        out["top_ids"][sl, : top_ids.shape[1]] = top_ids.int().cpu()
        out["bottom_vals"][sl, : low_vals.shape[1]] = (low_vals + mu[:, None]).cpu()
        out["bottom_ids"][sl, : low_ids.shape[1]] = low_ids.int().cpu()
    arrays = {name: value.numpy() for name, value in out.items()}
    arrays["norm"] = norms.cpu().numpy()
    arrays["null_space_share"] = null_share.cpu().numpy()
    arrays["layers"] = np.array([first, last])
    return arrays


def moments(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """mean, std, skew (Fisher–Pearson) and kurtosis (Pearson) from the central moments (float64)."""
    m2, m3, m4 = (arrays[k].astype(np.float64) for k in ("m2", "m3", "m4"))
    with np.errstate(divide="ignore", invalid="ignore"):
        skew = np.where(m2 > 0, m3 / m2**1.5, np.nan)
        kurt = np.where(m2 > 0, m4 / m2**2, np.nan)
    return {
        "mean": arrays["mean"].astype(np.float64),
        "std": np.sqrt(np.maximum(m2, 0)),
        "skew": skew,
        "kurtosis": kurt,
    }


def dense_moments(values: np.ndarray) -> dict[str, np.ndarray]:
    """The same four numbers from a dense [N, V] composition, in float64 (the tests' reference; = scipy.stats'
    skew and kurtosis(fisher=False) with bias=True)."""
    x = np.asarray(values, dtype=np.float64)
    mean = x.mean(axis=1)
    d = x - mean[:, None]
    m2, m3, m4 = (d**2).mean(axis=1), (d**3).mean(axis=1), (d**4).mean(axis=1)
    return {"mean": mean, "std": np.sqrt(m2), "skew": m3 / m2**1.5, "kurtosis": m4 / m2**2}


def standout(top_vals: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gap, count): the largest drop between consecutive top values in standard deviations, and how many tokens
    stand above it (1..STANDOUT_MAX)."""
    drops = (top_vals[:, :-1] - top_vals[:, 1:]) / np.where(std > 0, std, np.nan)[:, None]
    drops = np.nan_to_num(drops, nan=0.0)
    where = drops.argmax(axis=1)
    return drops[np.arange(len(drops)), where], where + 1


# ---------------------------------------------------------------- classes and labels


def classify(model: Model, arrays: dict[str, np.ndarray], thresholds: Thresholds = THRESHOLDS) -> dict[str, np.ndarray]:
    """One boolean array per class (a neuron may be in none or several), over the neurons of `arrays`."""
    mo = moments(arrays)
    first, last = (int(x) for x in arrays["layers"])
    gap, _ = standout(arrays["top_vals"], mo["std"])
    norm, share = arrays["norm"], arrays["null_space_share"]
    per_layer = norm.reshape(last - first + 1, model.d_mlp)
    norm_cut = np.repeat(np.quantile(per_layer, thresholds.entropy_norm_quantile, axis=1), model.d_mlp)
    kurt, skew = np.nan_to_num(mo["kurtosis"]), np.nan_to_num(mo["skew"])
    return {
        "prediction": (kurt > thresholds.kurtosis) & (skew > 0),
        "suppression": (kurt > thresholds.kurtosis) & (skew < 0),
        "partition": mo["std"] ** 2 > thresholds.partition_variance(model.weights.d_model),
        "entropy": (share > thresholds.entropy_null_share) & (norm > norm_cut),
        "token": gap >= thresholds.token_gap(model.n_layers * model.d_mlp, model.d_vocab),
    }


def _word(token: str) -> str:
    return token.strip().lower()


def _is_punctuation(token: str) -> bool:
    text = token.strip()
    return bool(text) and all(unicodedata.category(ch)[0] in "PS" or ch in string.punctuation for ch in text)


def _is_number(token: str) -> bool:
    text = token.strip()
    return any(ch.isdigit() for ch in text) and not any(ch.isalpha() for ch in text)


def surface_label(tokens: list[str]) -> str:
    """What the top tokens share on the surface: one word in several spellings (≥ 3 of them, e.g. ' an'/'An'/
    ' An'), and properties all of them have: a leading space, capitalisation, digits, punctuation ('' if none)."""
    if not tokens:
        return ""
    parts = []
    words = Counter(w for w in map(_word, tokens) if any(ch.isalnum() for ch in w))
    if words:
        word, count = words.most_common(1)[0]
        if count >= 3:
            parts.append(f"one word: {word}")
    checks = {
        "leading space": lambda t: t.startswith(" "),
        "capitalised": lambda t: t.strip()[:1].isupper(),
        "digits": _is_number,
        "punctuation": _is_punctuation,
    }
    parts += [name for name, check in checks.items() if all(check(t) for t in tokens)]
    return " · ".join(parts)


# ---------------------------------------------------------------- the result


@dataclass
class Atlas:
    """Every neuron of a layer range: one row per neuron in `frame` (sorted by layer, neuron)."""

    model: str
    layers: tuple[int, int]  # inclusive
    info: dict[str, Any]  # processing, congruence formula, null-space size, thresholds
    frame: pd.DataFrame  # layer, neuron, name, mean, std, skew, kurtosis, norm, null_space_share, gap, n_standout,
    # classes ("prediction, token" or ""), label, top_tokens, bottom_tokens (lists of strings), top_token
    n_layers: int = 0  # the model's
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def counts(self) -> dict[str, list[int]]:
        """{class: [count per layer of the range]}."""
        first, last = self.layers
        out = {}
        for name in CLASSES:
            chosen = self.frame[self.frame[name]]
            per = chosen.groupby("layer").size().reindex(range(first, last + 1), fill_value=0)
            out[name] = [int(x) for x in per.tolist()]
        return out

    def ranked(self, top_k: int | None = None) -> pd.DataFrame:
        """Neurons sorted by kurtosis, highest first (NaN last); the first top_k, or all."""
        order = self.frame.sort_values("kurtosis", ascending=False, na_position="last", kind="stable")
        return order if top_k is None else order.head(top_k)

    def to_json(self, top_k: int | None = None, rows: pd.DataFrame | None = None) -> dict:
        """The CLI's JSON: model block, counts, neurons by kurtosis (the first top_k; or the given rows of frame)."""
        keys = ["layer", "neuron", "mean", "std", "skew", "kurtosis", "norm", "null_space_share", "gap", "n_standout"]
        neurons = [
            {
                **{k: row[k] for k in keys},
                "classes": [c for c in CLASSES if row[c]],
                "label": row["label"],
                "top_tokens": list(row["top_tokens"]),
                "bottom_tokens": list(row["bottom_tokens"]),
            }
            for _, row in (self.ranked(top_k) if rows is None else rows).iterrows()
        ]
        return to_jsonable(
            {"model": {**self.info, "layers": list(self.layers)}, "counts": self.counts(), "neurons": neurons}
        )


def direction(model: Model) -> str:
    """The neuron's output direction as congruence.neuron_vectors gives it (behind a post-MLP norm: ⊙ its weight)."""
    return "W_out[L, n] ⊙ w_post[L]" if model.weights.mlp_post_w is not None else "W_out[L, n]"


def info(model: Model, layers: tuple[int, int]) -> dict[str, Any]:
    return {
        "name": model.name,
        "processing": model.processing,
        "composition": f"cos({direction(model)}, W_U[:, t]) over all {model.d_vocab:,} tokens",
        "moments": "population moments over the vocabulary; skew Fisher–Pearson, kurtosis Pearson (Gaussian = 3)",
        "null_space": {
            "k": null_space_size(model.weights.d_model),
            "of": model.weights.d_model,
            "why": f"the W_U left singular vectors with the k smallest singular values, k = ceil({NULL_FRACTION} · "
            "d_model) as Stolfo et al. 2024 (k = 40 for d_model 4096); a random direction puts k / d_model there",
        },
        "thresholds": THRESHOLDS.describe(model),
        "token_gap": THRESHOLDS.token_gap(model.n_layers * model.d_mlp, model.d_vocab),
        "layers": list(layers),
    }


def build(model: Model, arrays: dict[str, np.ndarray]) -> Atlas:
    """The Atlas of computed (or cached) arrays: moments, classes, token strings and labels."""
    first, last = (int(x) for x in arrays["layers"])
    mo = moments(arrays)
    gap, count = standout(arrays["top_vals"], mo["std"])
    classes = classify(model, arrays)
    top_ids, bottom_ids = arrays["top_ids"][:, :TOP_K], arrays["bottom_ids"]
    unique = np.unique(np.concatenate([top_ids.ravel(), bottom_ids.ravel()]))
    text = dict(zip(unique.tolist(), (model.token_str(int(i)) for i in unique)))
    tops = [[text[int(i)] for i in row] for row in top_ids]
    bottoms = [[text[int(i)] for i in row] for row in bottom_ids]
    flat = np.arange(len(gap))
    layer, neuron = flat // model.d_mlp + first, flat % model.d_mlp
    frame = pd.DataFrame(
        {
            "layer": layer,
            "neuron": neuron,
            "name": [label(int(l), int(n)) for l, n in zip(layer, neuron)],
            **mo,
            "norm": arrays["norm"].astype(np.float64),
            "null_space_share": arrays["null_space_share"].astype(np.float64),
            "gap": gap,
            "n_standout": count,
            **classes,
        }
    )
    frame["classes"] = [", ".join(c for c in CLASSES if classes[c][i]) for i in range(len(frame))]
    frame["label"] = [surface_label(t) for t in tops]
    frame["top_token"] = [t[0] if t else "" for t in tops]
    frame["top_tokens"] = tops
    frame["bottom_tokens"] = bottoms
    return Atlas(model.name, (first, last), info(model, (first, last)), frame, model.n_layers, arrays)


# ---------------------------------------------------------------- cache


def _cache_path(model: Model, layers: tuple[int, int]):
    params = {"version": VERSION, "processing": model.processing, "layers": list(layers), "keep": KEEP}
    params["direction"] = direction(model)
    return cache.key_path(model.fingerprint, "atlas", params)


def _cache_on() -> bool:
    return os.environ.get("TNE_NO_CACHE") != "1"


def is_cached(model: Model, layers: Any = None) -> bool:
    """True when this range (or the whole model's atlas, which holds it) is on disk."""
    span = check_layers(model, layers)
    whole = (0, model.n_layers - 1)
    return _cache_on() and (_cache_path(model, span).exists() or _cache_path(model, whole).exists())


def _slice(model: Model, arrays: dict[str, np.ndarray], span: tuple[int, int]) -> dict[str, np.ndarray]:
    first, last = (int(x) for x in arrays["layers"])
    rows = slice((span[0] - first) * model.d_mlp, (span[1] - first + 1) * model.d_mlp)
    out = {k: v[rows] for k, v in arrays.items() if k != "layers"}
    out["layers"] = np.array(span)
    return out


def stats(
    model: Model, layers: Any = None, progress: Progress | None = None, use_cache: bool = True
) -> dict[str, np.ndarray]:
    """compute_stats through the disk cache; a range is read out of the whole model's atlas when that is cached."""
    span = check_layers(model, layers)
    whole = (0, model.n_layers - 1)
    fields = {"mean", "m2", "m3", "m4", "top_vals", "top_ids", "bottom_vals", "bottom_ids", "norm"}
    fields |= {"null_space_share", "layers"}
    if use_cache and _cache_on():
        for source in dict.fromkeys([span, whole]):
            hit = cache.load(_cache_path(model, source))
            if hit is not None and set(hit) == fields:
                if progress:
                    progress(1, 1)
                return hit if source == span else _slice(model, hit, span)
    arrays = compute_stats(model, span, progress)
    if use_cache and _cache_on():
        cache.save(_cache_path(model, span), arrays)
    return arrays


def atlas(model: Model, layers: Any = None, progress: Progress | None = None, use_cache: bool = True) -> Atlas:
    """The atlas of a layer range (default: every layer), cached on disk like the searches. A whole-model atlas
    also leaves its class counts under the model's name (`summary`), for comparing models without loading them."""
    result = build(model, stats(model, layers, progress, use_cache))
    if use_cache and _cache_on() and result.layers == (0, model.n_layers - 1):
        counts = np.array([result.counts()[name] for name in CLASSES], dtype=np.int64)
        cache.save(_summary_path(model.name, model.processing["name"]), {"counts": counts})
    return result


def _summary_path(name: str, processing: str):
    return cache.key_path(f"name:{name}", "atlas-summary", {"version": VERSION, "processing": processing})


def summary(name: str, processing: str = "tl-default") -> dict[str, list[int]] | None:
    """{class: [count per layer]} of the last whole-model atlas of `name`, or None when none was computed here."""
    if not _cache_on():
        return None
    hit = cache.load(_summary_path(name, processing))
    if hit is None or hit.get("counts") is None or hit["counts"].shape[0] != len(CLASSES):
        return None
    return {cls: [int(x) for x in row] for cls, row in zip(CLASSES, hit["counts"])}


def neuron_row(result: Atlas, layer: int, neuron: int) -> pd.Series | None:
    """One neuron's row (moments, classes, label), or None when the atlas does not cover its layer."""
    first, last = result.layers
    if not first <= layer <= last:
        return None
    return result.frame.iloc[(layer - first) * (len(result.frame) // (last - first + 1)) + neuron]


def cached_neuron(model: Model, layer: int, neuron: int) -> dict[str, Any] | None:
    """One neuron's atlas entry (moments, classes, label, top/bottom tokens) when the whole model's atlas (or its
    layer's) is on disk; None otherwise: this never starts a pass (for the Neuron page)."""
    if not _cache_on() or not 0 <= layer < model.n_layers or not 0 <= neuron < model.d_mlp:
        return None
    for span in dict.fromkeys([(0, model.n_layers - 1), (layer, layer)]):
        hit = cache.load(_cache_path(model, span))
        if hit is not None and "layers" in hit:
            row = neuron_row(build(model, _slice(model, hit, (layer, layer))), layer, neuron)
            if row is None:
                return None
            keys = ["mean", "std", "skew", "kurtosis", "norm", "null_space_share", "gap", "n_standout", "label"]
            return {
                **{k: row[k] for k in keys},
                "classes": [c for c in CLASSES if row[c]],
                "top_tokens": list(row["top_tokens"]),
                "bottom_tokens": list(row["bottom_tokens"]),
            }
    return None
