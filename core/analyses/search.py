"""Token-neuron searches over every neuron × every token (the post's §7–§8), streamed and cached.

The full congruence matrix (GPT-2 large: 184,320 neurons × 50,257 tokens, 37 GB in fp32) is never built: it is
computed in blocks of neurons, and each block updates running top-2s per neuron (over tokens) and per token
(over neurons). From those:
- stand-out search: for every token, its most congruent neuron and the gap to the second; ranked by gap;
- mutual-exclusive search: pairs where the neuron's top token is t AND t's top neuron is the neuron;
  score = (neuron's top-1 − top-2 token congruence) × (token's top-1 − top-2 neuron congruence).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, cast, get_args

import numpy as np
import pandas as pd
import torch

from core import cache
from core.analyses.congruence import label, neuron_vectors, token_vectors
from core.engine import memory
from core.engine.model import Model
from core.errors import UserError
from core.hosting import check_top_k, limits
from core.jsonable import to_jsonable
from core.progress import Progress

Kind = Literal["standout", "mutual"]
KINDS: tuple[Kind, ...] = get_args(Kind)
KIND_HELP: dict[Kind, str] = {
    "standout": "for every token, its most congruent neuron; ranked by the gap to the token's second neuron "
    "(score = gap_neuron)",
    "mutual": "pairs where the neuron's top token is t AND t's top neuron is the neuron; score = the neuron's "
    "top-2 token gap × the token's top-2 neuron gap",
}
RESULT_COLUMNS = ["layer", "neuron", "token", "id", "congruence", "score", "gap_token", "gap_neuron"]
TOKEN_STRIP = 256


@dataclass
class Tables:
    """Running top-2s. Neurons are flat indices layer * d_mlp + n."""

    neuron_top_ids: np.ndarray  # [N, 2] token ids, most congruent first
    neuron_top_vals: np.ndarray  # [N, 2]
    token_top_ids: np.ndarray  # [V, 2] flat neuron ids
    token_top_vals: np.ndarray  # [V, 2]

    def arrays(self) -> dict[str, np.ndarray]:
        return dict(self.__dict__)


def chunk_rows(model: Model, copies: int = 2) -> int:
    """Neurons per block: the block's `copies` fp32 [rows, V] buffers (the scores, and a caller's working copy or
    the fp32 cast of half-precision scores) fit the memory budget (core.engine.memory); and, as speed goes, two
    such buffers within 512 MB on CPU, where bigger blocks gain nothing (4 GB on CUDA), within a hosted demo's
    TNE_MAX_BLOCK_MB (K searches may run at once), and 8192 rows. Little memory gets smaller blocks (≥ 1 row)."""
    cap = (4 << 30) if model.device.type == "cuda" else (512 << 20)
    block_mb = limits().max_block_mb
    if block_mb is not None:
        cap = min(cap, block_mb << 20)
    row = model.d_vocab * 4  # one fp32 row of scores
    return memory.rows_for(model.weights, row * copies, cap=min(8192, max(1, cap // (row * 2))))


def merge_top2(vals: torch.Tensor, ids: torch.Tensor, new_vals: torch.Tensor, new_ids: torch.Tensor):
    """Running top-2 along dim 0 ([2, V] each, best first) merged with a strip's top-2, elementwise
    (a topk over the stacked four rows costs more than the strip's own reduction)."""
    keep = vals[0] >= new_vals[0]  # the running best stays best
    best = torch.where(keep, vals[0], new_vals[0])
    best_id = torch.where(keep, ids[0], new_ids[0])
    # runner-up: if the running best stays, max(running second, new best); else max(running best, new second)
    cand_a_val, cand_a_id = torch.where(keep, vals[1], vals[0]), torch.where(keep, ids[1], ids[0])
    cand_b_val, cand_b_id = torch.where(keep, new_vals[0], new_vals[1]), torch.where(keep, new_ids[0], new_ids[1])
    take_a = cand_a_val >= cand_b_val
    second = torch.where(take_a, cand_a_val, cand_b_val)
    second_id = torch.where(take_a, cand_a_id, cand_b_id)
    return torch.stack([best, second]), torch.stack([best_id, second_id])


def blocks(
    neurons: torch.Tensor, vectors: torch.Tensor, rows: int, progress: Progress | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """The one streamed pass over neurons × vocabulary that every whole-model analysis shares (the searches here,
    the atlas in core.analyses.atlas): yields (start, scores) where scores = (neurons[start:start + rows] @ vectors) in
    fp32, [rows, V], then reports progress(done, total) once the caller has consumed the block.

    The [rows, V] buffer is reused from block to block (no fresh allocation, no page faults per block): a caller
    that keeps scores past its loop iteration must copy them; it may overwrite them in place.
    """
    N, V = neurons.shape[0], vectors.shape[1]
    starts = range(0, N, rows)
    buffer = torch.empty(min(rows, N), V, device=vectors.device) if vectors.dtype == torch.float32 else None
    for i, start in enumerate(starts):
        block = neurons[start : start + rows]
        if buffer is not None and block.dtype == torch.float32:
            scores = torch.matmul(block, vectors, out=buffer[: block.shape[0]])
        else:  # half-precision weights: the matmul in their dtype, the reductions in fp32
            scores = (block @ vectors).float()
        yield start, scores
        if progress:
            progress(i + 1, len(starts))


@torch.no_grad()
def compute_tables(
    model: Model, matrix: str = "W_U", progress: Progress | None = None, rows_per_block: int | None = None
) -> Tables:
    """One streamed pass over the neuron × token congruence matrix."""
    vectors = token_vectors(model, matrix).contiguous()  # [d, V]
    neurons = neuron_vectors(model)  # [N, d]
    N, V = neurons.shape[0], vectors.shape[1]
    rows = rows_per_block or chunk_rows(model)
    neuron_vals = torch.empty(N, 2, device=model.device)
    neuron_ids = torch.empty(N, 2, dtype=torch.long, device=model.device)
    token_vals = torch.full((2, V), -torch.inf, device=model.device)
    token_ids = torch.zeros(2, V, dtype=torch.long, device=model.device)
    for start, scores in blocks(neurons, vectors, rows, progress):
        stop = start + scores.shape[0]
        neuron_vals[start:stop], neuron_ids[start:stop] = scores.topk(2, dim=1)
        # Top-2 over neurons, per token, in strips of rows: torch reduces a [256, V] strip along dim 0 about
        # 2.5x faster per element than the whole [rows, V] block on this CPU (measured; see bench/congruence.py).
        for sub in range(0, stop - start, TOKEN_STRIP):
            strip = scores[sub : sub + TOKEN_STRIP]
            strip_vals, strip_ids = strip.topk(min(2, strip.shape[0]), dim=0)
            if strip_vals.shape[0] == 1:  # a one-neuron strip
                strip_vals = torch.cat([strip_vals, torch.full_like(strip_vals, -torch.inf)])
                strip_ids = torch.cat([strip_ids, strip_ids])
            token_vals, token_ids = merge_top2(token_vals, token_ids, strip_vals, strip_ids + start + sub)
    return Tables(
        neuron_ids.int().cpu().numpy(),
        neuron_vals.cpu().numpy(),
        token_ids.T.int().cpu().numpy().copy(),
        token_vals.T.cpu().numpy().copy(),
    )


def _cache_path(model: Model, matrix: str):
    return cache.key_path(model.fingerprint, "search-tables", {"matrix": matrix, "processing": model.processing})


def is_cached(model: Model, matrix: str = "W_U") -> bool:
    """True when the tables for this model and matrix are on disk (a search will be read back, not computed)."""
    return os.environ.get("TNE_NO_CACHE") != "1" and _cache_path(model, matrix).exists()


def tables(model: Model, matrix: str = "W_U", progress: Progress | None = None, use_cache: bool = True) -> Tables:
    """compute_tables, through the disk cache (keyed by model fingerprint, matrix and processing)."""
    token_vectors(model, matrix)  # validates matrix
    path = _cache_path(model, matrix)
    if use_cache and os.environ.get("TNE_NO_CACHE") != "1":
        hit = cache.load(path)
        if hit is not None and set(hit) == set(Tables.__dataclass_fields__):
            if progress:
                progress(1, 1)
            return Tables(**hit)
    result = compute_tables(model, matrix, progress)
    if use_cache:
        cache.save(path, result.arrays())
    return result


def _frame(
    model: Model,
    flat_neurons: np.ndarray,
    token_ids: np.ndarray,
    congruence: np.ndarray,
    gap_token: np.ndarray,
    gap_neuron: np.ndarray,
    score: np.ndarray,
    top_k: int,
) -> pd.DataFrame:
    order = np.argsort(-score, kind="stable")[:top_k]
    layers, neurons = flat_neurons[order] // model.d_mlp, flat_neurons[order] % model.d_mlp
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(order) + 1),
            "layer": layers.astype(int),
            "neuron": neurons.astype(int),
            "label": [label(int(l), int(n)) for l, n in zip(layers, neurons)],
            "token": [model.token_str(int(t)) for t in token_ids[order]],
            "id": token_ids[order].astype(int),
            "congruence": congruence[order],
            "gap_token": gap_token[order],
            "gap_neuron": gap_neuron[order],
            "score": score[order],
        }
    )


def standout(model: Model, t: Tables, top_k: int = 50) -> pd.DataFrame:
    """Every token's most congruent neuron, ranked by the gap to the token's second neuron (score = gap_neuron)."""
    flat = t.token_top_ids[:, 0].astype(np.int64)
    gap_neuron = t.token_top_vals[:, 0] - t.token_top_vals[:, 1]
    gap_token = t.neuron_top_vals[flat, 0] - t.neuron_top_vals[flat, 1]  # that neuron's own top-2 token gap
    return _frame(model, flat, np.arange(len(flat)), t.token_top_vals[:, 0], gap_token, gap_neuron, gap_neuron, top_k)


def mutual(model: Model, t: Tables, top_k: int = 50) -> pd.DataFrame:
    """Pairs that choose each other; score = neuron's top-2 token gap × token's top-2 neuron gap."""
    flat = np.arange(t.neuron_top_ids.shape[0])
    top_token = t.neuron_top_ids[:, 0].astype(np.int64)
    chosen = t.token_top_ids[top_token, 0] == flat
    flat, top_token = flat[chosen], top_token[chosen]
    gap_token = t.neuron_top_vals[flat, 0] - t.neuron_top_vals[flat, 1]
    gap_neuron = t.token_top_vals[top_token, 0] - t.token_top_vals[top_token, 1]
    return _frame(
        model, flat, top_token, t.neuron_top_vals[flat, 0], gap_token, gap_neuron, gap_token * gap_neuron, top_k
    )


def check_kind_and_top_k(model: Model, kind: str, top_k: int) -> Kind:
    if kind not in KINDS:
        raise UserError(f"search kind {kind!r} unknown; use {' or '.join(KINDS)}")
    check_top_k(top_k, model.d_vocab)
    return cast(Kind, kind)


def ranked(model: Model, kind: Kind, t: Tables, top_k: int) -> pd.DataFrame:
    """The search of `kind` over tables computed here or on Ray."""
    return (standout if kind == "standout" else mutual)(model, t, top_k)


def search(
    model: Model, kind: str, matrix: str = "W_U", top_k: int = 50, progress: Progress | None = None
) -> pd.DataFrame:
    checked = check_kind_and_top_k(model, kind, top_k)
    return ranked(model, checked, tables(model, matrix, progress), top_k)


def to_json(kind: Kind, frame: pd.DataFrame) -> dict:
    """A search's JSON (the CLI's and the Search page's download): the kind, its score and the ranked pairs."""
    return to_jsonable({"kind": kind, "score": KIND_HELP[kind], "results": frame[RESULT_COLUMNS]})
