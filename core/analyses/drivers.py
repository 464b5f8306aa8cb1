"""What drives a neuron: its input split over every upstream component, path patching into it, attention patterns.

Direct input attribution. Neuron `L.n` at position p reads the residual stream x entering its MLP (resid_mid of
layer L; resid_pre with parallel attention + MLP, GPT-NeoX, whose MLP never sees its own layer's attention).
x is a sum of component outputs: the (scaled) token embedding, the positional embedding, every head of every
layer that writes before the MLP reads, every earlier MLP's output, and the attention biases. With the input
norm's scale frozen at its value in this run (LayerNorm also subtracts the mean, which is linear), the norm is
linear, so each pre-activation — `in` for plain MLPs, `gate` and `up` for gated ones — splits exactly into one
term per component plus a constant (`bias`: b_in, the norm's bias, the attention output biases). Through a
post-attention norm (Gemma 2/3, OLMo 2) each head's share of attn_out is taken with that norm's scale frozen
too (as core.analyses.lens does for DLA), so the heads of a layer sum to attn_out exactly; an MLP's output is what
joins the residual (after its post-norm).

First-order share: the component's term in the post-activation to first order, ∂post/∂pre × contribution
(gated: act'(g)·u·g_c + act(g)·u_c). The shares sum to the first-order estimate of the activation, not to it.

Path patching into the neuron (clean/corrupted pair): for one component, its clean output replaces its corrupted
output *only* in the input of neuron L.n (the rest of the model sees the corrupted run); the neuron's input
norm and activation are recomputed exactly. neuron_restored = (patched − corrupted activation) /
(clean − corrupted activation) at p; logit_diff_restored = the logit-diff score when the neuron's activation so
patched (every position) goes into the corrupted run. One batched pass: one row per component, resuming from
layer L + 1 over the positions from the first clean/corrupted difference on.

Attention patterns: query × key weights of one head, recomputed from the run's keys; "reads from" splits a
head's contribution to the neuron at p over the source positions it attends to (pattern × value path).

Positions count from 0 over the tokens the model sees (BOS included where the model's convention prepends it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from core.analyses import patching
from core.analyses.congruence import check_neuron
from core.engine import forward as fw
from core.engine.metric import DESCRIPTION
from core.engine.model import Model
from core.engine.tokens import Prompt
from core.errors import UserError
from core.frames import by_magnitude
from core.jsonable import to_jsonable

NORM_NOTE = (
    "the neuron's input norm (and any post-attention norm) has its scale frozen at its value in this run, so "
    "the contributions are linear and sum exactly to the pre-activation(s)"
)
SHARE_NOTE = (
    "first_order = ∂post/∂pre × contribution at this run's pre-activation(s); the shares sum to the "
    "first-order estimate of the post-activation, not to it exactly"
)
PATH_NOTE = (
    "path patching: the component's clean output replaces its corrupted output only in the input of this "
    "neuron (every other reader sees the corrupted run); the neuron's input norm and activation are recomputed "
    "exactly. neuron_restored = (patched − corrupted activation) / (clean − corrupted activation) at the "
    "position; logit_diff_restored = (patched − corrupted logit diff) / (clean − corrupted logit diff) with the "
    "neuron's activation so patched at every position"
)
POSITION_NOTE = "positions count from 0 over the tokens the model sees (BOS included where it is prepended)"


def head_label(layer: int, head: int) -> str:
    return f"L{layer}.H{head}"


def input_keys(model: Model) -> tuple[str, ...]:
    """The pre-activation(s) a neuron reads: ("gate", "up") for gated MLPs, ("in",) otherwise."""
    return ("gate", "up") if model.weights.arch.gated else ("in",)


def check_position(prompt: Prompt, position: int | None) -> int:
    """An absolute position of the prompt (None = the last; negative counts from the end)."""
    P = len(prompt.ids)
    if position is None:
        return P - 1
    absolute = position + P if position < 0 else position
    if not 0 <= absolute < P:
        raise UserError(
            f"position {position} is outside the prompt; it has {P} tokens: use 0..{P - 1} (or -1 for the last)"
        )
    return absolute


def check_head(model: Model, layer: int, head: int) -> tuple[int, int]:
    if not 0 <= layer < model.n_layers:
        raise UserError(f"layer {layer} is out of range; {model.name} has layers 0..{model.n_layers - 1}")
    if not 0 <= head < model.n_heads:
        raise UserError(f"head {head} is out of range; {model.name} has heads 0..{model.n_heads - 1} per layer")
    return layer, head


def parse_head(model: Model, text: str) -> tuple[int, int]:
    """'L3.H2' or '3.2' → (3, 2), range-checked."""
    import re

    match = re.fullmatch(r"\s*L?(-?\d+)\s*[.,:/]\s*H?(-?\d+)\s*", str(text), flags=re.IGNORECASE)
    if not match:
        raise UserError(f"head {text!r} not understood; write it as L3.H2 or 3.2")
    return check_head(model, int(match.group(1)), int(match.group(2)))


# ---------------------------------------------------------------- the linear pieces


@dataclass
class _Reader:
    """The neuron's read-out, linear once the scales are frozen: d-vector → its pre-activation(s)."""

    model: Model
    layer: int
    neuron: int

    @property
    def w(self) -> fw.Weights:
        return self.model.weights

    def reads_resid_pre(self) -> bool:
        return self.w.arch.parallel

    def columns(self) -> torch.Tensor:
        """[d, k]: W_in[:, n] (and W_gate[:, n] first for gated MLPs), with the norm's weight applied."""
        w, L, n = self.w, self.layer, self.neuron
        cols = [w.W_in[L][:, n]]
        if w.arch.gated:
            assert w.W_gate is not None
            cols = [w.W_gate[L][:, n], w.W_in[L][:, n]]
        out = torch.stack(cols, dim=-1)
        if w.arch.pre_norms and w.ln2_w is not None:  # processing "none": the norm weight is not folded
            out = out * w.ln2_w[L][:, None]
        return out

    def constant(self) -> torch.Tensor:
        """[k]: what the pre-activation(s) get whatever the input: b_in (not the gate) and the norm's bias."""
        w, L, n = self.w, self.layer, self.neuron
        k = 2 if w.arch.gated else 1
        out = torch.zeros(k, dtype=w.W_in.dtype, device=w.W_in.device)
        out[-1] = w.b_in[L][n]
        if w.arch.pre_norms and w.ln2_b is not None:
            cols = [w.W_in[L][:, n]] if not w.arch.gated else [w.W_gate[L][:, n], w.W_in[L][:, n]]  # type: ignore[index]
            out = out + w.ln2_b[L] @ torch.stack(cols, dim=-1)
        return out

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The input norm's divisor on x [..., d]: [..., 1] (1 without a pre-norm, OLMo 2)."""
        if not self.w.arch.pre_norms:
            return torch.ones_like(x[..., :1])
        return fw.norm_scale(self.w, x)

    def linear(self, vectors: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """vectors [..., d] with the scale frozen → their (bias-free) pre-activation terms [..., k]."""
        if self.w.arch.pre_norms and self.w.norm == "LN":
            vectors = vectors - vectors.mean(-1, keepdim=True)
        return (vectors / scale) @ self.columns()

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        """The exact pre-activation(s) of inputs x [..., d]: [..., k] (the norm recomputed)."""
        w, L = self.w, self.layer
        normed = fw.norm(w, x, fw.at(w.ln2_w, L), fw.at(w.ln2_b, L)) if w.arch.pre_norms else x
        cols = [w.W_in[L][:, self.neuron]]
        if w.arch.gated:
            assert w.W_gate is not None
            cols = [w.W_gate[L][:, self.neuron], w.W_in[L][:, self.neuron]]
        pre = normed @ torch.stack(cols, dim=-1)
        pre[..., -1] += w.b_in[L][self.neuron]
        return pre

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        """Post-activation from pre-activation(s) [..., k]: [...]."""
        act = fw.ACTIVATIONS[self.w.arch.act]
        if self.w.arch.gated:
            return act(pre[..., 0]) * pre[..., 1]
        return act(pre[..., 0])

    def gradient(self, pre: torch.Tensor) -> torch.Tensor:
        """∂post/∂pre at pre [k]: [k]."""
        with torch.enable_grad():
            point = pre.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.activation(point), point)
        return grad


def _head_outputs(model: Model, trace: fw.Trace, layer: int, position: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each head's and the bias's share of attn_out of `layer` at `position`: ([H, d], [d]); they sum to attn_out.

    Through a post-attention norm its scale is frozen at this run's value (as in core.analyses.lens).
    """
    w = model.weights
    heads = torch.einsum("nh,nhd->nd", trace.z[layer][0, position], w.W_O[layer])
    bias = w.b_O[layer]
    if w.arch.post_norms:
        pre = heads.sum(0) + bias
        scale = fw.rms_scale(pre, w.eps)
        gain = w.attn_post_w[layer] if w.attn_post_w is not None else 1.0
        heads, bias = heads / scale * gain, bias / scale * gain
    return heads, bias


def _post_gain(model: Model, trace: fw.Trace, layer: int, position: int) -> torch.Tensor | float:
    """What multiplies a head's pre-norm output at `position` on its way into attn_out (frozen post-norm), or 1."""
    w = model.weights
    if not w.arch.post_norms:
        return 1.0
    pre = fw.attn_pre_norm_out(w, layer, trace.z[layer][0, position])
    gain = w.attn_post_w[layer] if w.attn_post_w is not None else 1.0
    return gain / fw.rms_scale(pre, w.eps)


def _writing_layers(model: Model, layer: int) -> tuple[range, range]:
    """(attention layers, MLP layers) that write into the input of layer `layer`'s MLP."""
    attn_upto = layer if model.weights.arch.parallel else layer + 1
    return range(attn_upto), range(layer)


# ---------------------------------------------------------------- direct input attribution


@dataclass
class Drivers:
    """A neuron's input at one position split over every upstream component (and, with a pair, path patching)."""

    model_name: str
    layer: int
    neuron: int
    position: int
    prompt: Prompt
    inputs: dict[str, float]  # {"in": x} or {"gate": g, "up": u}
    post_activation: float
    norm_scale: float
    components: pd.DataFrame  # label, kind, layer, head, <input keys>, first_order (sorted by |first_order|)
    conventions: dict[str, Any]
    path_patching: pd.DataFrame | None = None  # label, kind, layer, head, neuron_restored, logit_diff_restored
    pair: dict[str, Any] | None = None  # the pair's runs: clean/corrupted activation and logit diff, token ids
    reads_from: dict[str, pd.DataFrame] = field(default_factory=dict)  # head label → its sources (top heads)

    @property
    def keys(self) -> list[str]:
        return list(self.inputs)

    def label(self) -> str:
        return f"L{self.layer}.N{self.neuron}"

    def top(self, top_k: int | None = None) -> pd.DataFrame:
        return self.components if top_k is None else self.components.head(top_k)

    def top_heads(self, k: int = 3) -> list[tuple[int, int]]:
        heads = self.components[self.components.kind == "head"].head(k)
        return [(int(r.layer), int(r.head)) for r in heads.itertuples()]

    def to_json(self, top_k: int | None = None) -> dict:
        keys = self.keys
        components = [
            {
                "label": r["label"],
                "kind": r["kind"],
                "layer": None if r["layer"] < 0 else int(r["layer"]),
                "head": None if r["head"] < 0 else int(r["head"]),
                "contribution": {k: r[k] for k in keys},
                "first_order": r["first_order"],
            }
            for r in self.top(top_k).to_dict("records")
        ]
        out: dict[str, Any] = {
            **self.conventions,
            "neuron": {"layer": self.layer, "neuron": self.neuron, "label": self.label()},
            "position": self.position,
            "prompt": self.prompt.text,
            "token_ids": self.prompt.ids,
            "tokens": self.prompt.pieces,
            "inputs": self.inputs,
            "post_activation": self.post_activation,
            "norm_scale": self.norm_scale,
            "components": components,
        }
        if self.path_patching is not None:
            frame = self.path_patching if top_k is None else self.path_patching.head(top_k)
            out["pair"] = self.pair
            out["path_patching"] = [
                {
                    "label": r["label"],
                    "kind": r["kind"],
                    "layer": None if r["layer"] < 0 else int(r["layer"]),
                    "head": None if r["head"] < 0 else int(r["head"]),
                    "neuron_restored": r["neuron_restored"],
                    "logit_diff_restored": r["logit_diff_restored"],
                }
                for r in frame.to_dict("records")
            ]
        if self.reads_from:
            out["reads_from"] = {name: frame for name, frame in self.reads_from.items()}
        return to_jsonable(out)


def conventions(model: Model, keys: list[str]) -> dict[str, Any]:
    return {
        "processing": model.processing["name"],
        "bos": model.bos_convention(),
        "position_convention": POSITION_NOTE,
        "norm_scale_frozen": True,
        "norm_note": NORM_NOTE,
        "share_note": SHARE_NOTE,
        "inputs_meaning": (
            "gate = x·W_gate[:, n], up = x·W_in[:, n] + b_in[n] (x: the normed MLP input); "
            f"activation = {model.weights.arch.act}(gate)·up"
            if "gate" in keys
            else f"in = x·W_in[:, n] + b_in[n] (x: the normed MLP input); activation = {model.weights.arch.act}(in)"
        ),
        "reads": "resid_pre (parallel attention + MLP: its own layer's attention does not feed it)"
        if model.weights.arch.parallel
        else "resid_mid (after its own layer's attention)",
    }


@torch.no_grad()
def component_vectors(
    model: Model, trace: fw.Trace, prompt_ids: list[int], layer: int, position: int
) -> tuple[list[tuple[str, str, int, int]], torch.Tensor]:
    """Every component's output at `position` as it sits in the neuron's input residual: (rows, [C, d]).

    rows: (label, kind, layer, head) with layer/head −1 where they do not apply. The vectors sum exactly to the
    residual the neuron's MLP reads (resid_mid of `layer`, or resid_pre with parallel attention + MLP).
    """
    w = model.weights
    rows: list[tuple[str, str, int, int]] = []
    vectors: list[torch.Tensor] = []
    token = prompt_ids[position]
    embed = w.W_E[token] * w.arch.embed_scale if w.arch.embed_scale != 1.0 else w.W_E[token]
    rows.append(("embed", "embed", -1, -1))
    vectors.append(embed)
    if w.W_pos is not None:
        rows.append(("pos_embed", "pos_embed", -1, -1))
        vectors.append(w.W_pos[position])
    bias = torch.zeros_like(embed)
    attn_layers, mlp_layers = _writing_layers(model, layer)
    for current in range(layer + 1):
        if current in attn_layers:
            heads, head_bias = _head_outputs(model, trace, current, position)
            for h in range(w.n_heads):
                rows.append((head_label(current, h), "head", current, h))
                vectors.append(heads[h])
            bias = bias + head_bias
        if current in mlp_layers:
            rows.append((f"mlp{current}", "mlp", current, -1))
            vectors.append(trace.mlp_out[current][0, position])
    rows.append(("bias", "bias", -1, -1))
    vectors.append(bias)
    return rows, torch.stack(vectors)


def neuron_input(model: Model, trace: fw.Trace, layer: int) -> torch.Tensor:
    """The residual stream the neuron's MLP reads: [B, P, d]."""
    return trace.resid_pre[layer] if model.weights.arch.parallel else trace.resid_mid[layer]


@torch.no_grad()
def decompose(
    model: Model,
    prompt: Prompt,
    layer: int,
    neuron: int,
    position: int | None = None,
    trace: fw.Trace | None = None,
) -> Drivers:
    """Direct input attribution of neuron L.n at `position` (None: the last) of `prompt`; see the module doc."""
    check_neuron(model, layer, neuron)
    position = check_position(prompt, position)
    if trace is None:
        trace = fw.run(model.weights, prompt.tensor(model.device))
    reader = _Reader(model, layer, neuron)
    keys = list(input_keys(model))
    rows, vectors = component_vectors(model, trace, prompt.ids, layer, position)
    x = neuron_input(model, trace, layer)[0, position]
    scale = reader.scale(x)
    terms = reader.linear(vectors, scale)  # [C, k]
    terms[-1] += reader.constant()  # the bias row also carries b_in and the norm's bias
    pre = reader.exact(x)  # [k], the real pre-activation(s)
    post = float(reader.activation(pre))
    first_order = (terms * reader.gradient(pre)).sum(-1)
    frame = pd.DataFrame(rows, columns=["label", "kind", "layer", "head"])
    for i, k in enumerate(keys):
        frame[k] = terms[:, i].float().cpu().numpy()
    frame["first_order"] = first_order.float().cpu().numpy()
    frame = by_magnitude(frame, "first_order")
    return Drivers(
        model.name,
        layer,
        neuron,
        position,
        prompt,
        {k: float(pre[i]) for i, k in enumerate(keys)},
        post,
        float(scale.reshape(())),
        frame,
        conventions(model, keys),
    )


# ---------------------------------------------------------------- path patching into the neuron


@dataclass
class _PathRows:
    rows: list[tuple[str, str, int, int]]
    deltas: torch.Tensor  # [C, S, d]: what each component's clean output changes in the neuron's input


@torch.no_grad()
def _path_deltas(setup: patching.Setup, layer: int) -> _PathRows:
    """For every upstream component, (clean − corrupted output) as it sits in the neuron's input, at positions
    start.. (earlier positions are equal in both runs). A head behind a post-norm: the norm is recomputed on the
    corrupted pre-norm output with this head's clean output in it (exact, as patching does)."""
    model, start = setup.model, setup.start_pos
    w = model.weights
    clean, corr = setup.clean_trace, setup.corrupted_trace
    rows: list[tuple[str, str, int, int]] = [("embed", "embed", -1, -1)]
    c_ids = torch.tensor(setup.clean.ids[start:], device=model.device)
    k_ids = torch.tensor(setup.corrupted.ids[start:], device=model.device)
    deltas = [((w.W_E[c_ids] - w.W_E[k_ids]) * w.arch.embed_scale)[None]]
    attn_layers, mlp_layers = _writing_layers(model, layer)
    for current in range(layer + 1):
        if current in attn_layers:
            dz = (clean.z[current] - corr.z[current])[0, start:]  # [S, H, h]
            change = torch.einsum("snh,nhd->nsd", dz, w.W_O[current])  # [H, S, d], before any post-norm
            if w.arch.post_norms:
                base_pre = fw.attn_pre_norm_out(w, current, corr.z[current][:, start:])  # [1, S, d]
                change = fw.attn_post(w, current, base_pre + change) - corr.attn_out[current][:, start:]
            deltas.append(change)
            rows += [(head_label(current, h), "head", current, h) for h in range(w.n_heads)]
        if current in mlp_layers:
            deltas.append((clean.mlp_out[current] - corr.mlp_out[current])[:, start:])
            rows.append((f"mlp{current}", "mlp", current, -1))
    return _PathRows(rows, torch.cat(deltas))


@torch.no_grad()
def path_patch(
    setup: patching.Setup, layer: int, neuron: int, position: int, max_batch_tokens: int | None = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Path patching of every upstream component into neuron L.n (see the module doc); highest neuron_restored first.

    Returns (frame: label, kind, layer, head, patched_activation, neuron_restored, logit_diff_restored; the
    pair's facts: clean/corrupted activation at the position, logit diffs, the whole-input identity).
    """
    model = setup.model
    w, start = model.weights, setup.start_pos
    check_neuron(model, layer, neuron)
    if setup.ablation != "clean":
        raise UserError("path patching into a neuron patches clean outputs into the corrupted run (ablation 'clean')")
    reader = _Reader(model, layer, neuron)
    paths = _path_deltas(setup, layer)
    base_input = neuron_input(model, setup.corrupted_trace, layer)[:, start:]  # [1, S, d]
    clean_input = neuron_input(model, setup.clean_trace, layer)[:, start:]
    base_post = reader.activation(reader.exact(base_input))[0]  # [S]
    clean_post = reader.activation(reader.exact(clean_input))[0]
    patched_post = reader.activation(reader.exact(base_input + paths.deltas))  # [C, S]
    # The neuron's patched activation at every position goes into the corrupted run: one row per component.
    d_post = patched_post - base_post  # [C, S]
    after = patching.entry(setup, "mlp_out", layer)[2][:, start:]
    change = d_post[:, :, None] * w.W_out[layer][neuron]
    joins = [fw.Join(layer + 1, "pre", after + patching.mlp_delta(setup, layer, change, start))]
    batch = max_batch_tokens or patching.default_batch_tokens(model, len(setup.clean.ids))
    logit_scores = patching.score_joins(setup, joins, start, batch)
    if position >= start:
        gap = float(clean_post[position - start] - base_post[position - start])
        moved = (patched_post[:, position - start] - base_post[position - start]).float().cpu().numpy()
        restored = moved / gap if abs(gap) > 1e-6 else np.full(len(moved), np.nan)
        clean_act, corr_act = float(clean_post[position - start]), float(base_post[position - start])
        patched_act = patched_post[:, position - start].float().cpu().numpy()
    else:  # before the first difference both runs are equal there: nothing to restore at this position
        same_input = neuron_input(model, setup.clean_trace, layer)[0, position]
        gap = 0.0
        clean_act = corr_act = float(reader.activation(reader.exact(same_input)))
        restored = np.full(len(paths.rows), np.nan)
        patched_act = np.full(len(paths.rows), clean_act)
    frame = pd.DataFrame(paths.rows, columns=["label", "kind", "layer", "head"])
    frame["patched_activation"] = patched_act
    frame["neuron_restored"] = restored
    frame["logit_diff_restored"] = logit_scores
    order = np.argsort(-np.nan_to_num(restored, nan=-np.inf), kind="stable")
    frame = frame.iloc[order].reset_index(drop=True)
    facts = {
        "clean": setup.clean.text,
        "corrupted": setup.corrupted.text,
        "clean_token_ids": setup.clean.ids,
        "corrupted_token_ids": setup.corrupted.ids,
        "answer": {"token": model.token_str(setup.metric.answer), "id": setup.metric.answer},
        "wrong": {"token": model.token_str(setup.metric.wrong), "id": setup.metric.wrong},
        "metric": DESCRIPTION,
        "clean_logit_diff": setup.clean_logit_diff,
        "corrupted_logit_diff": setup.corrupted_logit_diff,
        "clean_activation": clean_act,
        "corrupted_activation": corr_act,
        "recomputed_from_position": start,
        "path_note": PATH_NOTE,
    }
    if abs(gap) <= 1e-6:
        facts["neuron_restored_note"] = (
            f"the neuron's activation at position {position} is the same in both runs: neuron_restored is undefined"
        )
    return frame, facts


# ---------------------------------------------------------------- attention patterns


@torch.no_grad()
def patterns(model: Model, trace: fw.Trace, layer: int) -> torch.Tensor:
    """Every head's attention pattern of `layer` on the run in `trace` (batch row 0): [H, P(query), P(key)].

    Recomputed from resid_pre with the engine's own pieces (norm, qk-norm, rotary with the score scale, soft-cap,
    causal and sliding-window masks); keys come from the trace.
    """
    w = model.weights
    resid = trace.resid_pre[layer][:1]
    q, k, _ = fw.queries_keys_values(w, layer, resid)  # [1, P, n, h]
    k = k.repeat_interleave(w.n_heads // w.n_kv_heads, dim=2)  # query head i reads kv head i // group
    scores = torch.einsum("qnh,knh->nqk", q[0], k[0])
    pos = torch.arange(resid.shape[1], device=resid.device)
    hidden = fw.hidden_keys(w, layer, pos[:, None], pos[None, :])
    return fw.softcap(scores, w.arch.attn_softcap).masked_fill(hidden, torch.finfo(q.dtype).min).softmax(-1)


@dataclass
class AttentionPattern:
    layer: int
    head: int
    prompt: Prompt
    pattern: np.ndarray  # [P(query), P(key)]
    window: int | None

    def label(self) -> str:
        return head_label(self.layer, self.head)

    def to_json(self) -> dict:
        return to_jsonable(
            {
                "layer": self.layer,
                "head": self.head,
                "label": self.label(),
                "prompt": self.prompt.text,
                "token_ids": self.prompt.ids,
                "tokens": self.prompt.pieces,
                "pattern": self.pattern,
                "pattern_meaning": "pattern[query][key]: attention weight from the query position to the key "
                "position; each row sums to 1; " + POSITION_NOTE,
                "sliding_window": self.window,
            }
        )


@torch.no_grad()
def attention_pattern(
    model: Model, prompt: Prompt, layer: int, head: int, trace: fw.Trace | None = None
) -> AttentionPattern:
    check_head(model, layer, head)
    if trace is None:
        trace = fw.run(model.weights, prompt.tensor(model.device), record={"resid_pre"})
    pattern = patterns(model, trace, layer)[head].float().cpu().numpy()
    return AttentionPattern(layer, head, prompt, pattern, model.weights.arch.window(layer))


@torch.no_grad()
def reads_from(
    model: Model,
    prompt: Prompt,
    head: tuple[int, int],
    neuron: tuple[int, int],
    position: int | None = None,
    trace: fw.Trace | None = None,
) -> pd.DataFrame:
    """Where head L.H at `position` reads from, and what each source moves into neuron L'.n's input.

    source, token, id, attention, <input keys> (each source's contribution through the head's OV circuit to the
    neuron's pre-activation(s), norm scales frozen as in `decompose`), first_order. The contributions over all
    sources sum to the head's contribution in `decompose`.
    """
    (h_layer, h), (layer, n) = check_head(model, *head), check_neuron(model, *neuron)
    position = check_position(prompt, position)
    attn_layers, _ = _writing_layers(model, layer)
    if h_layer not in attn_layers:
        raise UserError(
            f"head {head_label(h_layer, h)} does not write into the input of L{layer}.N{n}: "
            f"use a head of layers 0..{attn_layers.stop - 1}"
            + (
                " (parallel attention + MLP: its own layer's attention does not feed it)"
                if model.weights.arch.parallel
                else ""
            )
        )
    w = model.weights
    if trace is None:
        trace = fw.run(w, prompt.tensor(model.device))
    reader = _Reader(model, layer, n)
    pattern = patterns(model, trace, h_layer)[h, position]  # [P]
    group = w.n_heads // w.n_kv_heads
    v = trace.v[h_layer][0, : position + 1, h // group]  # [S, h]
    moved = (pattern[: position + 1, None] * v) @ w.W_O[h_layer, h]  # [S, d]
    moved = moved * _post_gain(model, trace, h_layer, position)
    x = neuron_input(model, trace, layer)[0, position]
    terms = reader.linear(moved, reader.scale(x))  # [S, k]
    pre = reader.exact(x)
    keys = list(input_keys(model))
    frame = pd.DataFrame(
        {
            "source": range(position + 1),
            "token": prompt.pieces[: position + 1],
            "id": prompt.ids[: position + 1],
            "attention": pattern[: position + 1].float().cpu().numpy(),
        }
    )
    for i, k in enumerate(keys):
        frame[k] = terms[:, i].float().cpu().numpy()
    frame["first_order"] = (terms * reader.gradient(pre)).sum(-1).float().cpu().numpy()
    return frame


# ---------------------------------------------------------------- an upstream MLP's neurons


@torch.no_grad()
def upstream_neurons(
    drivers: Drivers, model: Model, mlp_layer: int, top_k: int = 10, trace: fw.Trace | None = None
) -> pd.DataFrame:
    """The neurons of upstream MLP `mlp_layer` that drive drivers' neuron most (first-order), at its position.

    layer, neuron, label, activation, <input keys>, first_order. Without a post-MLP norm neuron i adds
    post_i × W_out[i]; with one, the norm's scale is frozen at this run's value (so the neurons sum to mlp_out
    minus its bias's share).
    """
    layer, position = drivers.layer, drivers.position
    if not 0 <= mlp_layer < layer:
        raise UserError(f"MLP {mlp_layer} does not write into the input of {drivers.label()}: use 0..{layer - 1}")
    w = model.weights
    if trace is None:
        trace = fw.run(w, drivers.prompt.tensor(model.device))
    reader = _Reader(model, layer, drivers.neuron)
    post = trace.mlp_post[mlp_layer][0, position]  # [m]
    x = neuron_input(model, trace, layer)[0, position]
    per_neuron = reader.linear(w.W_out[mlp_layer], reader.scale(x))  # [m, k] per unit activation
    if w.arch.post_norms:
        linear = fw.mlp_linear(w, mlp_layer, post)
        gain = w.mlp_post_w[mlp_layer] if w.mlp_post_w is not None else 1.0
        per_neuron = reader.linear(w.W_out[mlp_layer] * gain / fw.rms_scale(linear, w.eps), reader.scale(x))
    terms = post[:, None] * per_neuron
    first = (terms * reader.gradient(reader.exact(x))).sum(-1)
    top = torch.argsort(first.abs(), descending=True)[:top_k]
    keys = list(input_keys(model))
    frame = pd.DataFrame(
        {
            "layer": mlp_layer,
            "neuron": top.cpu().numpy(),
            "label": [f"L{mlp_layer}.N{int(i)}" for i in top],
            "activation": post[top].float().cpu().numpy(),
        }
    )
    for i, k in enumerate(keys):
        frame[k] = terms[top, i].float().cpu().numpy()
    frame["first_order"] = first[top].float().cpu().numpy()
    return frame


# ---------------------------------------------------------------- everything at once


@torch.no_grad()
def drivers(
    model: Model,
    prompt: Prompt,
    layer: int,
    neuron: int,
    position: int | None = None,
    pair: tuple[Prompt, Prompt, int, int] | None = None,
    reads_from_heads: int = 0,
) -> Drivers:
    """decompose on `prompt`; with pair = (clean, corrupted, answer, wrong), path patching at the same position;
    reads_from_heads: also where the top k heads (by |first_order|) read from."""
    check_neuron(model, layer, neuron)
    position = check_position(prompt, position)
    if pair is not None:
        check_position(pair[0], position)  # the decomposition's prompt may differ from the pair's
    setup = None
    if pair is not None:
        setup = patching.prepare(model, *pair)
    # the pair's clean run is the decomposition's run when the prompts are the same tokens (the usual case)
    same = setup is not None and setup.clean.ids == prompt.ids
    trace = setup.clean_trace if setup is not None and same else fw.run(model.weights, prompt.tensor(model.device))
    result = decompose(model, prompt, layer, neuron, position, trace)
    if setup is not None:
        result.path_patching, result.pair = path_patch(setup, layer, neuron, position)
    for head in result.top_heads(reads_from_heads):
        result.reads_from[head_label(*head)] = reads_from(model, prompt, head, (layer, neuron), position, trace)
    return result
