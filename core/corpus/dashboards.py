"""Neuron dashboards: every neuron's max-activating examples and activation profile, from one pass over a corpus.

One streamed pass (the scan's pipeline: core.corpus.scan cuts the corpus into contexts and batches, runs the forward and
the chunked top-1; core.corpus.distributed runs parts on Ray) keeps, for every neuron of every layer, in fixed memory:
- its top-k activating positions, each with the activations of a window of tokens around it and the model's top-1
  prediction there (a running top-k per neuron: only neurons whose batch maximum beats their current k-th value
  are touched, and those with one torch.topk over [k + batch] candidates);
- a histogram of its activations over fixed bins shared by every neuron and model (quarter octaves of |a| from
  2^-6 to 2^10 on each side, read from the float's bits) — the activation density above any threshold is read
  from it;
- per bin, how many positions had the neuron's top congruent token (W_U; core.analyses.search) as the model's top-1
  prediction, and as the true next token: the post's corpus chart for every neuron at once.

The corpus is sampled evenly (core.corpus.scan.cut with spread=True), not read from its start. The pass is cut into
parts
(`part_batches` batches each); after each part the running state is written to disk, so an interrupted build
resumes where it stopped; the finished dashboards are cached (keyed by model, corpus and settings).
Examples are located: document, title and genre, the token's index in the document and its character span.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core import cache
from core.analyses.congruence import check_neuron, label
from core.corpus import scan
from core.corpus.sources import BROWN, BUNDLED, Corpus, installed, load_corpus
from core.engine import forward as fw
from core.engine.model import Model, cache_root
from core.errors import UserError
from core.hosting import limits
from core.progress import Progress

TOP_K = 20
LEFT, RIGHT = 12, 4  # tokens of context kept before and after each example
# Histogram bins, shared by every neuron and model: quarter octaves of |a| from 2^-6 to 2^10 on each side (each
# ~19 % of |a| wide), plus [-2^-6, 0) and [0, 2^-6); values beyond ±2^10 go to the end bins. A value's bin is read
# from its float32 bits (sign, exponent, two mantissa bits: one shift and one table lookup per activation).
OCTAVE_MIN, OCTAVE_MAX, STEPS = -6, 10, 4
_SIDE = (OCTAVE_MAX - OCTAVE_MIN) * STEPS  # bins per sign beyond the near-zero ones
HIST_BINS = 2 * _SIDE + 2
_MAGNITUDES = np.array([2.0 ** (OCTAVE_MIN + c // STEPS) * (1 + (c % STEPS) / STEPS) for c in range(_SIDE + 1)])
EDGES = np.concatenate([-_MAGNITUDES[::-1], [0.0], _MAGNITUDES])  # HIST_BINS + 1 edges; EDGES[_SIDE + 1] == 0


def _bin_table() -> torch.Tensor:
    """Bin of every 11-bit key (sign, 8 exponent bits, 2 mantissa bits) of a float32."""
    table = torch.empty(2048, dtype=torch.long)
    for key in range(2048):
        sign, exponent, mantissa = key >> 10, (key >> 2) & 0xFF, key & 3
        c = (exponent - 127 - OCTAVE_MIN) * STEPS + mantissa
        c = -1 if exponent - 127 < OCTAVE_MIN else min(c, _SIDE - 1)
        table[key] = (_SIDE - 1 - c) if sign else (_SIDE + 2 + c)
    return table


BIN_TABLE = _bin_table()
DENSITY_THRESHOLD = 1.0
LOGIT_BYTES = 64 << 20  # top-1 logits unembedded at once: at most this many bytes of fp32 logits
VERSION = 2


def default_corpus() -> str:
    """The Brown Corpus when set-up fetched it, else the bundled addresses."""
    return BROWN if installed(BROWN) else BUNDLED


DEFAULT_BUDGET = 100_000  # tokens of a build when none is given (a hosted server caps it lower)


@dataclass(frozen=True)
class DashboardSpec:
    """What a build reads. dataset None = default_corpus(); max_tokens None = default_budget(); ctx None =
    min(256, the model's context). A planned spec has all three resolved (so cache keys never hold None)."""

    dataset: str | None = None
    max_tokens: int | None = None
    top_k: int = TOP_K
    ctx: int | None = None
    batch_size: int = 8
    part_batches: int = 8


def bin_of(values: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
    """Histogram bin (0..HIST_BINS-1, int64) of each fp32 activation, from its bits: no search, no float math."""
    keys = (values.float().contiguous().view(torch.int32) >> 21) & 0x7FF
    table = BIN_TABLE.to(values.device) if table is None else table
    return table.index_select(0, keys.reshape(-1)).view(values.shape)  # ~20x faster than table[keys] on CPU


# ---------------------------------------------------------------- the running state


class State:
    """Every neuron's running top-k, histogram and next-token counts. Shapes: L layers, m neurons, k, W window.

    vals/pos/pred [L, m, k] (best first; pos = global position, -1 = none yet); win [L, m, k, W] (NaN outside the
    example's context); hist/hit_top1/hit_next [L, BINS, m]."""

    def __init__(self, n_layers: int, d_mlp: int, k: int, device: torch.device) -> None:
        width = LEFT + 1 + RIGHT
        self.vals = torch.full((n_layers, d_mlp, k), -torch.inf, device=device)
        self.pos = torch.full((n_layers, d_mlp, k), -1, dtype=torch.long, device=device)
        self.pred = torch.full((n_layers, d_mlp, k), -1, dtype=torch.long, device=device)
        self.win = torch.full((n_layers, d_mlp, k, width), torch.nan, device=device)
        self.hist = torch.zeros(n_layers, HIST_BINS, d_mlp, dtype=torch.long, device=device)
        self.hit_top1 = torch.zeros_like(self.hist)
        self.hit_next = torch.zeros_like(self.hist)
        self.offsets = torch.arange(-LEFT, RIGHT + 1, device=device)
        self.table = BIN_TABLE.to(device)

    FIELDS = ("vals", "pos", "pred", "win", "hist", "hit_top1", "hit_next")

    STORED = {"pos": np.int32, "pred": np.int32, "win": np.float16, "hist": np.int32, "hit_top1": np.int32}

    def arrays(self) -> dict[str, np.ndarray]:
        """The state as stored (compact dtypes: windows in fp16, counts and ids in int32)."""
        stored = dict(self.STORED, hit_next=np.int32)
        return {name: getattr(self, name).cpu().numpy().astype(stored.get(name, np.float32)) for name in self.FIELDS}

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        for name in self.FIELDS:
            target = getattr(self, name)
            target.copy_(torch.from_numpy(arrays[name]).to(target.dtype))

    def update_layer(
        self,
        layer: int,
        acts: torch.Tensor,
        top1: torch.Tensor,
        nxt: torch.Tensor,
        tokens: torch.Tensor,
        base: int,
        lo: torch.Tensor,
        hi: torch.Tensor,
    ) -> None:
        """Fold one layer's activations acts [T, m] of T counted positions (global positions base..base+T-1;
        the position t's context spans local positions lo[t]..hi[t]-1) into the state.

        top1/nxt [T]: the model's prediction and the true next token (-1 at a context's end); tokens [m]: each
        neuron's top congruent token."""
        T, m = acts.shape
        bins = bin_of(acts, self.table)
        self.hist[layer].scatter_add_(0, bins, torch.ones(1, dtype=torch.long, device=acts.device).expand(T, m))
        for hits, ids in ((self.hit_top1, top1), (self.hit_next, nxt)):
            chosen = torch.isin(tokens, ids).nonzero().squeeze(1)
            if chosen.numel():
                t, j = (ids[:, None] == tokens[chosen][None, :]).nonzero(as_tuple=True)
                n = chosen[j]
                hits[layer].index_put_((bins[t, n], n), torch.ones_like(n), accumulate=True)
        k = self.vals.shape[2]
        chosen = (acts.amax(0) > self.vals[layer, :, -1]).nonzero().squeeze(1)  # neurons whose k-th value is beaten
        if not chosen.numel():
            return
        sub = acts.index_select(1, chosen)  # [T, s]
        new_vals, local = sub.topk(min(k, T), dim=0)  # [kk, s]
        where = local[..., None] + self.offsets  # [kk, s, W]
        inside = (where >= lo[local][..., None]) & (where < hi[local][..., None])
        column = torch.arange(len(chosen), device=acts.device)[None, :, None]
        windows = torch.where(inside, sub[where.clamp(0, T - 1), column], torch.nan)
        self._merge(
            layer,
            chosen,
            new_vals.T,
            (local + base).T,
            top1[local].T,
            windows.transpose(0, 1),
        )

    def _merge(self, layer, chosen, vals, pos, pred, win) -> None:
        k = self.vals.shape[2]
        all_vals = torch.cat([self.vals[layer, chosen], vals], 1)
        best, order = all_vals.topk(k, dim=1)
        self.vals[layer, chosen] = best
        self.pos[layer, chosen] = torch.cat([self.pos[layer, chosen], pos], 1).gather(1, order)
        self.pred[layer, chosen] = torch.cat([self.pred[layer, chosen], pred], 1).gather(1, order)
        both = torch.cat([self.win[layer, chosen], win], 1)
        self.win[layer, chosen] = both.gather(1, order[..., None].expand(-1, -1, both.shape[2]))

    def merge(self, other: dict[str, np.ndarray]) -> None:
        """Add another state's counts and merge its top-k (a part run elsewhere: Ray)."""
        for name in ("hist", "hit_top1", "hit_next"):
            getattr(self, name).add_(torch.from_numpy(other[name]).to(self.hist.device, torch.long))
        every = torch.arange(self.vals.shape[1], device=self.vals.device)
        for layer in range(self.vals.shape[0]):
            vals, pos, pred = (
                torch.from_numpy(other[name][layer]).to(self.vals.device, target.dtype)
                for name, target in (("vals", self.vals), ("pos", self.pos), ("pred", self.pred))
            )
            win = torch.from_numpy(other["win"][layer]).to(self.vals.device, torch.float32)
            self._merge(layer, every, vals, pos, pred, win)


# ---------------------------------------------------------------- the pass


@dataclass
class Plan:
    spec: DashboardSpec  # validated: dataset and ctx resolved
    corpus: Corpus
    contexts: list[tuple[int, int, list[int]]]  # (doc, first token's index in doc, ids with BOS)
    folder: Path
    skip: int  # 1 when a BOS is prepended (not counted)

    @property
    def parts(self) -> list[range]:
        """Context indices of each part."""
        per = self.spec.batch_size * self.spec.part_batches
        return [range(i, min(i + per, len(self.contexts))) for i in range(0, len(self.contexts), per)]

    @property
    def starts(self) -> np.ndarray:
        """Global position of each context's first counted token (and the total at the end)."""
        lengths = [len(ids) - self.skip for _, _, ids in self.contexts]
        return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def default_budget() -> int:
    """The token budget a page offers when the visitor gave none: DashboardSpec's default, within the hosted cap
    (a hosted server must not offer a build that it then refuses)."""
    return min(DEFAULT_BUDGET, limits().max_scan_tokens)


def _validate(model: Model, spec: DashboardSpec) -> DashboardSpec:
    ctx = spec.ctx or min(scan.DEFAULT_CTX, model.n_ctx)
    cap = limits().max_scan_tokens
    budget = default_budget() if spec.max_tokens is None else spec.max_tokens
    if not 1 <= budget <= cap:
        raise UserError(f"token budget {budget:,} is out of range; use 1..{cap:,}")
    if not 8 <= ctx <= model.n_ctx:
        raise UserError(f"context length {ctx} is out of range; use 8..{model.n_ctx}")
    if not 1 <= spec.top_k <= 200:
        raise UserError(f"top-k {spec.top_k} is out of range; use 1..200 examples per neuron")
    if spec.batch_size < 1 or spec.part_batches < 1:
        raise UserError("batch size and batches per part must be at least 1")
    return dataclasses.replace(spec, dataset=spec.dataset or default_corpus(), max_tokens=budget, ctx=ctx)


def plan(model: Model, spec: DashboardSpec, contexts: bool = True) -> Plan:
    """Validate, read the corpus, and (contexts=True) cut it into the contexts a build reads. The cache folder
    depends only on the model, the corpus's identity and the settings: finding a built one cuts nothing."""
    spec = _validate(model, spec)
    assert spec.ctx is not None and spec.max_tokens is not None
    corpus = load_corpus(spec.dataset)
    cut = scan.cut(model, corpus.texts, spec.ctx, spec.max_tokens, spread=True) if contexts else []
    if contexts and not cut:
        raise UserError(f"corpus {corpus.name!r} has no document of 2 tokens or more")
    key = {
        "model": model.fingerprint,
        "corpus": corpus.identity,
        "max_tokens": spec.max_tokens,
        "top_k": spec.top_k,
        "ctx": spec.ctx,
        "batch": spec.batch_size,
        "part": spec.part_batches,
        "bins": [OCTAVE_MIN, OCTAVE_MAX, STEPS],
        "window": [LEFT, RIGHT],
        "version": VERSION,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return Plan(spec, corpus, cut, cache_root() / "dashboards" / digest, len(scan.context_bos(model)))


def top_tokens(model: Model) -> torch.Tensor:
    """Every neuron's most congruent token (W_U; cached by core.analyses.search): [L, m]."""
    from core.analyses import search

    ids = search.tables(model, "W_U").neuron_top_ids[:, 0]
    return torch.from_numpy(ids.astype(np.int64)).reshape(model.n_layers, model.d_mlp).to(model.device)


@torch.no_grad()
def fold_part(model: Model, work: Plan, part: range, state: State, tokens: torch.Tensor) -> np.ndarray:
    """Run one part's batches through the model (the scan's forward and chunked top-1) into the state.
    Returns the part's top-1 predictions, one per counted position."""
    w, skip, starts, out = model.weights, work.skip, work.starts, []
    rows = max(scan.LOGIT_ROWS, LOGIT_BYTES // (4 * model.d_vocab))
    size = work.spec.batch_size
    for first in range(part.start, part.stop, size):
        batch = [work.contexts[i][2] for i in range(first, min(first + size, part.stop))]
        ids = scan.batch_tokens(model, batch)
        B, P = ids.shape
        trace = fw.run(w, ids, record={"mlp_post"})
        lengths = [len(c) for c in batch]
        flat = torch.cat([torch.arange(skip, n, device=ids.device) + row * P for row, n in enumerate(lengths)])
        whole = skip == 0 and all(n == P for n in lengths)  # every position counted: views, no gathers
        top = scan.top1(model, trace.resid_final.reshape(B * P, -1)[flat], rows)
        nxt = torch.cat([torch.cat([ids[row, skip + 1 : n], ids.new_full((1,), -1)]) for row, n in enumerate(lengths)])
        counts = [n - skip for n in lengths]
        bounds = np.concatenate([[0], np.cumsum(counts)])
        lo = torch.from_numpy(np.repeat(bounds[:-1], counts)).to(ids.device)
        hi = torch.from_numpy(np.repeat(bounds[1:], counts)).to(ids.device)
        for layer, post in enumerate(trace.mlp_post):
            acts = post.reshape(B * P, -1)
            acts = acts if whole else acts.index_select(0, flat)
            state.update_layer(layer, acts.float(), top, nxt, tokens[layer], int(starts[first]), lo, hi)
        del trace
        out.append(top.cpu().numpy().astype(np.int32))
        cache.fault_point("dashboards.part")  # test-only (TNE_FAULT_AT): the fault campaign's kill mid part
    return np.concatenate(out)


@dataclass
class Dashboards:
    """Built dashboards of every neuron of a model over a corpus (arrays as State's, plus the corpus's positions).

    token/top1 [positions]: each counted position's token and the model's top-1 there; context_doc,
    context_start (index of the context's first counted token in its document), context_pos (its global
    position) [contexts]."""

    model: str
    corpus: Corpus
    settings: dict
    arrays: dict[str, np.ndarray]

    @property
    def positions(self) -> int:
        return int(len(self.arrays["token"]))

    def locate(self, position: int) -> tuple[int, int]:
        """(document, token index in the document) of a global position."""
        i = int(np.searchsorted(self.arrays["context_pos"], position, side="right")) - 1
        return int(self.arrays["context_doc"][i]), int(
            self.arrays["context_start"][i] + position - self.arrays["context_pos"][i]
        )

    def density(self, layer: int, neuron: int, threshold: float = DENSITY_THRESHOLD) -> tuple[float, float]:
        """(share of positions whose activation is at least the bin edge nearest above `threshold`, that edge)."""
        edge = int(np.searchsorted(EDGES, threshold))
        counts = self.arrays["hist"][layer, :, neuron]
        return float(counts[edge:].sum() / max(1, counts.sum())), float(EDGES[min(edge, HIST_BINS)])

    def histogram(self, layer: int, neuron: int) -> dict[str, list]:
        """Non-empty bins: lo, hi, count, and the shares of positions whose top-1 / true next token is the
        neuron's top token."""
        counts = self.arrays["hist"][layer, :, neuron]
        top1 = self.arrays["hit_top1"][layer, :, neuron]
        nxt = self.arrays["hit_next"][layer, :, neuron]
        keep = np.nonzero(counts)[0]
        return {
            "lo": [float(EDGES[b]) for b in keep],
            "hi": [float(EDGES[b + 1]) for b in keep],
            "count": [int(counts[b]) for b in keep],
            "top1_share": [float(top1[b] / counts[b]) for b in keep],
            "true_next_share": [float(nxt[b] / counts[b]) for b in keep],
        }


def _spans(model: Model, text: str) -> tuple[list[int], np.ndarray]:
    """A document's token ids and each token's character offset (len n + 1).

    From the decoded tokens: a token holding only part of a character (byte-level BPE, byte fallback) decodes to
    U+FFFD alone, so a run of those is decoded together and its characters go to the run's last token (the
    others get an empty span). Where that still does not join to the text, the tokenizer's own offsets."""
    ids = model.encode(text)
    pieces: list[str] = []
    run: list[int] = []
    for i in ids:
        piece = model.token_str(i)
        if "\ufffd" in piece or run:
            run.append(i)
            joined = model.decode(run)
            if "\ufffd" not in joined:
                pieces += [""] * (len(run) - 1) + [joined]
                run = []
            continue
        pieces.append(piece)
    pieces += [model.token_str(i) for i in run]
    if "".join(pieces) == text:
        return ids, np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(np.int64)
    enc = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return ids, np.array([a for a, _ in enc["offset_mapping"]] + [len(text)], dtype=np.int64)


def examples(model: Model, dash: Dashboards, layer: int, neuron: int, top_k: int | None = None) -> list[dict]:
    """The neuron's max-activating examples, highest first: activation, doc, title, genre, char_start/char_end (the
    token's span in the document's text), token_index (in the document), token, context {tokens, activations,
    focus}, prediction (the model's top-1 there)."""
    check_neuron(model, layer, neuron)
    a = dash.arrays
    k = a["vals"].shape[2] if top_k is None else top_k
    if not 1 <= k <= a["vals"].shape[2]:
        raise UserError(f"top-k {k} is out of range; these dashboards keep 1..{a['vals'].shape[2]} examples")
    spans: dict[int, tuple[list[int], np.ndarray]] = {}
    out = []
    for rank in range(k):
        pos = int(a["pos"][layer, neuron, rank])
        if pos < 0:
            break
        doc, index = dash.locate(pos)
        if doc not in spans:
            spans[doc] = _spans(model, dash.corpus.texts[doc])
        ids, offsets = spans[doc]
        window = a["win"][layer, neuron, rank].astype(np.float32)
        keep = ~np.isnan(window)
        first = pos - LEFT + int(np.argmax(keep))  # the window's first position (windows stop at context ends)
        shown = [model.token_str(int(t)) for t in a["token"][first : first + int(keep.sum())]]
        out.append(
            {
                "activation": float(a["vals"][layer, neuron, rank]),
                "doc": doc,
                "title": dash.corpus.title(doc),
                "genre": dash.corpus.genre(doc),
                "char_start": int(offsets[index]),
                "char_end": int(offsets[index + 1]),
                "token_index": index,
                "token": dash.corpus.texts[doc][int(offsets[index]) : int(offsets[index + 1])],
                "context": {
                    "tokens": shown,
                    "activations": [float(v) for v in window[keep]],
                    "focus": LEFT - int(np.argmax(keep)),
                },
                "prediction": model.token_str(int(a["pred"][layer, neuron, rank])),
            }
        )
        assert ids[index] == int(a["token"][pos])
    return out


def _result_path(work: Plan) -> Path:
    return work.folder / "dashboards.npz"


def _checkpoint_path(work: Plan) -> Path:
    return work.folder / "state.npz"


def is_built(model: Model, spec: DashboardSpec) -> bool:
    return _result_path(plan(model, spec, contexts=False)).exists()


# Budgets probed for dashboards built before builds wrote their spec beside them (spec.json).
PROBED_BUDGETS = (100_000, 50_000, 20_000, 10_000)


def _spec_path(work: Plan) -> Path:
    return work.folder / "spec.json"


def _write_spec(model: Model, work: Plan) -> None:
    """What a built folder holds, beside it (atomic): find_built reads it back."""
    record = {"model": model.fingerprint, "corpus": work.corpus.identity, "spec": dataclasses.asdict(work.spec)}
    blob = json.dumps(record, sort_keys=True).encode()
    cache.write_atomic(_spec_path(work), lambda handle: handle.write(blob))  # a killed writer's temp is swept


def find_built(model: Model, corpus: str | None = None) -> DashboardSpec | None:
    """The spec of the largest built dashboards (by token budget) of this model on this corpus (None: the default
    corpus), or None when none are built."""
    work = plan(model, DashboardSpec(corpus), contexts=False)
    identity = json.dumps(work.corpus.identity, sort_keys=True, default=str)
    found: list[DashboardSpec] = []
    for side in sorted((cache_root() / "dashboards").glob("*/spec.json")):
        try:
            record = json.loads(side.read_text())
            spec = DashboardSpec(**record["spec"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        same = record.get("model") == model.fingerprint
        if same and json.dumps(record.get("corpus"), sort_keys=True, default=str) == identity:
            if (side.parent / "dashboards.npz").exists():
                found.append(spec)
    for budget in PROBED_BUDGETS:
        spec = DashboardSpec(work.spec.dataset, budget)
        try:
            if is_built(model, spec):
                found.append(spec)
        except UserError:  # a budget beyond a hosted cap
            continue
    return max(found, key=lambda s: s.max_tokens or 0, default=None)


def largest_built(model: Model, corpus: str | None = None, why: str = "this") -> Dashboards:
    """The largest dashboards built for this model on this corpus, read back; one line saying how to build them
    when there are none (why: what needs them, for the message)."""
    spec = find_built(model, corpus)
    if spec is None:
        dataset = plan(model, DashboardSpec(corpus), contexts=False).spec.dataset
        raise UserError(
            f"{why} needs the dashboards of every neuron, and none are built for {model.name} on {dataset}; build "
            f"them with: python -m core dashboards build --model {model.name} --corpus {dataset}"
        )
    return build(model, spec)


def _finish(model: Model, work: Plan, arrays: dict[str, np.ndarray]) -> Dashboards:
    settings = {
        "corpus": work.spec.dataset,
        "corpus_description": work.corpus.description,
        "max_tokens": work.spec.max_tokens,
        "positions": int(len(arrays["token"])),
        "documents": int(len(set(arrays["context_doc"].tolist()))),
        "ctx": work.spec.ctx,
        "top_k": work.spec.top_k,
        "window": [LEFT, RIGHT],
        "sampling": "contexts spread evenly over the corpus",
        "bins": f"{HIST_BINS} bins: quarter octaves of |a| from 2^{OCTAVE_MIN} to 2^{OCTAVE_MAX} on each side, "
        f"[-2^{OCTAVE_MIN}, 0) and [0, 2^{OCTAVE_MIN}); beyond ±2^{OCTAVE_MAX} in the end bins",
        "top_token": "each neuron's most congruent token by W_U (core.analyses.search)",
        "bos": model.bos_convention(),
        "neuron_activation": model.facts()["neuron_activation"],
    }
    return Dashboards(model.name, work.corpus, settings, arrays)


def build(
    model: Model,
    spec: DashboardSpec = DashboardSpec(),
    progress: Progress | None = None,
    use_cache: bool = True,
    ray_address: str | None = None,
    workers: int = 2,
) -> Dashboards:
    """Build (or read back) the dashboards of every neuron over `spec.max_tokens` positions of a corpus.

    Resumes from the last finished part on disk; ray_address ("local" or a cluster) runs the parts on Ray."""
    work = plan(model, spec, contexts=False)
    done_path = _result_path(work)
    if use_cache and (hit := cache.load(done_path)) is not None:
        if not _spec_path(work).exists():
            _write_spec(model, work)
        if progress:
            progress(len(hit["token"]), len(hit["token"]))
        return _finish(model, work, hit)
    work = plan(model, spec)
    state = State(model.n_layers, model.d_mlp, work.spec.top_k, model.device)
    total = int(work.starts[-1])
    top1 = np.full(total, -1, dtype=np.int32)
    parts = work.parts
    done = np.zeros(len(parts), dtype=bool)
    if use_cache and (saved := cache.load(_checkpoint_path(work))) is not None and len(saved["done"]) == len(parts):
        state.load(saved)
        top1, done = saved["top1"], saved["done"].astype(bool)
    tokens = top_tokens(model)
    starts = work.starts

    def finished(index: int) -> None:
        done[index] = True
        if use_cache:
            cache.save(_checkpoint_path(work), {**state.arrays(), "top1": top1, "done": done})
        if progress:
            progress(int(sum(starts[p.stop] - starts[p.start] for p, d in zip(parts, done) if d)), total)

    todo = [i for i in range(len(parts)) if not done[i]]
    if ray_address is not None and todo:
        from core.corpus import distributed

        kwargs = {
            "model_name": model.name,
            "processing": model.processing["name"],
            "spec": dataclasses.asdict(work.spec),
        }
        kwargs["gpu"] = model.device.type == "cuda"
        items = [{"index": i} for i in todo]
        for row in distributed.pipeline(
            items, DashboardWorker, kwargs, workers, None if ray_address == "local" else ray_address, 0
        ):
            index, other = int(row["index"]), distributed._unpack(row["part"])
            state.merge(other)
            part = parts[index]
            top1[starts[part.start] : starts[part.stop]] = other["top1"]
            finished(index)
    else:
        for index in todo:
            part = parts[index]
            top1[starts[part.start] : starts[part.stop]] = fold_part(model, work, part, state, tokens)
            finished(index)
    skip = work.skip
    arrays = {
        **state.arrays(),
        "token": np.concatenate([np.asarray(ids[skip:], dtype=np.int32) for _, _, ids in work.contexts]),
        "top1": top1,
        "context_doc": np.array([d for d, _, _ in work.contexts], dtype=np.int32),
        "context_start": np.array([s for _, s, _ in work.contexts], dtype=np.int64),
        "context_pos": starts[:-1],
        "neuron_top_token": tokens.cpu().numpy().astype(np.int32),
    }
    if use_cache:
        cache.save(done_path, arrays)
        _write_spec(model, work)
        _checkpoint_path(work).unlink(missing_ok=True)
    return _finish(model, work, arrays)


class DashboardWorker:
    """A Ray Data actor: loads the model once, folds one part into a fresh state and returns it (packed)."""

    def __init__(self, model_name: str, processing: Any, spec: dict, gpu: bool) -> None:
        from core.engine.model import load_model

        torch.set_num_threads(1)
        self.model = load_model(model_name, device="cuda" if gpu else "cpu", processing=processing)
        self.work = plan(self.model, DashboardSpec(**spec))
        self.tokens = top_tokens(self.model)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from core.corpus import distributed

        out = []
        for index in batch["index"]:
            state = State(self.model.n_layers, self.model.d_mlp, self.work.spec.top_k, self.model.device)
            top1 = fold_part(self.model, self.work, self.work.parts[int(index)], state, self.tokens)
            out.append(distributed._pack({**state.arrays(), "top1": top1}))
        return {"index": batch["index"], "part": np.array(out, dtype=object)}


def neuron_view(model: Model, dash: Dashboards, layer: int, neuron: int, top_k: int | None = None) -> dict:
    """One neuron's dashboard as JSON: examples, density, histogram with the next-token shares, its top token."""
    density, edge = dash.density(layer, neuron)
    token = int(dash.arrays["neuron_top_token"][layer, neuron])
    counts = dash.arrays["hist"][layer, :, neuron]
    return {
        "neuron": label(layer, neuron),
        "model": dash.model,
        "corpus": dash.settings["corpus"],
        "settings": dash.settings,
        "top_token": model.token_str(token),
        "density": {
            "threshold": edge,
            "share": density,
            "positive_share": float(counts[_SIDE + 1 :].sum() / max(1, counts.sum())),
        },
        "top1_is_top_token": int(dash.arrays["hit_top1"][layer, :, neuron].sum()),
        "histogram": dash.histogram(layer, neuron),
        "examples": examples(model, dash, layer, neuron, top_k),
    }
