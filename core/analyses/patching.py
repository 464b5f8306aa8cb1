"""Activation patching: which layers, positions, heads and single neurons carry the answer.

Metric: logit diff = logit(answer) − logit(wrong) at the last position. Score (clean patching, the default):
    (patched − corrupted) / (clean − corrupted)
1 = this activation alone restores the clean answer, 0 = no effect. Ablations (zero, mean over positions,
negate) modify the *clean* run instead, and the score is the share of the clean−corrupted gap they remove,
(patched − clean) / (corrupted − clean), so 1 again means "this activation carries everything".

How it is fast, all exact (docs/design.md has the measured speedups):
- clean and corrupted run once; every patched run *resumes* from the patched layer using the cached residual;
- positions before the first token where the prompts differ are equal in both runs: clean patching cannot
  change them, so only positions from there on are recomputed, reusing the prefix's keys/values;
- many patched copies go in one batch (row i patches position i, head i or neuron i);
- patching a neuron's post-activation changes the MLP output by (clean − corrupted activation) × W_out[n],
  because W_out is linear: the patched residual is built directly, no hook and no MLP recompute (a post-MLP
  norm, Gemma 2/3 and OLMo 2, is recomputed on the changed output: elementwise, still exact);
- only the last position is unembedded, and only onto the answer − wrong direction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import torch

from core.analyses import screen as bf16  # `screen` is a flag name here
from core.engine import forward as fw
from core.engine import memory, tokens
from core.engine.metric import DESCRIPTION, LogitDiff
from core.engine.model import Model
from core.engine.tokens import Prompt, first_difference
from core.errors import UserError
from core.frames import by_magnitude
from core.hosting import limits
from core.jsonable import to_jsonable
from core.progress import Progress

Ablation = Literal["clean", "zero", "mean", "negate"]
ABLATIONS: tuple[Ablation, ...] = get_args(Ablation)
ABLATION_HELP = {
    "clean": "patch the clean activation into the corrupted run",
    "zero": "set the activation to zero in the clean run",
    "mean": "replace the activation by its mean over positions in the clean run",
    "negate": "negate the activation in the clean run (the post negated L31.N892)",
}


@dataclass
class Setup:
    """Both runs, cached, and what a patched run is compared against."""

    model: Model
    clean: Prompt
    corrupted: Prompt
    metric: LogitDiff
    ablation: Ablation
    clean_trace: fw.Trace
    corrupted_trace: fw.Trace
    clean_logit_diff: float
    corrupted_logit_diff: float
    start_pos: int  # first position any patched row can change
    # Results several phases need, computed once per Setup (the page's neurons phase re-reads the layer totals its
    # first chart computed); never part of equality or the printed form.
    shared: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def base(self) -> fw.Trace:
        """The run being modified: corrupted for clean patching, clean for ablations."""
        return self.corrupted_trace if self.ablation == "clean" else self.clean_trace

    @property
    def base_logit_diff(self) -> float:
        return self.corrupted_logit_diff if self.ablation == "clean" else self.clean_logit_diff

    @property
    def other_logit_diff(self) -> float:
        return self.clean_logit_diff if self.ablation == "clean" else self.corrupted_logit_diff

    def score(self, patched: torch.Tensor) -> np.ndarray:
        gap = self.other_logit_diff - self.base_logit_diff
        return ((patched.float() - self.base_logit_diff) / gap).cpu().numpy()

    def replacement(self, name: str, layer: int) -> torch.Tensor:
        """The value patched in for activation `name` of `layer`, over all positions of the base run."""
        base = getattr(self.base, name)[layer]
        if self.ablation == "clean":
            return getattr(self.clean_trace, name)[layer]
        if self.ablation == "zero":
            return torch.zeros_like(base)
        if self.ablation == "mean":
            return base.mean(dim=1, keepdim=True).expand_as(base)
        return -base

    def describe(self) -> dict:
        return {
            "metric": DESCRIPTION,
            "ablation": self.ablation,
            "ablation_meaning": ABLATION_HELP[self.ablation],
            "score": "(patched − corrupted) / (clean − corrupted)"
            if self.ablation == "clean"
            else "(ablated − clean) / (corrupted − clean)",
            "recomputed_from_position": self.start_pos,
        }

    def probs(self) -> dict[str, list[float]]:
        """P(answer), P(wrong) at the last position of each run (unembeds the cached final residuals)."""
        w, ids = self.model.weights, [self.metric.answer, self.metric.wrong]
        out = {}
        for name, trace in (("clean", self.clean_trace), ("corrupted", self.corrupted_trace)):
            probs = fw.unembed(w, trace.resid_final[0, -1]).float().softmax(-1)
            out[name] = [float(probs[i]) for i in ids]
        return out

    def to_json(self) -> dict:
        """Both runs and the conventions: the head of every patching result (CLI --json, the page's download)."""
        probs = self.probs()
        return to_jsonable(
            {
                **self.describe(),
                "answer": {"token": self.model.token_str(self.metric.answer), "id": self.metric.answer},
                "wrong": {"token": self.model.token_str(self.metric.wrong), "id": self.metric.wrong},
                "clean_token_ids": self.clean.ids,
                "corrupted_token_ids": self.corrupted.ids,
                "tokens": self.clean.pieces,
                "corrupted_tokens": self.corrupted.pieces,
                "clean_logit_diff": self.clean_logit_diff,
                "corrupted_logit_diff": self.corrupted_logit_diff,
                "clean_probs": dict(zip(("answer", "wrong"), probs["clean"])),
                "corrupted_probs": dict(zip(("answer", "wrong"), probs["corrupted"])),
            }
        )


@torch.no_grad()
def prepare(
    model: Model, clean: Prompt, corrupted: Prompt, answer: int, wrong: int, ablation: Ablation = "clean"
) -> Setup:
    if ablation not in ABLATIONS:
        raise UserError(f"ablation {ablation!r} unknown; use one of {', '.join(ABLATIONS)}")
    if answer == wrong:
        raise UserError("answer and wrong are the same token; the logit diff would be 0 everywhere")
    w = model.weights
    metric = LogitDiff.of(model, answer, wrong)
    clean_trace = fw.run(w, clean.tensor(model.device))
    corrupted_trace = fw.run(w, corrupted.tensor(model.device))
    clean_ld = float(metric(w, clean_trace.resid_final[0, -1]))
    corrupted_ld = float(metric(w, corrupted_trace.resid_final[0, -1]))
    if abs(clean_ld - corrupted_ld) < 1e-4:
        raise UserError(
            f"clean and corrupted prompts give the same logit diff ({clean_ld:.4f}); every score would divide by "
            "zero. Choose a corruption that changes which of answer and wrong the model prefers."
        )
    start = first_difference(clean, corrupted) if ablation == "clean" else 0
    return Setup(model, clean, corrupted, metric, ablation, clean_trace, corrupted_trace, clean_ld, corrupted_ld, start)


@dataclass(frozen=True)
class PatchInputs:
    """The inputs of every patching analysis as the user gave them: hashable (a cache key), picklable (a job's
    argument). The CLI, the pages, the jobs and reproduce all build one and call `resolve` or `prepare`."""

    clean: str
    corrupted: str
    answer: str
    wrong: str
    ablation: Ablation = "clean"

    def resolve(self, model: Model) -> tuple[Prompt, Prompt, int, int]:
        """(clean, corrupted, answer id, wrong id), each checked (equal lengths, single tokens)."""
        clean, corrupted = tokens.pair(model, self.clean, self.corrupted)
        return (clean, corrupted, *tokens.answer_pair(model, self.answer, self.wrong))

    def prepare(self, model: Model) -> Setup:
        """Both runs: what every patching analysis starts from."""
        return prepare(model, *self.resolve(model), self.ablation)

    def start_pos(self, model: Model) -> int:
        """The first position a patch recomputes: the first difference for clean patching, else 0."""
        clean, corrupted = tokens.pair(model, self.clean, self.corrupted)
        return first_difference(clean, corrupted) if self.ablation == "clean" else 0


def default_batch_tokens(model: Model, positions: int | None = None) -> int:
    """Rows × positions per resumed forward: what fits the memory budget (core.engine.memory: a resumed token's
    activations, whose attention scores grow with the prompt's `positions`; None: memory.TYPICAL_KEYS), at most
    65536 on CUDA and 8192 on CPU (bigger batches gain no matmul efficiency) and a hosted demo's
    TNE_MAX_BATCH_TOKENS. A big model gets smaller batches (at least one token: a longer row runs alone)."""
    cap = 65536 if model.device.type == "cuda" else 8192
    hosted = limits().max_batch_tokens
    if hosted is not None:
        cap = min(cap, hosted)
    per_token = memory.forward_bytes_per_token(model.weights, positions or memory.TYPICAL_KEYS, unembed_columns=2)
    return memory.rows_for(model.weights, per_token, cap=cap)


def _batches(joins: list[fw.Join], max_batch_tokens: int) -> list[list[fw.Join]]:
    """Split joins (sorted by depth; a large join's rows too) into batches of ≤ max_batch_tokens row-positions.

    Consecutive depths go together, so a batch still runs each sublayer once for all of its rows.
    """
    batches: list[list[fw.Join]] = [[]]
    room = max_batch_tokens
    for join in joins:
        n, per_row = join.resid.shape[0], max(join.resid.shape[1], 1)
        done = 0
        while done < n:
            if room < per_row and batches[-1]:  # this batch is full: start the next one
                batches.append([])
                room = max_batch_tokens
            take = min(n - done, max(room // per_row, 1))  # a row longer than the budget still runs, alone
            batches[-1].append(fw.Join(join.layer, join.stage, join.resid[done : done + take]))
            room -= take * per_row
            done += take
    return [b for b in batches if b]


@torch.no_grad()
def score_joins(
    setup: Setup,
    joins: list[fw.Join],
    start_pos: int,
    max_batch_tokens: int,
    progress: Callable[[], None] | None = None,
    screen: bool = False,
) -> np.ndarray:
    """The score of every row of `joins` (in order), each row resumed from its depth at positions start_pos..

    Rows are batched by depth (see fw.resume_joined); progress() is called after each batch. screen: resume in
    bfloat16 (see bf16.SCREEN_DTYPE); the final norm and the metric stay fp32.
    """
    w = setup.model.weights
    run_w, prefix = (bf16.screen_weights(w), bf16.screen_prefix(setup.base)) if screen else (w, setup.base)
    depth_order = sorted(range(len(joins)), key=lambda i: joins[i].depth())
    ordered = [joins[i] for i in depth_order]
    out = []
    for batch in _batches(ordered, max_batch_tokens):
        if screen:
            batch = [fw.Join(j.layer, j.stage, j.resid.to(bf16.SCREEN_DTYPE)) for j in batch]
        final = fw.resume_joined(run_w, batch, start_pos, prefix)
        out.append(setup.metric(w, final.to(w.W_U.dtype) if screen else final))
        if progress:
            progress()
    if not out:
        return np.zeros(0, dtype=np.float32)
    scores = setup.score(torch.cat(out))
    sizes = np.cumsum([0] + [j.resid.shape[0] for j in ordered])
    back: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(joins)
    for k, i in enumerate(depth_order):
        back[i] = scores[sizes[k] : sizes[k + 1]]
    return np.concatenate(back)


# ---------------------------------------------------------------- the bfloat16 screen of full neuron sweeps
#
# A full sweep is d_mlp rows, each resumed over every position from its layer on: the page's largest FLOP count.
def _one_position(base_resid: torch.Tensor, delta: torch.Tensor, pos: int) -> torch.Tensor:
    """base_resid: [n|1, P, d] (all positions); delta: [n, d] added at `pos`. Returns positions pos..: [n, P-pos, d]."""
    tail = base_resid[:, pos:].expand(delta.shape[0], -1, -1).clone()
    tail[:, 0] += delta
    return tail


@dataclass
class LayerPatching:
    scores: dict[str, np.ndarray]  # resid_pre/attn_out/mlp_out → [L, P]
    all_positions: dict[str, np.ndarray]  # attn_out/mlp_out → [L]

    def frame(self, pieces: list[str]) -> pd.DataFrame:
        """Long form: kind, layer, position, token, score."""
        rows = []
        for kind, grid in self.scores.items():
            for layer in range(grid.shape[0]):
                for pos in range(grid.shape[1]):
                    rows.append((kind, layer, pos, pieces[pos], float(grid[layer, pos])))
        return pd.DataFrame(rows, columns=["kind", "layer", "position", "token", "score"])

    def to_json(self) -> dict:
        """scores: kind → [L][P]; all_positions: kind → [L]."""
        return to_jsonable({"scores": self.scores, "all_positions": self.all_positions})


def entry(setup: Setup, kind: str, layer: int) -> tuple[int, fw.Stage, torch.Tensor]:
    """Where a patch of activation `kind` of `layer` enters the residual stream: (layer, stage, base residual there).

    The base residual is [1, P, d] over all positions. With parallel attention + MLP, the MLP of `layer` reads
    resid_pre and never sees attention's output: an attention patch enters after the whole block.
    """
    base = setup.base
    if kind == "resid_pre":
        return layer, "pre", base.resid_pre[layer]
    if kind == "attn_out" and not setup.model.weights.arch.parallel:
        return layer, "mid", base.resid_mid[layer]
    return layer + 1, "pre", base.resid_after(layer)


def attn_delta(setup: Setup, layer: int, change: torch.Tensor) -> torch.Tensor:
    """What the residual gains when attention's output before its post-norm changes by `change` [n, P, d].

    Without a post-norm this is `change` itself (attention's output is linear in each head's). With one (Gemma 2/3,
    OLMo 2) the norm is recomputed: post_norm(base + change) − base attn_out, exact where the shortcut is not.
    """
    w = setup.model.weights
    if not w.arch.post_norms:
        return change
    base_pre = fw.attn_pre_norm_out(w, layer, setup.base.z[layer])  # [1, P, d]
    return fw.attn_post(w, layer, base_pre + change) - setup.base.attn_out[layer]


def mlp_delta(setup: Setup, layer: int, change: torch.Tensor, start: int) -> torch.Tensor:
    """What the residual gains at positions start.. when the MLP's linear output (post @ W_out) changes by `change`.

    change: [n, S, d] over positions start..; without a post-norm the answer is `change` (Δpost × W_out is exact);
    with one, post_norm(base linear + change) − base mlp_out.
    """
    w = setup.model.weights
    if not w.arch.post_norms:
        return change
    base_linear = fw.mlp_linear(w, layer, setup.base.mlp_post[layer][:, start:])
    return fw.mlp_post_norm(w, layer, base_linear + change) - setup.base.mlp_out[layer][:, start:]


LAYER_KINDS = ("resid_pre", "attn_out", "mlp_out")


@torch.no_grad()
def patch_layers(setup: Setup, max_batch_tokens: int | None = None, progress: Progress | None = None) -> LayerPatching:
    """Every (layer, position) of resid_pre, attn_out and mlp_out, plus attn_out/mlp_out at all positions at once.

    A patch at position p leaves positions before p unchanged (attention is causal), so its rows recompute only
    positions p..: the rows are grouped by position, each group one depth-staggered pass over all 3 × L patches.
    """
    w, start = setup.model.weights, setup.start_pos
    batch = max_batch_tokens or default_batch_tokens(setup.model)
    P, L = len(setup.clean.ids), w.n_layers
    scores = {k: np.zeros((L, P), dtype=np.float32) for k in LAYER_KINDS}
    patches = [(kind, layer) for kind in LAYER_KINDS for layer in range(L)]
    deltas = {
        (kind, layer): (setup.replacement(kind, layer) - getattr(setup.base, kind)[layer])[0]  # [P, d]
        for kind, layer in patches
    }
    groups = list(range(start, P))
    for g, pos in enumerate(groups):
        joins = []
        for kind, layer in patches:
            at, stage, resid = entry(setup, kind, layer)
            joins.append(fw.Join(at, stage, _one_position(resid, deltas[kind, layer][pos][None], pos)))
        result = score_joins(setup, joins, pos, batch).reshape(len(LAYER_KINDS), L)
        for k, kind in enumerate(LAYER_KINDS):
            scores[kind][:, pos] = result[k]
        if progress:
            progress(g + 1, len(groups) + 1)
    all_positions = patch_layer_totals(setup, batch)
    if progress:
        progress(len(groups) + 1, len(groups) + 1)
    return LayerPatching(scores, all_positions)


@torch.no_grad()
def patch_layer_totals(setup: Setup, max_batch_tokens: int | None = None) -> dict[str, np.ndarray]:
    """attn_out and mlp_out of every layer patched at all positions: {kind: [L]} (2L rows, one pass; cheap).

    Computed once per setup (setup.shared): the first chart and the neurons phase both read it."""
    hit = setup.shared.get("layer totals")
    if hit is not None:
        return {kind: scores.copy() for kind, scores in hit.items()}
    w, start = setup.model.weights, setup.start_pos
    L = w.n_layers
    joins = []
    for kind in ("attn_out", "mlp_out"):
        for layer in range(L):
            at, stage, resid = entry(setup, kind, layer)
            delta = setup.replacement(kind, layer) - getattr(setup.base, kind)[layer]
            joins.append(fw.Join(at, stage, (resid + delta)[:, start:]))
    result = score_joins(setup, joins, start, max_batch_tokens or default_batch_tokens(setup.model)).reshape(2, L)
    setup.shared["layer totals"] = {"attn_out": result[0], "mlp_out": result[1]}
    return {kind: scores.copy() for kind, scores in setup.shared["layer totals"].items()}


@dataclass
class HeadPatching:
    all_positions: np.ndarray  # [L, H]
    per_position: np.ndarray | None  # [L, H, P]; None unless asked for (it costs P times as much)

    def frame(self) -> pd.DataFrame:
        """layer, head, score (all positions), one row per head, largest |score| first."""
        L, H = self.all_positions.shape
        rows = [(layer, head, float(self.all_positions[layer, head])) for layer in range(L) for head in range(H)]
        return by_magnitude(pd.DataFrame(rows, columns=["layer", "head", "score"]), "score")

    def to_json(self) -> dict:
        return to_jsonable({"heads_all_positions": self.all_positions, "heads_per_position": self.per_position})


@torch.no_grad()
def patch_heads(
    setup: Setup, per_position: bool = False, max_batch_tokens: int | None = None, progress: Progress | None = None
) -> HeadPatching:
    """Every head's output (hook_z) patched at all positions; with per_position, also at each position alone."""
    w, start = setup.model.weights, setup.start_pos
    batch = max_batch_tokens or default_batch_tokens(setup.model)
    P, L, H = len(setup.clean.ids), w.n_layers, w.n_heads
    head_delta = []  # per layer [H, P, d]: what each head's patch adds to the residual
    for layer in range(L):
        dz = (setup.replacement("z", layer) - setup.base.z[layer])[0]  # [P, H, h]
        head_delta.append(attn_delta(setup, layer, torch.einsum("pnh,nhd->npd", dz, w.W_O[layer])))
    entries = [entry(setup, "attn_out", layer) for layer in range(L)]  # where an attention patch joins
    joins = [
        fw.Join(at, stage, resid[:, start:] + head_delta[layer][:, start:])
        for layer, (at, stage, resid) in enumerate(entries)
    ]
    all_positions = score_joins(setup, joins, start, batch).reshape(L, H)
    groups = list(range(start, P)) if per_position else []
    if progress:
        progress(1, len(groups) + 1)
    per = None
    if per_position:
        per = np.zeros((L, H, P), dtype=np.float32)
        for g, pos in enumerate(groups):
            joins = [
                fw.Join(at, stage, _one_position(resid, head_delta[layer][:, pos], pos))
                for layer, (at, stage, resid) in enumerate(entries)
            ]
            per[:, :, pos] = score_joins(setup, joins, pos, batch).reshape(L, H)
            if progress:
                progress(g + 2, len(groups) + 1)
    return HeadPatching(all_positions, per)


@dataclass
class NeuronPatching:
    layer: int
    neurons: np.ndarray  # [n] neuron indices, in the order of scores
    scores: np.ndarray  # [n]
    layer_score: float  # the whole MLP layer patched at all positions
    exact: np.ndarray | None = None  # [n] bool: False where the score is the bfloat16 screen's; None = all exact
    screen_error: float | None = None  # largest |fp32 − screen| over the verified rows (screened sweeps only)

    def is_exact(self) -> np.ndarray:
        return np.ones(len(self.scores), dtype=bool) if self.exact is None else self.exact

    def precision(self) -> str:
        if self.exact is None:
            return "fp32, every neuron"
        return (
            f"screened in bfloat16, the top {int(self.exact.sum())} (by score and by |score|) recomputed in fp32; "
            f"largest screen error among them {self.screen_error:.4f}"
        )

    def frame(self, top_k: int | None = None) -> pd.DataFrame:
        """layer, neuron, label, score, exact (False: a bfloat16 screen score); highest score first."""
        order = np.argsort(-self.scores, kind="stable")
        if top_k is not None:
            order = order[:top_k]
        return pd.DataFrame(
            {
                "layer": self.layer,
                "neuron": self.neurons[order],
                "label": [f"L{self.layer}.N{n}" for n in self.neurons[order]],
                "score": self.scores[order],
                "exact": self.is_exact()[order],
            }
        )

    def winners(self, k: int = 1) -> pd.DataFrame:
        """The k best rows by score among the fp32 ones (frame's columns): what a headline may name."""
        frame = self.frame()
        return frame[frame.exact].head(k)

    def to_json(self, top_k: int | None = None) -> dict:
        """The layer, its whole-layer score, the precision and its neurons (highest score first; all unless top_k)."""
        return to_jsonable(
            {
                "layer": self.layer,
                "layer_score": self.layer_score,
                "precision": self.precision(),
                "screen_error": self.screen_error,
                "neurons": self.frame(top_k)[["layer", "neuron", "score", "exact"]],
            }
        )


def check_layer(model: Model, layer: int) -> int:
    if not 0 <= layer < model.n_layers:
        raise UserError(f"layer {layer} is out of range; {model.name} has layers 0..{model.n_layers - 1}")
    return layer


Piece = tuple[int, slice | None]  # (layer, a slice of that layer's neuron ids, or None: the whole-layer row)


def _waves(ids: dict[int, torch.Tensor], per: int, whole: bool) -> list[list[Piece]]:
    """Pieces of ≤ `per` rows grouped into waves of ≤ `per` rows (one resumed batch each: bounded memory)."""
    pieces: list[Piece] = []
    for layer in ids:
        pieces += [(layer, slice(i, i + per)) for i in range(0, len(ids[layer]), per)]
        pieces += [(layer, None)] if whole else []
    waves: list[list[Piece]] = [[]]
    rows = 0
    for layer, part in pieces:
        n = 1 if part is None else len(ids[layer][part])
        if rows + n > per and waves[-1]:
            waves.append([])
            rows = 0
        waves[-1].append((layer, part))
        rows += n
    return [wave for wave in waves if wave]


def _run_waves(
    setup: Setup,
    ids: dict[int, torch.Tensor],
    waves: list[list[Piece]],
    batch: int,
    screen: bool,
    step: Callable[[], None],
) -> tuple[dict[int, np.ndarray], dict[int, float]]:
    """Scores of the waves' rows: (layer → scores in the order of ids[layer], layer → whole-layer score)."""
    w, start = setup.model.weights, setup.start_pos
    scores: dict[int, list[np.ndarray]] = {layer: [] for layer in ids}
    whole: dict[int, float] = {}
    d_posts = {
        layer: (setup.replacement("mlp_post", layer) - setup.base.mlp_post[layer])[0, start:]  # [S, m]
        for layer in ids
    }
    for wave in waves:
        joins = []
        for layer, part in wave:
            d_post = d_posts[layer]
            after = entry(setup, "mlp_out", layer)[2][:, start:]
            W_out = w.W_out[layer]
            if part is None:
                change = (d_post @ W_out)[None]
            else:
                picked = ids[layer][part].to(W_out.device)
                change = d_post[:, picked].T[:, :, None] * W_out[picked][:, None, :]
            joins.append(fw.Join(layer + 1, "pre", after + mlp_delta(setup, layer, change, start)))
        result = score_joins(setup, joins, start, batch, screen=screen)
        offset = 0
        for (layer, part), join in zip(wave, joins):
            n = join.resid.shape[0]
            if part is None:
                whole[layer] = float(result[offset])
            else:
                scores[layer].append(result[offset : offset + n])
            offset += n
        step()
    return {layer: np.concatenate(s) if s else np.zeros(0, np.float32) for layer, s in scores.items()}, whole


def _to_verify(screen: np.ndarray, must: list[int], ids: torch.Tensor) -> torch.Tensor:
    """Positions (into ids) of a screened layer's rows to recompute in fp32: top by score, by |score|, and `must`."""
    k = min(bf16.SCREEN_VERIFY, len(screen))
    picked = set(np.argsort(-screen, kind="stable")[:k]) | set(np.argsort(-np.abs(screen), kind="stable")[:k])
    where = {int(n): i for i, n in enumerate(ids.tolist())}
    picked |= {where[n] for n in must if n in where}
    return torch.tensor(sorted(int(i) for i in picked), dtype=torch.long)


@torch.no_grad()
def patch_neuron_sets(
    setup: Setup,
    neurons: dict[int, list[int] | None],
    max_batch_tokens: int | None = None,
    progress: Progress | None = None,
    screen: bool = False,
    verify: dict[int, list[int]] | None = None,
) -> dict[int, NeuronPatching]:
    """Neurons of several layers, each patched alone at all positions, plus each layer whole; batched by depth.

    neurons: layer → neuron ids (None = every neuron of the layer). Patched residual after the MLP =
    base + (replacement − base activation)[:, n] ⊗ W_out[layer, n], exact because W_out is linear; with a
    post-MLP norm that change goes through the norm (see mlp_delta).
    screen: full layers (None) are screened in bfloat16 where that pays on this device (bf16.screen_pays), and their
    top rows plus `verify` (layer → neurons that must be exact) are recomputed in fp32; listed neurons and
    whole-layer scores are always fp32. Rows left at their screen score are marked (NeuronPatching.exact).
    """
    model = setup.model
    w, start = model.weights, setup.start_pos
    batch = max_batch_tokens or default_batch_tokens(model)
    ids: dict[int, torch.Tensor] = {}
    for layer, chosen in neurons.items():
        check_layer(model, layer)
        ids[layer] = torch.arange(w.d_mlp) if chosen is None else torch.tensor(list(chosen), dtype=torch.long)
        if ids[layer].numel() and (ids[layer].min() < 0 or ids[layer].max() >= w.d_mlp):
            raise UserError(f"neurons must be in 0..{w.d_mlp - 1} for {model.name}")
    screened = (
        [layer for layer, chosen in neurons.items() if chosen is None]
        if screen and bf16.screen_pays(str(model.device))
        else []
    )
    per = max(1, batch // max(len(setup.clean.ids) - start, 1))
    rough_waves = _waves({layer: ids[layer] for layer in screened}, per, whole=False)
    # the fp32 pass's size is known only after the screen: count its rows as bf16.SCREEN_VERIFY ×2 per screened layer
    exact_rows = sum(len(ids[l]) for l in ids if l not in screened) + 2 * bf16.SCREEN_VERIFY * len(screened) + len(ids)
    total = len(rough_waves) + max(1, -(-exact_rows // per))
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(min(done, total), total)

    rough, _ = _run_waves(setup, {l: ids[l] for l in screened}, rough_waves, batch, True, step)
    verified = {l: _to_verify(rough[l], (verify or {}).get(l, []), ids[l]) for l in screened}
    exact_ids = {l: ids[l][verified[l]] if l in verified else ids[l] for l in ids}
    exact, whole = _run_waves(setup, exact_ids, _waves(exact_ids, per, whole=True), batch, False, step)
    out = {layer: NeuronPatching(layer, ids[layer].cpu().numpy(), exact[layer], whole[layer]) for layer in ids}
    close: dict[int, torch.Tensor] = {}
    for layer in screened:
        out[layer], close[layer] = _merge_screen(
            layer, ids[layer], rough[layer], verified[layer], exact[layer], whole[layer]
        )
    # Rows whose screen score lies within twice the measured screen error of the best exact ones could still be
    # the true winners: recompute those too (rare where the best stand out; small gaps make screen errors large).
    close = {layer: rows for layer, rows in close.items() if len(rows)}
    if close:
        more_ids = {layer: ids[layer][rows] for layer, rows in close.items()}
        more, _ = _run_waves(setup, more_ids, _waves(more_ids, per, whole=False), batch, False, step)
        for layer, rows in close.items():
            sweep = out[layer]
            assert sweep.exact is not None
            sweep.scores[rows.numpy()], sweep.exact[rows.numpy()] = more[layer], True
    if progress:
        progress(total, total)
    return out


def _merge_screen(
    layer: int, ids: torch.Tensor, rough: np.ndarray, rows: torch.Tensor, exact: np.ndarray, layer_score: float
) -> tuple[NeuronPatching, torch.Tensor]:
    """A screened sweep with its verified rows in fp32, and the unverified rows close enough to the best to check."""
    scores, mask = rough.copy(), np.zeros(len(ids), dtype=bool)
    picked = rows.numpy()
    error = float(np.abs(scores[picked] - exact).max()) if len(picked) else 0.0
    scores[picked], mask[picked] = exact, True
    close = torch.zeros(0, dtype=torch.long)
    if len(picked):
        margin = 2 * error
        near = (~mask) & ((rough + margin >= exact.max()) | (np.abs(rough) + margin >= np.abs(exact).max()))
        close = torch.from_numpy(np.flatnonzero(near))
    return NeuronPatching(layer, ids.cpu().numpy(), scores, layer_score, mask, error), close


def patch_neurons(
    setup: Setup,
    layer: int,
    neurons: list[int] | None = None,
    max_batch_tokens: int | None = None,
    progress: Progress | None = None,
    screen: bool = False,
) -> NeuronPatching:
    """Each neuron of `layer` patched alone at all positions (the post's sweep), batched; default all neurons.

    screen: see patch_neuron_sets (bfloat16 screen, top rows fp32) where it pays on this device.
    """
    check_layer(setup.model, layer)
    return patch_neuron_sets(setup, {layer: neurons}, max_batch_tokens, progress, screen=screen)[layer]


def standout_mlp_layer(layers: LayerPatching | np.ndarray) -> int:
    """The MLP layer whose all-positions patch restores most, MLP 0 aside (it acts as an extended embedding).

    layers: a LayerPatching, or the mlp_out all-positions scores [L] (patch_layer_totals(…)["mlp_out"]).
    """
    scores = layers.all_positions["mlp_out"] if isinstance(layers, LayerPatching) else np.asarray(layers)
    return int(np.argmax(scores[1:])) + 1 if len(scores) > 1 else 0


def depth_word(layer: int, n_layers: int) -> str:
    """ "early", "middle" or "late": where a layer sits in the model's depth (by thirds)."""
    return "early" if layer < n_layers / 3 else "middle" if layer < 2 * n_layers / 3 else "late"


@dataclass
class Effect:
    """A patch in absolute terms at the last position: the logit diff and the top-1 token, before and after."""

    base_logit_diff: float
    patched_logit_diff: float
    base_top: int  # token id of the base run's top-1 prediction
    patched_top: int
    patched_probs: tuple[float, float]  # P(answer), P(wrong) after the patch

    def to_json(self) -> dict:
        return to_jsonable(self)


@torch.no_grad()
def neuron_effect(setup: Setup, layer: int, neuron: int | None = None) -> Effect:
    """The base run with one neuron (None: the whole MLP) of `layer` patched at all positions, unembedded in full."""
    w, start = setup.model.weights, setup.start_pos
    check_layer(setup.model, layer)
    d_post = (setup.replacement("mlp_post", layer) - setup.base.mlp_post[layer])[0, start:]  # [S, m]
    if neuron is not None:
        delta = d_post[:, neuron : neuron + 1] @ w.W_out[layer][neuron : neuron + 1]
    else:
        delta = d_post @ w.W_out[layer]
    after = entry(setup, "mlp_out", layer)[2][:, start:]
    delta = mlp_delta(setup, layer, delta[None], start)
    final = fw.resume_joined(w, [fw.Join(layer + 1, "pre", after + delta)], start, setup.base)[0]
    logits = fw.unembed(w, final).float()
    base_logits = fw.unembed(w, setup.base.resid_final[0, -1]).float()
    probs = logits.softmax(-1)
    answer, wrong = setup.metric.answer, setup.metric.wrong
    return Effect(
        setup.base_logit_diff,
        float(logits[answer] - logits[wrong]),
        int(base_logits.argmax()),
        int(logits.argmax()),
        (float(probs[answer]), float(probs[wrong])),
    )
