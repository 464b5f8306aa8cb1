"""Steering: change neurons and watch the model write differently; and a neuron's dose–response curve.

An `Intervention` changes one neuron of one layer at some positions:
- set / scale / add / negate act on the neuron's activation — the MLP's hidden activation that multiplies W_out
  (TransformerLens `mlp.hook_post`; act(gate)·up in a gated MLP), the quantity every other page calls the
  neuron's activation. With a post-MLP norm (Gemma 2/3, OLMo 2) the change passes through that norm, as it would in
  the model.
- direction adds value × W_out[layer, neuron] to the residual stream right after the layer's MLP (after its
  post-norm, if any): "push the residual along what the neuron writes". Without a post-norm this equals `add` on
  the activation (W_out is linear); with one they differ, which is the comparison worth making.
positions: "all" (the prompt and every new token: the default, as if the model had this neuron changed),
"prompt", "new", or absolute indices inside the prompt. An intervention on a prompt position changes that
position's cached keys and values, so every later token sees it (core.analyses.generate).

`steer` generates baseline and steered continuations in one batch (several seeds when sampling); `dose_response`
clamps one neuron over a range of values, all in one batched forward, and reads the answer/wrong probabilities
and their logit diff at the last position.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import pandas as pd
import torch

from core.analyses import generate as gen
from core.analyses.congruence import check_neuron, label, parse_neuron
from core.engine import forward as fw
from core.engine import memory, tokens
from core.engine.model import Model
from core.engine.tokens import Prompt
from core.errors import UserError
from core.hosting import limits
from core.jsonable import to_jsonable

Op = Literal["set", "scale", "add", "negate", "direction"]
OPS: tuple[Op, ...] = get_args(Op)
OP_HELP = {
    "set": "clamp the activation to the value",
    "scale": "multiply the activation by the value",
    "add": "add the value to the activation",
    "negate": "multiply the activation by −1 (the post's experiment)",
    "direction": "add value × W_out[layer, neuron] to the residual after the layer's MLP",
}
MAX_INTERVENTIONS = 32
HOSTED_MAX_INTERVENTIONS = 4
MAX_ABS_VALUE = 1e4  # beyond this every activation saturates the softmax; a typo, not an experiment
DOSE_POINTS = 21
MAX_DOSE_POINTS = 201
NAMED_POSITIONS = ("all", "prompt", "new")


def intervention_cap() -> int:
    return HOSTED_MAX_INTERVENTIONS if limits().hosted else MAX_INTERVENTIONS


# ---------------------------------------------------------------- interventions


@dataclass(frozen=True)
class Intervention:
    """One neuron changed: op ∈ OPS, value (ignored by negate), positions "all" | "prompt" | "new" | indices."""

    layer: int
    neuron: int
    op: Op
    value: float = 0.0
    positions: gen.Positions = "all"

    @property
    def spec(self) -> str:
        """The CLI's spelling: L25.N1527:set=-4, L25.N1527:negate."""
        head = f"{label(self.layer, self.neuron)}:{self.op}"
        return head if self.op == "negate" else f"{head}={self.value:g}"

    def edit(self, rows: tuple[int, ...] | None) -> gen.Edit:
        """What the forward does for it (core.analyses.generate.Edit)."""
        if self.op == "direction":
            return gen.Edit(self.layer, self.neuron, "resid", "add", self.value, self.positions, rows)
        if self.op == "negate":
            return gen.Edit(self.layer, self.neuron, "post", "scale", -1.0, self.positions, rows)
        return gen.Edit(self.layer, self.neuron, "post", self.op, self.value, self.positions, rows)

    def to_json(self) -> dict:
        positions = self.positions if isinstance(self.positions, str) else list(self.positions)
        return {
            "spec": self.spec,
            "layer": self.layer,
            "neuron": self.neuron,
            "op": self.op,
            "value": None if self.op == "negate" else self.value,
            "positions": positions,
        }


def parse_positions(text: str | Sequence[int], prompt_len: int | None = None) -> gen.Positions:
    """'all' | 'prompt' | 'new' | '3,5,-1' (indices; negative counts from the prompt's end) → Positions."""
    if isinstance(text, str):
        value = text.strip().lower()
        if value in NAMED_POSITIONS:
            return value  # type: ignore[return-value]  # one of the Literal's names
        try:
            indices = [int(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise UserError(
                f"positions {text!r} not understood; use all, prompt, new, or prompt indices like 3,5,-1"
            ) from None
    else:
        indices = [int(i) for i in text]
    if not indices:
        raise UserError("no positions given; use all, prompt, new, or prompt indices like 3,5,-1")
    return check_positions(tuple(indices), prompt_len)


def check_positions(positions: gen.Positions, prompt_len: int | None) -> gen.Positions:
    """Named positions pass; indices must lie inside the prompt (negative ones count from its end)."""
    if isinstance(positions, str):
        if positions not in NAMED_POSITIONS:
            raise UserError(f"positions {positions!r} unknown; use all, prompt, new, or prompt indices")
        return positions
    if prompt_len is None:
        if any(i < 0 for i in positions):
            raise UserError("negative positions need the prompt; give absolute indices")
        return tuple(sorted(set(positions)))
    bad = [i for i in positions if not -prompt_len <= i < prompt_len]
    if bad:
        raise UserError(
            f"position {bad[0]} is outside the prompt ({prompt_len} tokens: 0..{prompt_len - 1}); "
            "use 'new' to steer generated tokens"
        )
    return tuple(sorted({i % prompt_len for i in positions}))


_SPEC = re.compile(r"\s*(?P<neuron>[^:]+?)\s*:\s*(?P<op>[A-Za-z_]+)\s*(?:=\s*(?P<value>\S+)\s*)?")


def parse_intervention(
    model: Model, spec: str, positions: str | Sequence[int] = "all", prompt_len: int | None = None
) -> Intervention:
    """'L25.N1527:set=-4', 'L25.N1527:scale=2', 'L20.N33:add=10', 'L25.N1527:negate', 'L25.N1527:direction=4'."""
    match = _SPEC.fullmatch(str(spec))
    if not match:
        raise UserError(f"intervention {spec!r} not understood; write it as L25.N1527:set=-4 or L25.N1527:negate")
    layer, neuron = parse_neuron(model, match.group("neuron"))
    op = match.group("op").lower()
    if op not in OPS:
        raise UserError(f"operation {match.group('op')!r} in {spec!r} unknown; use one of {', '.join(OPS)}")
    raw = match.group("value")
    if op == "negate":
        if raw is not None:
            raise UserError(f"negate takes no value ({spec!r}); write {label(layer, neuron)}:negate")
        value = -1.0
    else:
        if raw is None:
            raise UserError(f"{op} needs a value ({spec!r}); write e.g. {label(layer, neuron)}:{op}=2")
        try:
            value = float(raw)
        except ValueError:
            raise UserError(f"value {raw!r} in {spec!r} is not a number") from None
    return check_intervention(
        model,
        Intervention(layer, neuron, op, value, parse_positions(positions, prompt_len)),
        prompt_len,  # type: ignore[arg-type]
    )


def check_intervention(model: Model, iv: Intervention, prompt_len: int | None = None) -> Intervention:
    """Range-check an intervention built in code (the parser's checks, for the page and the tests)."""
    check_neuron(model, iv.layer, iv.neuron)
    if iv.op not in OPS:
        raise UserError(f"operation {iv.op!r} unknown; use one of {', '.join(OPS)}")
    if not math.isfinite(iv.value):
        raise UserError(f"value {iv.value} of {label(iv.layer, iv.neuron)}:{iv.op} must be a finite number")
    if abs(iv.value) > MAX_ABS_VALUE:
        raise UserError(f"value {iv.value:g} of {iv.spec} is beyond ±{MAX_ABS_VALUE:g}")
    positions = check_positions(iv.positions, prompt_len)
    return iv if positions == iv.positions else Intervention(iv.layer, iv.neuron, iv.op, iv.value, positions)


# ---------------------------------------------------------------- steer


@dataclass
class Continuation:
    """One generated continuation: the new tokens only (a final EOS included in token_ids, not in text)."""

    seed: int | None  # None: greedy
    token_ids: list[int]
    pieces: list[str]
    text: str
    logprobs: list[float]  # log P(token) under the model's own distribution (temperature 1) at each step
    finish: str  # "eos" | "length" | "stopped"

    def to_json(self) -> dict:
        return {
            "seed": self.seed,
            "token_ids": self.token_ids,
            "text": self.text,
            "logprobs": self.logprobs,
            "finish": self.finish,
        }


@dataclass
class SteerResult:
    """Baseline and steered continuations of one prompt, one pair per seed (one pair when greedy)."""

    model: str
    prompt: str
    prompt_ids: list[int]
    interventions: tuple[Intervention, ...]
    temperature: float
    top_p: float
    max_new_tokens: int
    baseline: list[Continuation]
    steered: list[Continuation]
    notes: dict = field(default_factory=dict)

    def first_change(self, sample: int = 0) -> int | None:
        """Index of the first new token where steered and baseline differ (None: identical)."""
        a, b = self.baseline[sample].token_ids, self.steered[sample].token_ids
        return next(
            (i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b))
        )

    def frame(self) -> pd.DataFrame:
        """One row per generated token: sample, seed, variant, index, position, id, token, logprob, prob, changed
        (the other variant chose a different token at this index of the same sample), diverged (an earlier token
        already differs: from the first change on, the two runs condition on different text, so `changed` there
        compares tokens of different contexts and says little), other_token, other_prob (that token and its
        probability in the other variant)."""
        rows = []
        for sample, pair in enumerate(zip(self.baseline, self.steered)):
            first = self.first_change(sample)
            for variant, cont, other in (("baseline", pair[0], pair[1]), ("steered", pair[1], pair[0])):
                for i, (tid, piece, lp) in enumerate(zip(cont.token_ids, cont.pieces, cont.logprobs)):
                    rows.append(
                        {
                            "sample": sample,
                            "seed": cont.seed,
                            "variant": variant,
                            "index": i,
                            "position": len(self.prompt_ids) + i,
                            "id": tid,
                            "token": piece,
                            "logprob": lp,
                            "prob": math.exp(lp),
                            "changed": i >= len(other.token_ids) or other.token_ids[i] != tid,
                            "diverged": first is not None and i > first,
                            # for a hover: what the other variant wrote at this index, and its probability there
                            "other_token": other.pieces[i] if i < len(other.token_ids) else None,
                            "other_prob": math.exp(other.logprobs[i]) if i < len(other.logprobs) else None,
                        }
                    )
        return pd.DataFrame(rows)

    def to_json(self) -> dict:
        return to_jsonable(
            {
                "model": self.model,
                "prompt": self.prompt,
                "prompt_token_ids": self.prompt_ids,
                "interventions": [iv.to_json() for iv in self.interventions],
                "sampling": {
                    "temperature": self.temperature,
                    "top_p": self.top_p,
                    "greedy": self.temperature == 0,
                    "seeds": [c.seed for c in self.baseline],
                },
                "max_new_tokens": self.max_new_tokens,
                "baseline": self.baseline[0].to_json(),
                "steered": self.steered[0].to_json(),
                "first_change": self.first_change(),
                "samples": [
                    {"baseline": b.to_json(), "steered": s.to_json()} for b, s in zip(self.baseline, self.steered)
                ],
                "notes": self.notes,
            }
        )


NOTES = {
    "activation": "set/scale/add/negate act on the MLP hidden activation that multiplies W_out (hook_post)",
    "direction": "direction adds value × W_out[layer, neuron] to the residual after the layer's MLP (post-norm incl.)",
    "positions": "'all' = the prompt and every new token; prompt positions change the cached keys/values too",
    "logprobs": "log-probability of each generated token under the model's own logits (temperature 1, no top-p)",
    "sampling": "each seed drives one baseline and one steered row with the same random numbers (coupled)",
}


def _prompt(model: Model, prompt: str | Prompt) -> Prompt:
    return prompt if isinstance(prompt, Prompt) else tokens.prompt(model, prompt)


def steer(
    model: Model,
    prompt: str | Prompt,
    interventions: Sequence[Intervention],
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seeds: Sequence[int] = (0,),
    on_token: Callable[[gen.TokenEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    stop_ids: Sequence[int] | None = None,
) -> SteerResult:
    """Baseline and steered continuations in one batch: rows 0..n-1 baseline (seed i), rows n..2n-1 steered.

    Greedy (temperature 0) uses one pair whatever the seeds. on_token gets every step's TokenEvent (rows as above).
    """
    p = _prompt(model, prompt)
    if not interventions:
        raise UserError("no intervention given; add one, e.g. L25.N1527:negate")
    if len(interventions) > intervention_cap():
        raise UserError(f"{len(interventions)} interventions; at most {intervention_cap()} here")
    checked = tuple(check_intervention(model, iv, len(p.ids)) for iv in interventions)
    greedy = temperature == 0
    seed_list: list[int | None] = [None] if greedy else [int(s) for s in seeds]
    if not seed_list:
        raise UserError("no seed given; sampling needs at least one")
    n = len(seed_list)
    sampling = [gen.Sampling(temperature, top_p, s or 0) for s in seed_list] * 2
    steered_rows = tuple(range(n, 2 * n))
    out = gen.generate(
        model,
        p.ids,
        max_new_tokens,
        sampling,
        edits=[iv.edit(steered_rows) for iv in checked],
        stop_ids=stop_ids,
        on_token=on_token,
        should_stop=should_stop,
    )
    stops = set(gen.eos_ids(model) if stop_ids is None else stop_ids)

    def continuation(row: int) -> Continuation:
        ids = out.token_ids[row]
        shown = ids[:-1] if out.finish[row] == "eos" and ids and ids[-1] in stops else ids
        return Continuation(
            seed_list[row % n],
            ids,
            [model.token_str(t) for t in ids],
            model.decode(shown),
            out.logprobs[row],
            out.finish[row],
        )

    return SteerResult(
        model=model.name,
        prompt=p.text,
        prompt_ids=list(p.ids),
        interventions=checked,
        temperature=float(temperature),
        top_p=float(top_p),
        max_new_tokens=max_new_tokens,
        baseline=[continuation(r) for r in range(n)],
        steered=[continuation(r) for r in range(n, 2 * n)],
        notes=dict(NOTES),
    )


# ---------------------------------------------------------------- dose–response


def value_range(natural: float, observed: tuple[float, float] | None = None, points: int = DOSE_POINTS) -> np.ndarray:
    """Clamp values for a dose–response curve: `points` evenly from the observed range (e.g. the neuron's most
    negative to most positive activation in the built dashboards), else −2×..+2× |natural activation| (±1 when it
    is 0). The range always includes the natural activation."""
    if not 2 <= points <= MAX_DOSE_POINTS:
        raise UserError(f"{points} points; use 2..{MAX_DOSE_POINTS}")
    if observed is not None:
        lo, hi = min(observed[0], natural), max(observed[1], natural)
    else:
        span = 2 * abs(natural) if natural != 0 else 1.0
        lo, hi = -span, span
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo == hi:
        raise UserError(f"value range {lo:g}..{hi:g} is empty or not finite")
    return np.linspace(lo, hi, points)


@dataclass
class DoseResponse:
    """The metric at the last position as one neuron is clamped: one entry per value, plus the natural run.

    values/p_answer/p_wrong/logit_diff: [K]; natural_*: the unclamped prompt (the neuron at its own activation)."""

    model: str
    prompt: str
    layer: int
    neuron: int
    answer: str
    wrong: str
    answer_id: int
    wrong_id: int
    positions: str
    natural: float
    values: np.ndarray
    p_answer: np.ndarray
    p_wrong: np.ndarray
    logit_diff: np.ndarray
    natural_p_answer: float
    natural_p_wrong: float
    natural_logit_diff: float

    def frame(self) -> pd.DataFrame:
        """value, p_answer, p_wrong, logit_diff, natural (True on the one row of the unclamped run); by value."""
        clamped = pd.DataFrame(
            {
                "value": self.values,
                "p_answer": self.p_answer,
                "p_wrong": self.p_wrong,
                "logit_diff": self.logit_diff,
                "natural": False,
            }
        )
        row = pd.DataFrame(
            {
                "value": [self.natural],
                "p_answer": [self.natural_p_answer],
                "p_wrong": [self.natural_p_wrong],
                "logit_diff": [self.natural_logit_diff],
                "natural": [True],
            }
        )
        return pd.concat([clamped, row], ignore_index=True).sort_values("value", kind="stable").reset_index(drop=True)

    def to_json(self) -> dict:
        return to_jsonable(
            {
                "model": self.model,
                "prompt": self.prompt,
                "neuron": {"layer": self.layer, "neuron": self.neuron, "label": label(self.layer, self.neuron)},
                "answer": {"token": self.answer, "id": self.answer_id},
                "wrong": {"token": self.wrong, "id": self.wrong_id},
                "positions": self.positions,
                "natural": {
                    "activation": self.natural,
                    "p_answer": self.natural_p_answer,
                    "p_wrong": self.natural_p_wrong,
                    "logit_diff": self.natural_logit_diff,
                },
                "curve": self.frame(),
                "metric": "P(answer), P(wrong) and logit(answer) − logit(wrong) at the last position",
                "clamp": "set the neuron's activation (hook_post) to each value at the "
                + ("last position only" if self.positions == "last" else "every position"),
            }
        )


@torch.no_grad()
def _clamped_logits(
    w: fw.Weights, trace: fw.Trace, layer: int, neuron: int, start: int, clamps: torch.Tensor
) -> torch.Tensor:
    """Last-position logits [n, V] (float32) with L{layer}.N{neuron} clamped to each of `clamps` [n] at positions
    start.. (NaN: left at its natural activation), resumed after block `layer` from the prompt's trace."""
    post = trace.mlp_post[layer][:, start:].expand(len(clamps), -1, -1).clone()  # [n, S, m]
    clamped = ~clamps.isnan()
    post[clamped, :, neuron] = clamps[clamped][:, None]
    # Leaving block `layer`: resid_mid + mlp_out in every family (with parallel attention + MLP too, where
    # resid_mid = resid_pre + attn_out); the MLP's input is not needed, the trace holds its activation.
    resid = trace.resid_mid[layer][:, start:] + fw.mlp_out_from_post(w, layer, post)  # [n, S, d]
    if layer == w.n_layers - 1:
        final = resid[:, -1]
    else:
        final = fw.resume(w, resid, layer + 1, "pre", start, trace)  # [n, d]
    return fw.unembed(w, final).float()


@torch.no_grad()
def dose_response(
    model: Model,
    prompt: str | Prompt,
    layer: int,
    neuron: int,
    answer: str | int,
    wrong: str | int,
    values: Sequence[float] | np.ndarray | None = None,
    positions: Literal["last", "all"] = "last",
    observed: tuple[float, float] | None = None,
    points: int = DOSE_POINTS,
) -> DoseResponse:
    """Clamp L{layer}.N{neuron} to each value (default: value_range) and read the last position's metric.

    positions "last" (default) clamps where the metric is read, so the natural activation reproduces the
    unclamped run exactly; "all" clamps every position. One forward of the prompt, then every value as one row of a
    single batch resumed after the neuron's layer (positions before the clamped ones reuse the prompt's keys and
    values: with "last" each row recomputes one position of the remaining layers).
    """
    check_neuron(model, layer, neuron)
    if positions not in ("last", "all"):
        raise UserError(f"positions {positions!r} unknown for a dose curve; use last or all")
    p = _prompt(model, prompt)
    a_id = answer if isinstance(answer, int) else tokens.single_token(model, answer, "answer")
    w_id = wrong if isinstance(wrong, int) else tokens.single_token(model, wrong, "wrong")
    if a_id == w_id:
        raise UserError("answer and wrong are the same token; the logit diff would be 0 everywhere")
    w = model.weights
    trace = fw.run(w, p.tensor(model.device), record={"resid_mid", "mlp_post", "k", "v"})
    natural = float(trace.mlp_post[layer][0, -1, neuron])
    grid = value_range(natural, observed, points) if values is None else np.asarray(values, dtype=np.float64)
    if grid.ndim != 1 or not 1 <= len(grid) <= MAX_DOSE_POINTS:
        raise UserError(f"{grid.size} values; give 1..{MAX_DOSE_POINTS}")
    if not np.isfinite(grid).all():
        raise UserError("every clamp value must be a finite number")
    start = len(p.ids) - 1 if positions == "last" else 0
    # The last row keeps the natural activation: the unclamped run, through the same path.
    clamps = torch.as_tensor(np.append(grid, np.nan), dtype=w.W_E.dtype, device=model.device)
    S = len(p.ids) - start
    # Rows per resumed pass from the memory budget: all of them at once unless the prompt is long or the model big.
    per_row = S * memory.forward_bytes_per_token(w, len(p.ids), unembed_columns=w.d_vocab // max(1, S))
    chunk = memory.rows_for(w, per_row, cap=len(clamps))
    logits = torch.cat(
        [_clamped_logits(w, trace, layer, neuron, start, clamps[i : i + chunk]) for i in range(0, len(clamps), chunk)]
    )
    probs = logits.softmax(-1)
    pa, pw = probs[:, a_id].cpu().numpy(), probs[:, w_id].cpu().numpy()
    ld = (logits[:, a_id] - logits[:, w_id]).cpu().numpy()
    return DoseResponse(
        model=model.name,
        prompt=p.text,
        layer=layer,
        neuron=neuron,
        answer=model.token_str(a_id),
        wrong=model.token_str(w_id),
        answer_id=int(a_id),
        wrong_id=int(w_id),
        positions=positions,
        natural=natural,
        values=grid,
        p_answer=pa[:-1],
        p_wrong=pw[:-1],
        logit_diff=ld[:-1],
        natural_p_answer=float(pa[-1]),
        natural_p_wrong=float(pw[-1]),
        natural_logit_diff=float(ld[-1]),
    )
