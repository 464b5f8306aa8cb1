"""One prompt in, the neurons that matter out: the direct and the total effect of every neuron (and head).

For one prompt, one position p (default the last) and one target — a token (its logit) or answer vs wrong (the
logit difference) — at p:

- **direct effect** of neuron n of layer L: its activation × its output direction W_out[L, n], read through the
  post-MLP norm (where the family has one) and the final norm, both with their scale frozen at this run, onto the
  target's unembedding direction. With the scales frozen the readout is linear in the residual stream, so the
  direct effects of every neuron, every head, the embedding and the biases sum exactly to it. Where the family
  soft-caps its logits (Gemma 2), the cap is linearised at this run: each direct effect is its share of the
  pre-cap logit × the cap's slope there, 1 − tanh²(logit / cap). One forward, one matmul per layer.
- **total effect** of the top-k neurons by |direct effect|: metric(clean) − metric(the neuron's activation at p set
  to zero, or to its corpus mean), recomputed exactly. Zeroing at p changes nothing before p, and positions after p
  cannot reach the metric at p, so the run stops at p (the prompt is cut there) and each patched row recomputes
  only position p, from the layer after the neuron's, reusing the clean run's keys and values of positions < p; all
  rows go through one batched resumed forward (core.engine.forward.resume_joined).
- ratio total / direct, and flags: `cancelled` where later layers take back most of the direct effect
  (|total| < CANCEL_BELOW × |direct|), `amplified` where they add to it (|total| > AMPLIFY_ABOVE × |direct|).

Heads get the same: direct effect of every head (core.analyses.lens.direct_attribution, the logit lens's DLA) and
the total effect of the top heads (their z at p zeroed). Shapes: L layers, m d_mlp, H heads, d d_model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import pandas as pd
import torch

from core.analyses.congruence import label
from core.analyses.lens import direct_attribution
from core.engine import forward as fw
from core.engine import memory
from core.engine import tokens as tok
from core.engine.model import Model
from core.engine.tokens import Prompt
from core.errors import UserError
from core.hosting import check_top_k
from core.jsonable import to_jsonable

Ablation = Literal["zero", "mean"]
ABLATIONS: tuple[Ablation, ...] = get_args(Ablation)
CANCEL_BELOW = 0.5  # |total| < this × |direct|: later layers cancel most of the neuron's direct effect
AMPLIFY_ABOVE = 2.0  # |total| > this × |direct|: later layers amplify it
DEFAULT_TOP_K = 50
DEFAULT_TOP_HEADS = 10
# The JSON's names of the frames' columns (CLI --json, the Prompt page's download): the one place they are mapped.
JSON_NAMES = {"direct": "direct_effect", "total": "total_effect", "direct_of_change": "direct_effect_of_change"}


# ---------------------------------------------------------------- the target


@dataclass(frozen=True)
class Target:
    """The metric at the position: Σ sign_t · logit(t) over one token (logit) or two (answer − wrong)."""

    ids: tuple[int, ...]
    signs: tuple[float, ...]
    tokens: tuple[str, ...]
    chosen: str  # "given" or "top-1" (no target given: the model's own top-1 token at the position)

    @property
    def description(self) -> str:
        if len(self.ids) == 1:
            return f"logit({self.tokens[0]!r})"
        return f"logit({self.tokens[0]!r}) − logit({self.tokens[1]!r})"

    def _signs(self, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.signs, dtype=like.dtype, device=like.device)

    def pre_cap(self, w: fw.Weights, resid_final: torch.Tensor) -> torch.Tensor:
        """The target tokens' logits before any soft-cap: [..., T] from resid_final [..., d]."""
        normed = fw.norm(w, resid_final, w.lnf_w, w.lnf_b)
        return fw.unembed_columns(w, normed, list(self.ids))

    def value(self, w: fw.Weights, resid_final: torch.Tensor) -> torch.Tensor:
        """The metric, exactly as the model's logits give it (after the soft-cap): [...] from [..., d]."""
        logits = fw.softcap(self.pre_cap(w, resid_final), w.arch.final_softcap)
        return logits @ self._signs(logits)

    def readout(self, w: fw.Weights, resid_final: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(direction [d], bias) of the metric's linear readout at this run's final residual [d].

        Without a soft-cap: Σ sign_t W_U[:, t] and Σ sign_t b_U[t]. With one, each token's column is weighted by
        the cap's slope at this run's logit (d cap(x)/dx = 1 − tanh²(x / cap)): the tangent of the metric.
        """
        ids = list(self.ids)
        signs = self._signs(w.W_U)
        cap = w.arch.final_softcap
        if cap is not None:
            slope = 1 - torch.tanh(self.pre_cap(w, resid_final) / cap) ** 2  # [T]
            signs = signs * slope.to(signs.dtype)
        return w.W_U[:, ids] @ signs, float(w.b_U[ids] @ signs)


def resolve_target(
    model: Model, answer: str | int | None, wrong: str | int | None, resid_final: torch.Tensor
) -> Target:
    """The target from what the user gave: a token as text (" an") or id; None = the model's top-1 at the position.

    resid_final: [d], the final residual at the position (for the top-1)."""
    if answer is None:
        if wrong is not None:
            raise UserError("a wrong token needs an answer token: give both, or the answer alone (its logit)")
        top = int(fw.unembed(model.weights, resid_final).argmax())
        return Target((top,), (1.0,), (model.token_str(top),), "top-1")

    def one(value: str | int, what: str) -> int:
        if isinstance(value, int):
            tok.token_from_id(model, value)
            return value
        return tok.single_token(model, value, what)

    a = one(answer, "answer")
    if wrong is None:
        return Target((a,), (1.0,), (model.token_str(a),), "given")
    b = one(wrong, "wrong")
    if a == b:
        raise UserError("answer and wrong are the same token; the logit diff would be 0 everywhere")
    return Target((a, b), (1.0, -1.0), (model.token_str(a), model.token_str(b)), "given")


def check_position(prompt: Prompt, position: int | None) -> int:
    """The position as an index 0..P-1 (None: the last; negative: from the end, as Python counts)."""
    P = len(prompt.ids)
    if P == 0:
        raise UserError("the prompt has no tokens; type some text")
    if position is None:
        return P - 1
    if not -P <= position < P:
        raise UserError(f"position {position} is outside the prompt; it has {P} tokens: use 0..{P - 1} (or -1 = last)")
    return position % P


# ---------------------------------------------------------------- the direct effects


@torch.no_grad()
def neuron_readouts(w: fw.Weights, trace: fw.Trace, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What one unit of each neuron's activation at the trace's last position adds to the readout, and each MLP's
    b_out share: ([L, m], [L]).

    readout(x) = direction · norm(x) with the final norm's scale frozen = x · u, u = centre(lnf_w ⊙ direction) /
    scale (centre: LayerNorm removes the mean; RMSNorm does not). A post-MLP norm with its scale frozen at this run
    multiplies by mlp_post_w / its scale: each layer's vector v_L, then W_out[L] @ v_L — one matmul per layer.
    """
    resid = trace.resid_final[0, -1]
    u = direction * w.lnf_w if w.lnf_w is not None else direction
    if w.norm == "LN":
        u = u - u.mean()
    u = u / fw.norm_scale(w, resid)  # [d]
    v = u.expand(w.n_layers, -1)  # [L, d]
    if w.arch.post_norms:
        post = trace.stacked("mlp_post")[:, 0, -1]  # [L, m]
        linear = torch.einsum("lm,lmd->ld", post, w.W_out) + w.b_out  # the MLP's output before its norm
        v = v / fw.rms_scale(linear, w.eps)  # [L, d]
        if w.mlp_post_w is not None:
            v = v * w.mlp_post_w
    per_unit = torch.bmm(w.W_out, v[:, :, None])[..., 0]  # [L, m]
    bias_share = (w.b_out * v).sum(-1)  # [L]
    return per_unit, bias_share


# ---------------------------------------------------------------- the total effects


def _by_layer(picks: list[tuple[int, int]]) -> list[tuple[int, list[int]]]:
    """(layer, indices into picks) for each layer that has picks, layers ascending."""
    return [(layer, [i for i, (l, _) in enumerate(picks) if l == layer]) for layer in sorted({l for l, _ in picks})]


def _neuron_joins(
    w: fw.Weights, trace: fw.Trace, picks: list[tuple[int, int]], replacement: torch.Tensor
) -> list[fw.Join]:
    """One join per layer (rows in _by_layer's order): its picked neurons' rows, each with that neuron's activation
    at the last position set to its replacement, entering the next layer (the residual after the MLP, changed by
    the MLP output's change).

    replacement: [len(picks)] the value each picked neuron is set to."""
    joins = []
    for layer, rows in _by_layer(picks):
        neurons = torch.tensor([picks[i][1] for i in rows], device=w.W_out.device)
        act = trace.mlp_post[layer][0, -1, neurons]  # [n]
        change = (replacement[rows].to(act.dtype) - act)[:, None] * w.W_out[layer][neurons]  # [n, d]
        if w.arch.post_norms:  # the norm sees the whole output: recompute it (elementwise, exact)
            linear = fw.mlp_linear(w, layer, trace.mlp_post[layer][0, -1])  # [d]
            change = fw.mlp_post_norm(w, layer, linear + change) - trace.mlp_out[layer][0, -1]
        after = trace.resid_after(layer)[0, -1]  # [d]
        joins.append(fw.Join(layer + 1, "pre", (after + change)[:, None, :]))
    return joins


def _head_joins(w: fw.Weights, trace: fw.Trace, picks: list[tuple[int, int]]) -> list[fw.Join]:
    """One join per layer (rows in _by_layer's order): its picked heads' rows, each with the head's z at the last
    position zeroed.

    The change lands between the layer's attention and its MLP ("mid"); with parallel attention + MLP the MLP
    read resid_pre, which is unchanged, so the rows enter the next layer instead."""
    joins = []
    for layer, rows in _by_layer(picks):
        heads = [picks[i][1] for i in rows]
        z = trace.z[layer][0, -1]  # [H, h]
        change = -torch.einsum("nh,nhd->nd", z[heads], w.W_O[layer][heads])  # [n, d]
        if w.arch.post_norms:
            pre = fw.attn_pre_norm_out(w, layer, z)  # [d]
            change = fw.attn_post(w, layer, pre + change) - trace.attn_out[layer][0, -1]
        if w.arch.parallel:
            joins.append(fw.Join(layer + 1, "pre", (trace.resid_after(layer)[0, -1] + change)[:, None, :]))
        else:
            joins.append(fw.Join(layer, "mid", (trace.resid_mid[layer][0, -1] + change)[:, None, :]))
    return joins


@torch.no_grad()
def resumed_metrics(
    w: fw.Weights, trace: fw.Trace, target: Target, joins: list[fw.Join], max_rows: int | None = None
) -> torch.Tensor:
    """The metric of every row of `joins` (in order), resumed at the trace's last position only: [rows].

    Rows go in batches of ≤ max_rows (default: what fits the memory budget, core.engine.memory), consecutive
    joins together; each batch is one resume_joined pass, which returns its rows in the order of its joins."""
    if not joins:
        return torch.zeros(0)
    start = trace.resid_final.shape[1] - 1
    if max_rows is None:
        per_row = memory.forward_bytes_per_token(w, start + 1, unembed_columns=len(target.ids))
        max_rows = memory.rows_for(w, per_row)
    batches: list[list[fw.Join]] = [[]]
    room = max_rows
    for join in joins:
        done, n = 0, join.resid.shape[0]
        while done < n:
            if room == 0:  # this batch is full: start the next one
                batches.append([])
                room = max_rows
            take = min(n - done, room)
            batches[-1].append(fw.Join(join.layer, join.stage, join.resid[done : done + take]))
            done, room = done + take, room - take
    return torch.cat([target.value(w, fw.resume_joined(w, batch, start, trace)).float() for batch in batches])


# ---------------------------------------------------------------- the result


@dataclass
class Effects:
    """Direct effects of every neuron and head, totals of the top ones. Arrays: [L, m] and [L, H]."""

    model: str
    prompt: Prompt
    position: int
    target: Target
    ablation: Ablation
    metric: float  # the clean run's metric at the position (after any soft-cap: what the logits say)
    linear_metric: float  # the frozen-scale readout the direct effects sum to (= metric without a soft-cap)
    activations: np.ndarray  # [L, m] at the position
    direct: np.ndarray  # [L, m]
    heads_direct: np.ndarray  # [L, H]
    components: dict[str, float]  # embed, attn_bias, mlp_bias, final_bias (summed over layers)
    neurons: pd.DataFrame  # the top-k by |direct|, with totals (see frame)
    heads: pd.DataFrame  # every head; the top ones by |direct| with totals
    conventions: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # forward, direct, total (not in the JSON: it would
    # differ between two runs of the same input)

    def frame(self, rows: int | None = None) -> pd.DataFrame:
        """The neurons by |direct| (largest first): rank, layer, neuron, label, activation, direct, replacement,
        direct_of_change, total, ratio, cancelled, amplified, reversed, kind, verified.

        rows None: the verified top-k; more than top-k: also the next rows by |direct|, unverified (total NaN)."""
        if rows is None or rows <= len(self.neurons):
            return self.neurons.head(rows) if rows is not None else self.neurons
        flat = np.abs(self.direct).ravel()
        order = np.argsort(-flat, kind="stable")[:rows]
        m = self.direct.shape[1]
        extra = pd.DataFrame(
            {
                "rank": np.arange(1, len(order) + 1),
                "layer": order // m,
                "neuron": order % m,
                "label": [label(int(i // m), int(i % m)) for i in order],
                "activation": self.activations.ravel()[order],
                "direct": self.direct.ravel()[order],
            }
        )
        verified = self.neurons.drop(columns=["rank", "label", "activation", "direct"])
        out = extra.merge(verified, on=["layer", "neuron"], how="left")
        for flag in ("cancelled", "amplified", "reversed", "verified"):
            out[flag] = out[flag].eq(True)
        out["kind"] = out["kind"].fillna("not verified")
        return out

    def to_json(self, rows: int | None = None) -> dict:
        """Everything, as JSON: `neurons` and `heads` are the frames by |direct| with the columns renamed by
        JSON_NAMES (direct_effect, total_effect: null where not verified); rows as in frame()."""
        P = len(self.prompt.ids)
        return to_jsonable(
            {
                "model": self.model,
                "prompt": self.prompt.text,
                "token_ids": self.prompt.ids,
                "tokens": self.prompt.pieces,
                "position": self.position,
                "token_at_position": self.prompt.pieces[self.position],
                "positions_run": P if self.position == P - 1 else self.position + 1,
                "metric": {
                    "description": f"{self.target.description} at position {self.position}",
                    "target": [{"token": t, "id": i} for t, i in zip(self.target.tokens, self.target.ids)],
                    "target_chosen": self.target.chosen,
                    "value": self.metric,
                    "linear_value": self.linear_metric,
                },
                "ablation": self.ablation,
                "thresholds": {
                    "cancelled": f"|total| < {CANCEL_BELOW} × |direct|",
                    "amplified": f"|total| > {AMPLIFY_ABOVE} × |direct|",
                    "reversed": "not cancelled, and the total has the other sign",
                    "cancelled_below": CANCEL_BELOW,
                    "amplified_above": AMPLIFY_ABOVE,
                },
                "conventions": self.conventions,
                "components": {
                    **self.components,
                    "neurons": float(self.direct.sum()),
                    "heads": float(self.heads_direct.sum()),
                },
                "neurons": self.frame(rows).rename(columns=JSON_NAMES),
                "heads": self.heads.rename(columns=JSON_NAMES),
            }
        )


def _flags(direct: np.ndarray, total: np.ndarray) -> dict[str, np.ndarray | list[str]]:
    """ratio, cancelled, amplified, reversed, kind for each row (NaN totals: not verified).

    kind: "cancelled" (|total| < CANCEL_BELOW |direct|), else "reversed" (the total has the other sign), else
    "amplified" (|total| > AMPLIFY_ABOVE |direct|), else "direct" (the total is mostly the direct effect)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(direct != 0, total / direct, np.nan)
    verified = ~np.isnan(total)
    cancelled = verified & (np.abs(total) < CANCEL_BELOW * np.abs(direct))
    amplified = verified & (np.abs(total) > AMPLIFY_ABOVE * np.abs(direct))
    reversed_ = verified & ~cancelled & (np.sign(total) * np.sign(direct) < 0)
    kind = [
        "not verified" if not v else "cancelled" if c else "reversed" if r else "amplified" if a else "direct"
        for v, c, r, a in zip(verified, cancelled, reversed_, amplified)
    ]
    return {"ratio": ratio, "cancelled": cancelled, "amplified": amplified, "reversed": reversed_, "kind": kind}


def _conventions(model: Model, ablation: Ablation, position: int, P: int) -> dict:
    w = model.weights
    out = {
        "direct_effect": "activation × W_out[n] read through the post-MLP norm (where there is one) and the final "
        "norm, each with its scale frozen at this run, onto the target's unembedding direction: linear, so the "
        "direct effects of all neurons, heads, the embedding and the biases sum to `linear_value`",
        "total_effect": "metric(clean) − metric(the neuron's activation at the position set to "
        + ("zero" if ablation == "zero" else "its corpus mean")
        + "), recomputed exactly from the next layer on",
        "ratio": "total / (activation − replacement) × the direct effect per unit of activation"
        if ablation == "mean"
        else "total / direct",
        "final_norm": "scale frozen at this run (the direct effects); the totals run the real norm",
        "positions": f"the run stops at position {position}: later positions cannot change it (causal)"
        if position < P - 1
        else "the whole prompt is run",
        "processing": model.processing,
        "bos": model.bos_convention(),
        "head_total_effect": "metric(clean) − metric(the head's output (hook_z) at the position zeroed)",
    }
    if w.arch.post_norms:
        out["post_norms"] = "each neuron's output passes the post-MLP norm with its scale frozen at this run"
    if w.arch.final_softcap is not None:
        out["softcap"] = (
            f"logits are soft-capped at {w.arch.final_softcap}; the cap is linearised at this run: a direct effect "
            "is its share of the pre-cap logit × the cap's slope there (1 − tanh²(logit / cap)); `value` and the "
            "totals are after the real cap"
        )
    if model.processing.get("center_unembed"):
        out["logits"] = "the unembedding is centred (TransformerLens): a single token's logit is relative to the "
        "mean logit over the vocabulary (the softmax is unchanged)"
    return out


# ---------------------------------------------------------------- the entry point


def _replacements(model: Model, ablation: Ablation, means: np.ndarray | torch.Tensor | None) -> torch.Tensor | None:
    """[L, m] values the ablated neurons are set to (mean ablation), or None (zero)."""
    if ablation not in ABLATIONS:
        raise UserError(f"ablation {ablation!r} unknown; use one of {', '.join(ABLATIONS)}")
    if ablation == "zero":
        return None
    if means is None:
        raise UserError(
            "mean ablation needs every neuron's corpus mean; build dashboards first: "
            f"python -m core dashboards build --model {model.name}"
        )
    means_t = torch.as_tensor(np.asarray(means), dtype=torch.float32)
    if tuple(means_t.shape) != (model.n_layers, model.d_mlp):
        raise UserError(
            f"the mean activations have shape {tuple(means_t.shape)}; {model.name} needs "
            f"({model.n_layers}, {model.d_mlp}): were they built for another model?"
        )
    return means_t.to(model.device)


@torch.no_grad()
def top_neurons(
    model: Model,
    prompt: Prompt,
    answer: str | int | None = None,
    wrong: str | int | None = None,
    position: int | None = None,
    top_k: int = DEFAULT_TOP_K,
    ablation: Ablation = "zero",
    means: np.ndarray | torch.Tensor | None = None,
    top_heads: int = DEFAULT_TOP_HEADS,
) -> Effects:
    """Direct effects of every neuron and head at `position` (default last) on the target, totals of the top ones.

    answer/wrong: tokens as text (" an") or ids; answer alone = its logit; neither = the model's top-1 token at
    the position. top_k neurons and top_heads heads (by |direct effect|) are verified with exact total effects.
    ablation "zero" sets the neuron's activation at the position to 0; "mean" to `means[layer, neuron]` ([L, m],
    e.g. core.corpus.rarity.corpus_means of built dashboards). Heads are always zeroed.
    """
    w = model.weights
    check_top_k(top_k, model.n_layers * model.d_mlp)
    if not 0 <= top_heads <= model.n_layers * model.n_heads:
        raise UserError(f"top heads {top_heads} is out of range; use 0..{model.n_layers * model.n_heads}")
    replacement = _replacements(model, ablation, means)
    pos = check_position(prompt, position)
    began = time.perf_counter()
    # Positions after `pos` cannot reach it: run the prompt up to it, and `pos` is the last position of the run.
    trace = fw.run(w, torch.tensor([prompt.ids[: pos + 1]], device=model.device))
    resid = trace.resid_final[0, -1]
    target = resolve_target(model, answer, wrong, resid)
    metric = float(target.value(w, resid))
    forward_s = time.perf_counter() - began

    began = time.perf_counter()
    direction, bias = target.readout(w, resid)
    dla = direct_attribution(w, trace, -1, direction, bias)
    per_unit, bias_share = neuron_readouts(w, trace, direction)
    acts = trace.stacked("mlp_post")[:, 0, -1]  # [L, m]
    direct = (acts * per_unit).float()
    linear = float(fw.norm_scale_apply(w, resid, fw.norm_scale(w, resid), w.lnf_w, None) @ direction) + dla.final_bias
    direct_s = time.perf_counter() - began

    began = time.perf_counter()
    flat = direct.abs().flatten()
    order = torch.argsort(flat, descending=True, stable=True)[:top_k].cpu()
    m = model.d_mlp
    picks = [(int(i) // m, int(i) % m) for i in order]
    idx = torch.tensor([l for l, _ in picks]), torch.tensor([n for _, n in picks])
    repl = torch.zeros(len(picks), device=w.W_out.device) if replacement is None else replacement[idx]
    head_flat = dla.heads.abs().flatten()
    head_order = torch.argsort(head_flat, descending=True, stable=True)[:top_heads].cpu()
    head_picks = [(int(i) // model.n_heads, int(i) % model.n_heads) for i in head_order]
    n_joins = _neuron_joins(w, trace, picks, repl)
    h_joins = _head_joins(w, trace, head_picks)
    ablated = resumed_metrics(w, trace, target, n_joins + h_joins).cpu().numpy()
    # resume_joined returns rows in the order of the joins: pick index of each output row.
    neuron_rows = [i for _, rows in _by_layer(picks) for i in rows]
    head_rows = [i for _, rows in _by_layer(head_picks) for i in rows]
    total = np.full(len(picks), np.nan)
    total[neuron_rows] = metric - ablated[: len(neuron_rows)]
    head_total = np.full(len(head_picks), np.nan)
    head_total[head_rows] = metric - ablated[len(neuron_rows) :]
    total_s = time.perf_counter() - began

    direct_np, acts_np, unit_np = direct.cpu().numpy(), acts.float().cpu().numpy(), per_unit.float().cpu().numpy()
    layers_arr, neurons_arr = idx[0].numpy(), idx[1].numpy()
    picked_direct = direct_np[layers_arr, neurons_arr]
    repl_np = repl.float().cpu().numpy()
    # The direct effect of the change the ablation makes (= direct for zero ablation): what the total compares to.
    change_direct = (acts_np[layers_arr, neurons_arr] - repl_np) * unit_np[layers_arr, neurons_arr]
    neurons = pd.DataFrame(
        {
            "rank": np.arange(1, len(picks) + 1),
            "layer": layers_arr,
            "neuron": neurons_arr,
            "label": [label(int(l), int(n)) for l, n in picks],
            "activation": acts_np[layers_arr, neurons_arr],
            "direct": picked_direct,
            "replacement": repl_np,
            "direct_of_change": change_direct,
            "total": total,
            **_flags(change_direct, total),
            "verified": ~np.isnan(total),
        }
    )
    heads = _heads_frame(dla.heads.cpu().numpy(), head_picks, head_total)
    return Effects(
        model=model.name,
        prompt=prompt,
        position=pos,
        target=target,
        ablation=ablation,
        metric=metric,
        linear_metric=linear,
        activations=acts_np,
        direct=direct_np,
        heads_direct=dla.heads.cpu().numpy(),
        components={
            "embed": dla.embed,
            "attn_bias": float(dla.attn_bias.sum()),
            "mlp_bias": float(bias_share.sum()),
            "final_bias": dla.final_bias,
        },
        neurons=neurons,
        heads=heads,
        conventions={**_conventions(model, ablation, pos, len(prompt.ids)), "dla_notes": list(dla.notes)},
        seconds={"forward": forward_s, "direct": direct_s, "total": total_s},
    )


def _heads_frame(heads_direct: np.ndarray, picks: list[tuple[int, int]], total: np.ndarray) -> pd.DataFrame:
    """Every head by |direct| (largest first): layer, head, label, direct, total (NaN: not verified), ratio, flags."""
    L, H = heads_direct.shape
    order = np.argsort(-np.abs(heads_direct).ravel(), kind="stable")
    layers, heads = order // H, order % H
    direct = heads_direct.ravel()[order]
    totals = np.full(len(order), np.nan)
    where = {pick: i for i, pick in enumerate(picks)}
    for row, (l, h) in enumerate(zip(layers, heads)):
        if (int(l), int(h)) in where:
            totals[row] = total[where[int(l), int(h)]]
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(order) + 1),
            "layer": layers,
            "head": heads,
            "label": [f"L{l}.H{h}" for l, h in zip(layers, heads)],
            "direct": direct,
            "total": totals,
            **_flags(direct, totals),
            "verified": ~np.isnan(totals),
        }
    )
