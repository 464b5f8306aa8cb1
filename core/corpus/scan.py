"""Corpus scan: a neuron's activation vs the model's top-1 prediction, token statistics, max-activating examples.

The post's corpus check (§5): over a real corpus, bin the neuron's activation and plot, per bin, the share of
positions where the model's top-1 prediction is the target token. Plus totals (how often the target is the true
next token vs how often the model predicts it), correlation of activation with the target's logit and
probability, and the top-k max-activating positions with their context (Neuroscope style).

Documents are tokenized one by one (no special tokens), cut into contexts of `ctx` tokens, each given the model's
BOS convention; the BOS position itself is not counted. Batches are written to disk as they finish (atomic
`.npz` parts keyed by model, corpus and parameters), so an interrupted scan resumes where it stopped and a
finished one is read back instead of recomputed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core import cache
from core.analyses.congruence import check_neuron, label
from core.corpus.sources import Corpus, load_corpus
from core.engine import forward as fw
from core.engine import memory
from core.engine.model import Model, cache_root
from core.errors import UserError
from core.hosting import limits
from core.progress import Progress

DEFAULT_CTX = 256
# Positions unembedded at once: a scan needs only the target's logit and probability and the top-1 at each position,
# so it never holds a whole batch's fp32 logits over the vocabulary (Gemma 3: 262,144 per position), only as many
# rows as LOGIT_BYTES hold (341 on the embedded model, 64 on Gemma 3), and at least LOGIT_ROWS.
LOGIT_ROWS = 32
LOGIT_BYTES = 64 << 20
# Tokens per scan forward at most (the memory budget may allow fewer): on 2 CPU cores 8 contexts of 256 already keep
# the matmuls efficient; a GPU wants far more rows per launch.
FORWARD_TOKENS = {"cpu": 2048, "cuda": 65536}
MAX_BINS = 1000
PART_FIELDS = ("chunk", "doc", "position", "token", "next", "top1", "logit", "prob", "act")


@dataclass(frozen=True)
class ScanSpec:
    """What a corpus scan reads and how it is summarised: the one set of inputs of `scan`, `records` and
    `core.corpus.distributed.ray_scan` (the CLI, the pages and reproduce build it).

    neurons: (layer, neuron) pairs; target: the token id whose top-1 share is binned; dataset: None = the bundled
    corpus, else a file, folder or hub dataset name (core.corpus.sources); ctx: None = min(256, the model's context).
    """

    neurons: tuple[tuple[int, int], ...]
    target: int
    dataset: str | None = None
    max_tokens: int = 20_000
    bin_width: float = 0.5
    top_examples: int = 20
    window: int = 12
    ctx: int | None = None
    batch_size: int = 8
    spread: bool = False  # contexts spread evenly over the corpus (as dashboards and pairs read it), not its start

    def __post_init__(self) -> None:
        object.__setattr__(self, "neurons", tuple((int(l), int(n)) for l, n in self.neurons))


@dataclass
class NeuronScan:
    layer: int
    neuron: int
    bins: pd.DataFrame  # lo, hi, count, top1_share, true_next_share
    totals: dict  # positions, target_true_next, target_top1
    correlation: dict  # Pearson r of activation with the target's logit and probability
    examples: pd.DataFrame  # activation, doc, position, tokens, token_activations (highest first)

    @property
    def label(self) -> str:
        return label(self.layer, self.neuron)


@dataclass
class ScanResult:
    target: int
    target_token: str
    corpus: str
    positions: int
    settings: dict
    neurons: dict[str, NeuronScan] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "target": {"token": self.target_token, "id": self.target},
            "corpus": self.corpus,
            "positions": self.positions,
            "settings": self.settings,
            "neurons": {
                name: {
                    "layer": s.layer,
                    "neuron": s.neuron,
                    "bins": s.bins.to_dict("records"),
                    "totals": s.totals,
                    "correlation": s.correlation,
                    "examples": s.examples.to_dict("records"),
                }
                for name, s in self.neurons.items()
            },
        }


def context_bos(model: Model) -> list[int]:
    """What starts every corpus context: the model's BOS convention, as its prompts get it — TransformerLens's
    prepended BOS for GPT-2, the tokenizer's own for models whose tokenizer adds one (Gemma's <bos>), else none
    (SmolLM2). That position is not counted."""
    if model.prepend_bos:
        return [model.bos_id] if model.bos_id is not None else []
    lead = model.prompt_ids("")
    return lead[:1] if lead and model.bos_id is not None and lead[0] == model.bos_id else []


def cut(
    model: Model, texts: list[str], ctx: int, max_tokens: int, spread: bool = False
) -> list[tuple[int, int, list[int]]]:
    """Contexts of up to `ctx` tokens with the BOS convention applied, up to max_tokens counted positions:
    (doc index, index in the document of the context's first token, token ids).

    spread=False: the corpus's first max_tokens positions, document after document (what a scan reads).
    spread=True: contexts chosen evenly over the whole corpus (every document's cut, then every k-th context),
    so a budget smaller than the corpus samples every part of it instead of its first documents."""
    bos = context_bos(model)
    body = ctx - len(bos)
    if not spread:
        out, budget = [], max_tokens
        for doc, text in enumerate(texts):
            ids = model.encode(text)
            for start in range(0, len(ids), body):
                piece = ids[start : start + min(body, budget)]
                if len(piece) < 2:
                    continue
                out.append((doc, start, bos + piece))
                budget -= len(piece)
                if budget <= 0:
                    return out
        return out
    encoded = model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    every = [
        (doc, start, len(ids[start : start + body]))
        for doc, ids in enumerate(encoded)
        for start in range(0, len(ids), body)
        if len(ids[start : start + body]) >= 2
    ]
    total = sum(n for _, _, n in every)
    if total > max_tokens:  # evenly spaced contexts, enough to fill the budget (short ones at documents' ends)
        want = min(len(every), -(-max_tokens * len(every) // total))
        while True:
            picks = np.unique(np.linspace(0, len(every) - 1, want).round().astype(int))
            got = sum(every[i][2] for i in picks)
            if got >= max_tokens or want >= len(every):
                break
            want = min(len(every), want + -(-(max_tokens - got) // body) + 1)
        every = [every[i] for i in picks]
    out, budget = [], max_tokens
    for doc, start, n in every:
        take = min(n, budget)
        if take < 2:
            break
        out.append((doc, start, bos + list(encoded[doc][start : start + take])))
        budget -= take
        if budget <= 0:
            break
    return out


def chunks(model: Model, texts: list[str], ctx: int, max_tokens: int) -> list[tuple[int, list[int]]]:
    """(doc index, token ids with the BOS convention applied) contexts, up to max_tokens counted positions."""
    return [(doc, ids) for doc, _, ids in cut(model, texts, ctx, max_tokens)]


def batch_tokens(model: Model, contexts: list[list[int]]) -> torch.Tensor:
    """Contexts as one right-padded [B, P] batch on the model's device (causal attention keeps real positions
    exact)."""
    tokens = torch.zeros(len(contexts), max(len(ids) for ids in contexts), dtype=torch.long)
    for row, ids in enumerate(contexts):
        tokens[row, : len(ids)] = torch.tensor(ids)
    return tokens.to(model.device)


@torch.no_grad()
def top1(model: Model, resid: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """The model's top-1 prediction at each of resid's [n, d] positions, unembedded `rows` at a time (default
    LOGIT_ROWS): never a whole batch's logits over the vocabulary (Gemma 3: 262,144 per position)."""
    rows = rows or LOGIT_ROWS
    out = torch.empty(resid.shape[0], dtype=torch.long, device=resid.device)
    for start in range(0, resid.shape[0], rows):
        out[start : start + rows] = fw.unembed(model.weights, resid[start : start + rows]).argmax(-1)
    return out


def _scan_dir(model: Model, corpus: Corpus, spec: ScanSpec) -> Path:
    """The scan's parts folder: keyed by what changes the records (not by the summary's bin width or examples)."""
    params = {
        "model": model.fingerprint,
        "corpus": corpus.identity,
        "neurons": spec.neurons,
        "target": spec.target,
        "ctx": spec.ctx,
        "max_tokens": spec.max_tokens,
        "batch": spec.batch_size,
        "version": 2,  # 2: contexts start with the tokenizer's own BOS where it adds one (Gemma)
        **({"spread": True} if spec.spread else {}),  # absent when False: scans cached before it stay valid
    }
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:24]
    return cache_root() / "scans" / digest


def logit_rows(model: Model) -> int:
    """Positions unembedded at once by a scan: as many as LOGIT_BYTES of fp32 logits hold (a row also needs the
    softmax's temporaries: 3 copies counted against the memory budget), at least LOGIT_ROWS. Fewer, smaller
    unembeddings cost more than the logits they save: each reads all of W_U (113 MB on the embedded model), and
    32-row chunks made the top-1 ~60 % dearer than 256-row ones here."""
    row = 4 * model.d_vocab
    return memory.rows_for(model.weights, 3 * row, floor=LOGIT_ROWS, cap=max(LOGIT_ROWS, LOGIT_BYTES // row))


def forward_contexts(model: Model, ctx: int, layers: int) -> int:
    """Contexts of `ctx` tokens one scan forward holds: what fits the memory budget (core.engine.memory: a token's
    activations at the forward's peak plus `layers` recorded [d_mlp] activations), at most FORWARD_TOKENS of its
    device (bigger batches gain no matmul efficiency) and at least one."""
    w = model.weights
    per_token = memory.forward_bytes_per_token(w, ctx) + layers * w.d_mlp * memory.element_bytes(w)
    cap = FORWARD_TOKENS["cuda" if model.device.type == "cuda" else "cpu"] // ctx
    return memory.rows_for(w, per_token * ctx, cap=max(1, cap))


@torch.no_grad()
def _run_batch(
    model: Model, batch: list[tuple[int, list[int]]], first_chunk: int, neurons: list[tuple[int, int]], target: int
) -> dict[str, np.ndarray]:
    """Per counted position: chunk, doc, position, token, next token (-1 at a context's end), top-1 prediction,
    target logit and probability, and each neuron's activation. One forward over the batch; the counted positions
    of every context are gathered into one [T, d] block and unembedded logit_rows at a time across contexts."""
    w = model.weights
    skip = len(context_bos(model))
    tokens = batch_tokens(model, [ids for _, ids in batch])
    B, P = tokens.shape
    lengths = [len(ids) for _, ids in batch]
    flat = torch.cat([torch.arange(skip, n) + row * P for row, n in enumerate(lengths)]).to(model.device)
    layers = sorted({layer for layer, _ in neurons})
    trace = fw.run(w, tokens, record={"mlp_post"}, layers=range(layers[0], layers[-1] + 1))
    posts = {layer: trace.mlp_post[layer - layers[0]].reshape(B * P, -1).index_select(0, flat) for layer in layers}
    act = torch.stack([posts[layer][:, unit] for layer, unit in neurons], -1).float().cpu().numpy()
    final = trace.resid_final
    assert final is not None  # a run over all layers records it
    resid = final.reshape(B * P, -1).index_select(0, flat)
    del trace, posts, final
    count = resid.shape[0]
    top = torch.empty(count, dtype=torch.long, device=resid.device)
    logit = torch.empty(count, device=resid.device)
    prob = torch.empty(count, device=resid.device)
    rows = logit_rows(model)
    for start in range(0, count, rows):
        logits = fw.unembed(w, resid[start : start + rows]).float()  # [≤ rows, V]
        top[start : start + rows] = logits.argmax(-1)
        logit[start : start + rows] = logits[:, target]
        prob[start : start + rows] = (logits[:, target] - logits.logsumexp(-1)).exp()
    counted = np.array([n - skip for n in lengths])
    return {
        "chunk": np.repeat(first_chunk + np.arange(B), counted),
        "doc": np.repeat(np.array([doc for doc, _ in batch], dtype=np.int64), counted),
        "position": np.concatenate([np.arange(skip, n) for n in lengths]),
        "token": np.concatenate([np.asarray(ids[skip:], dtype=np.int64) for _, ids in batch]),
        "next": np.concatenate([np.asarray(ids[skip + 1 :] + [-1], dtype=np.int64) for _, ids in batch]),
        "top1": top.cpu().numpy(),
        "logit": logit.cpu().numpy(),
        "prob": prob.cpu().numpy(),
        "act": act,
    }


def _bins(act: np.ndarray, top1: np.ndarray, true_next: np.ndarray, width: float) -> pd.DataFrame:
    lo_edge = np.floor(act.min() / width) * width
    hi_edge = np.ceil(act.max() / width) * width
    if (hi_edge - lo_edge) / width > MAX_BINS:
        raise UserError(
            f"bin width {width:g} cuts the activations ({act.min():.2f}..{act.max():.2f}) into more than "
            f"{MAX_BINS} bins; use a width of at least {(hi_edge - lo_edge) / MAX_BINS:.3g}"
        )
    edges = np.arange(lo_edge, hi_edge + width * 0.5, width)
    if len(edges) < 2:
        edges = np.array([lo_edge, lo_edge + width])
    index = np.clip(np.digitize(act, edges[1:-1]), 0, len(edges) - 2)
    frame = pd.DataFrame({"bin": index, "top1": top1, "true_next": true_next})
    grouped = frame.groupby("bin").agg(
        count=("top1", "size"), top1_share=("top1", "mean"), true_next_share=("true_next", "mean")
    )
    grouped = grouped.reindex(range(len(edges) - 1), fill_value=0)
    grouped.insert(0, "hi", edges[1:])
    grouped.insert(0, "lo", edges[:-1])
    grouped = grouped[grouped["count"] > 0]  # empty bins carry no share
    return grouped.reset_index(drop=True).astype({"count": int})


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _examples(model: Model, data: dict[str, np.ndarray], column: int, top: int, window: int) -> pd.DataFrame:
    act = data["act"][:, column]
    order = np.argsort(-act, kind="stable")[:top]
    rows = []
    for r in order:
        same = data["chunk"] == data["chunk"][r]
        lo = max(r - window, 0)
        while lo < r and not same[lo]:
            lo += 1
        hi = r + window
        while hi > r and (hi >= len(act) or not same[hi]):
            hi -= 1
        rows.append(
            {
                "activation": float(act[r]),
                "doc": int(data["doc"][r]),
                "position": int(data["position"][r]),
                "tokens": [model.token_str(int(t)) for t in data["token"][lo : hi + 1]],
                "token_activations": [float(a) for a in act[lo : hi + 1]],
                "focus": int(r - lo),
            }
        )
    return pd.DataFrame(rows, columns=["activation", "doc", "position", "tokens", "token_activations", "focus"])


@dataclass
class Records:
    """Everything a scan saw, one row per counted position (see PART_FIELDS); act is [positions, neurons]."""

    corpus: Corpus
    neurons: list[tuple[int, int]]
    data: dict[str, np.ndarray]


def _validate(model: Model, spec: ScanSpec) -> ScanSpec:
    """The spec checked against the model, with its context length resolved."""
    ctx = spec.ctx or min(DEFAULT_CTX, model.n_ctx)
    check_neuron_count(len(spec.neurons))
    for layer, neuron in spec.neurons:
        check_neuron(model, layer, neuron)
    if not 0 <= spec.target < model.d_vocab:
        raise UserError(f"target id {spec.target} is out of range; {model.name} has ids 0..{model.d_vocab - 1}")
    cap = limits().max_scan_tokens
    if not 1 <= spec.max_tokens <= cap:
        raise UserError(f"token budget {spec.max_tokens:,} is out of range; use 1..{cap:,}")
    if not 8 <= ctx <= model.n_ctx:
        raise UserError(f"context length {ctx} is out of range; use 8..{model.n_ctx}")
    return dataclasses.replace(spec, ctx=ctx)


@dataclass
class Plan:
    """What a scan will read, batch by batch, and where its finished batches live on disk."""

    spec: ScanSpec  # validated, ctx resolved
    corpus: Corpus
    batches: list[list[tuple[int, list[int]]]]
    folder: Path
    total: int  # positions counted (BOS excluded)

    def part_path(self, index: int) -> Path:
        return self.folder / f"part-{index:06d}.npz"

    def cached_part(self, index: int) -> dict[str, np.ndarray] | None:
        part = cache.load(self.part_path(index))
        return part if part is not None and set(part) == set(PART_FIELDS) else None

    def records(self, parts: list[dict[str, np.ndarray]]) -> Records:
        data = {k: np.concatenate([p[k] for p in parts]) for k in PART_FIELDS}
        return Records(self.corpus, list(self.spec.neurons), data)


def plan(model: Model, spec: ScanSpec) -> Plan:
    """Validate the inputs, read the corpus and cut it into batches of contexts."""
    spec = _validate(model, spec)
    assert spec.ctx is not None
    corpus = load_corpus(spec.dataset)
    contexts = [(doc, ids) for doc, _, ids in cut(model, corpus.texts, spec.ctx, spec.max_tokens, spec.spread)]
    if not contexts:
        raise UserError(f"corpus {corpus.name!r} has no document of 2 tokens or more")
    size = spec.batch_size
    return Plan(
        spec,
        corpus,
        batches=[contexts[i : i + size] for i in range(0, len(contexts), size)],
        folder=_scan_dir(model, corpus, spec),
        total=sum(len(ids) - len(context_bos(model)) for _, ids in contexts),
    )


def _read(model: Model, work: Plan, progress: Progress | None, use_cache: bool) -> Records:
    """Run the model over the plan's batches, resuming from the parts on disk.

    A part on disk is one plan batch (spec.batch_size contexts: the cache layout does not depend on memory); each
    forward covers as many consecutive missing parts as forward_contexts allows, or a part in several forwards
    when a context-batch does not fit, and is split back into parts before saving."""
    size, neurons, target = work.spec.batch_size, list(work.spec.neurons), work.spec.target
    assert work.spec.ctx is not None
    layers = {layer for layer, _ in neurons}
    per_forward = forward_contexts(model, work.spec.ctx, max(layers) - min(layers) + 1)
    pieces = [work.cached_part(i) if use_cache else None for i in range(len(work.batches))]
    done, index = 0, 0
    while index < len(work.batches):
        if pieces[index] is None:
            end = index + 1
            while end < len(work.batches) and pieces[end] is None and (end + 1 - index) * size <= per_forward:
                end += 1
            contexts = [c for batch in work.batches[index:end] for c in batch]
            runs = [
                _run_batch(model, contexts[i : i + per_forward], index * size + i, neurons, target)
                for i in range(0, len(contexts), per_forward)
            ]
            data = {name: np.concatenate([r[name] for r in runs]) for name in PART_FIELDS}
            bounds = np.searchsorted(data["chunk"], np.arange(index, end + 1) * size)
            for k in range(index, end):
                lo, hi = bounds[k - index], bounds[k - index + 1]
                pieces[k] = piece = {name: values[lo:hi] for name, values in data.items()}
                if use_cache:
                    cache.save(work.part_path(k), piece)
        part = pieces[index]
        assert part is not None
        done += len(part["token"])
        index += 1
        if progress:
            progress(done, work.total)  # may raise to interrupt: finished parts are on disk already
    return work.records([p for p in pieces if p is not None])


def records(model: Model, spec: ScanSpec, progress: Progress | None = None, use_cache: bool = True) -> Records:
    """Run the model over up to `spec.max_tokens` positions of a corpus, batch by batch, resuming from disk."""
    return _read(model, plan(model, spec), progress, use_cache)


def check_neuron_count(count: int) -> None:
    """Every neuron adds a column to each position's record and a section to the page: hosted demos cap them."""
    cap = limits().max_scan_neurons
    if count < 1:
        raise UserError("no neurons given; name at least one, e.g. L25.N1527")
    if cap is not None and count > cap:
        raise UserError(f"{count} neurons given; this demo scans at most {cap} at once")


def check_view(spec: ScanSpec) -> None:
    """The summary's settings (bin width, examples, their context window), checked before any work."""
    if not spec.bin_width > 0:
        raise UserError(f"bin width {spec.bin_width} must be positive")
    cap = limits().max_scan_examples
    if not 1 <= spec.top_examples <= cap or not 0 <= spec.window <= 100:
        raise UserError(f"top examples must be 1..{cap} and the context window 0..100 tokens")


def summarise(model: Model, seen: Records, spec: ScanSpec, **extra: str) -> ScanResult:
    """Bins, totals, correlation and examples from the records, with the settings that produced them.

    spec: as `plan` returns it (ctx resolved)."""
    settings = {
        "max_tokens": spec.max_tokens,
        "ctx": spec.ctx,
        "bin_width": spec.bin_width,
        "window": spec.window,
        "bos": model.bos_convention(),
        "neuron_activation": model.facts()["neuron_activation"],
        **extra,
    }
    return _aggregate(model, seen, spec, settings)


def scan(model: Model, spec: ScanSpec, progress: Progress | None = None, use_cache: bool = True) -> ScanResult:
    """Scan `spec.max_tokens` positions of a corpus (see core.corpus.sources): bins, totals, correlation, examples."""
    check_view(spec)
    work = plan(model, spec)
    return summarise(model, _read(model, work, progress, use_cache), work.spec)


def _aggregate(model: Model, seen: Records, spec: ScanSpec, settings: dict) -> ScanResult:
    data, corpus, neurons, target = seen.data, seen.corpus, seen.neurons, spec.target
    top1 = data["top1"] == target
    true_next = data["next"] == target
    result = ScanResult(target, model.token_str(target), corpus.description, int(len(top1)), settings)
    for column, (layer, neuron) in enumerate(neurons):
        act = data["act"][:, column]
        result.neurons[label(layer, neuron)] = NeuronScan(
            layer,
            neuron,
            bins=_bins(act, top1, true_next, spec.bin_width),
            totals={
                "positions": int(len(act)),
                "target_true_next": int(true_next.sum()),
                "target_top1": int(top1.sum()),
            },
            correlation={"logit": _pearson(act, data["logit"]), "prob": _pearson(act, data["prob"])},
            examples=_examples(model, data, column, spec.top_examples, spec.window),
        )
    return result
