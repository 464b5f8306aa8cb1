"""Activation patching: which layers, positions, heads and single neurons carry the answer.

Metric: logit diff = logit(answer) − logit(wrong) at the last position. Score (clean patching, the default):
    (patched − corrupted) / (clean − corrupted)
1 = this activation alone restores the clean answer, 0 = no effect. Ablations (zero, mean over positions,
negate) modify the *clean* run instead, and the score is the share of the clean−corrupted gap they remove,
(patched − clean) / (corrupted − clean), so 1 again means "this activation carries everything".

How it is fast (GUIDE §5), all exact:
- clean and corrupted run once; every patched run *resumes* from the patched layer using the cached residual;
- positions before the first token where the prompts differ are equal in both runs: clean patching cannot
  change them, so only positions from there on are recomputed, reusing the prefix's keys/values;
- many patched copies go in one batch (row i patches position i, head i or neuron i);
- patching a neuron's post-activation changes the MLP output by (clean − corrupted activation) × W_out[n],
  because W_out is linear: the patched residual is built directly, no hook and no MLP recompute;
- only the last position is unembedded, and only onto the answer − wrong direction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from core import forward as fw
from core.errors import UserError
from core.hosting import limits
from core.metric import LogitDiff
from core.model import Model
from core.tokens import Prompt, first_difference

ABLATIONS = ("clean", "zero", "mean", "negate")
ABLATION_HELP = {
    "clean": "patch the clean activation into the corrupted run",
    "zero": "set the activation to zero in the clean run",
    "mean": "replace the activation by its mean over positions in the clean run",
    "negate": "negate the activation in the clean run (the post negated L31.N892)",
}
Progress = Callable[[int, int], None]


@dataclass
class Setup:
    """Both runs, cached, and what a patched run is compared against."""

    model: Model
    clean: Prompt
    corrupted: Prompt
    metric: LogitDiff
    ablation: str
    clean_trace: fw.Trace
    corrupted_trace: fw.Trace
    clean_logit_diff: float
    corrupted_logit_diff: float
    start_pos: int  # first position any patched row can change

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
            "metric": "logit diff = logit(answer) − logit(wrong) at the last position",
            "ablation": self.ablation,
            "ablation_meaning": ABLATION_HELP[self.ablation],
            "score": "(patched − corrupted) / (clean − corrupted)"
            if self.ablation == "clean"
            else "(ablated − clean) / (corrupted − clean)",
            "recomputed_from_position": self.start_pos,
        }


@torch.no_grad()
def prepare(model: Model, clean: Prompt, corrupted: Prompt, answer: int, wrong: int, ablation: str = "clean") -> Setup:
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


def _row_chunks(total_rows: int, positions: int, max_batch_tokens: int) -> list[slice]:
    per = max(1, max_batch_tokens // max(positions, 1))
    return [slice(i, min(i + per, total_rows)) for i in range(0, total_rows, per)]


def default_batch_tokens(model: Model) -> int:
    """Rows × positions per resumed forward: big enough to keep matmuls efficient, small enough for memory."""
    cap = limits().max_batch_tokens
    batch = 65536 if model.device.type == "cuda" else 8192
    return batch if cap is None else min(batch, cap)


@torch.no_grad()
def _resume_rows(
    setup: Setup,
    layer: int,
    stage: str,
    base_resid: torch.Tensor,
    deltas: Callable[[slice], torch.Tensor],
    n_rows: int,
    max_batch_tokens: int,
) -> np.ndarray:
    """Score n_rows patched copies: row r's residual is base_resid + deltas(rows)[r], resumed at (layer, stage).

    base_resid: [1, S, d] at positions start_pos..; deltas(rows): [len(rows), S, d].
    """
    w = setup.model.weights
    out = []
    for rows in _row_chunks(n_rows, base_resid.shape[1], max_batch_tokens):
        resid = base_resid + deltas(rows)
        final = fw.resume(w, resid, layer, stage, setup.start_pos, setup.base)
        out.append(setup.metric(w, final))
    return setup.score(torch.cat(out))


def _one_hot_rows(delta: torch.Tensor, rows: slice, n_positions: int) -> torch.Tensor:
    """delta: [S, d]. Row r < S keeps only position r's delta; row S keeps all (the all-positions variant)."""
    S = delta.shape[0]
    ids = torch.arange(rows.start, rows.stop, device=delta.device)
    keep = (torch.arange(S, device=delta.device)[None, :] == ids[:, None]) | (ids[:, None] == n_positions)
    return delta[None] * keep[..., None].to(delta.dtype)


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


@torch.no_grad()
def patch_layers(setup: Setup, max_batch_tokens: int | None = None, progress: Progress | None = None) -> LayerPatching:
    """Every (layer, position) of resid_pre, attn_out and mlp_out, plus attn_out/mlp_out at all positions at once."""
    w, start = setup.model.weights, setup.start_pos
    batch = max_batch_tokens or default_batch_tokens(setup.model)
    P = len(setup.clean.ids)
    S = P - start
    L = w.n_layers
    scores = {k: np.zeros((L, P), dtype=np.float32) for k in ("resid_pre", "attn_out", "mlp_out")}
    all_positions = {k: np.zeros(L, dtype=np.float32) for k in ("attn_out", "mlp_out")}
    base = setup.base
    for layer in range(L):
        # (where the activation enters, resume point, base residual there, replacement − base delta)
        plans = {
            "resid_pre": ((layer, "pre"), base.resid_pre[layer], "resid_pre"),
            "attn_out": ((layer, "mid"), base.resid_mid[layer], "attn_out"),
            "mlp_out": (
                (layer + 1, "pre"),
                base.resid_pre[layer + 1] if layer + 1 < L else base.resid_final,
                "mlp_out",
            ),
        }
        for kind, ((at_layer, stage), resid, name) in plans.items():
            delta = (setup.replacement(name, layer) - getattr(base, name)[layer])[0, start:]
            n_rows = S + (1 if kind != "resid_pre" else 0)
            result = _resume_rows(
                setup, at_layer, stage, resid[:, start:], lambda rows: _one_hot_rows(delta, rows, S), n_rows, batch
            )
            scores[kind][layer, start:] = result[:S]
            if kind != "resid_pre":
                all_positions[kind][layer] = result[S]
        if progress:
            progress(layer + 1, L)
    return LayerPatching(scores, all_positions)


@dataclass
class HeadPatching:
    all_positions: np.ndarray  # [L, H]
    per_position: np.ndarray  # [L, H, P]


@torch.no_grad()
def patch_heads(setup: Setup, max_batch_tokens: int | None = None, progress: Progress | None = None) -> HeadPatching:
    """Every head's output (hook_z) patched at all positions, and at each position alone."""
    w, start = setup.model.weights, setup.start_pos
    batch = max_batch_tokens or default_batch_tokens(setup.model)
    P, L, H = len(setup.clean.ids), w.n_layers, w.n_heads
    S = P - start
    all_positions = np.zeros((L, H), dtype=np.float32)
    per_position = np.zeros((L, H, P), dtype=np.float32)
    for layer in range(L):
        dz = (setup.replacement("z", layer) - setup.base.z[layer])[0, start:]  # [S, H, h]
        head_delta = torch.einsum("snh,nhd->nsd", dz, w.W_O[layer])  # [H, S, d]

        def deltas(rows: slice) -> torch.Tensor:
            # row r: head r // (S + 1); within a head, rows 0..S-1 one position, row S all positions
            out = []
            for r in range(rows.start, rows.stop):
                head, pos = divmod(r, S + 1)
                out.append(_one_hot_rows(head_delta[head], slice(pos, pos + 1), S)[0])
            return torch.stack(out)

        result = _resume_rows(setup, layer, "mid", setup.base.resid_mid[layer][:, start:], deltas, H * (S + 1), batch)
        result = result.reshape(H, S + 1)
        per_position[layer, :, start:] = result[:, :S]
        all_positions[layer] = result[:, S]
        if progress:
            progress(layer + 1, L)
    return HeadPatching(all_positions, per_position)


@dataclass
class NeuronPatching:
    layer: int
    neurons: np.ndarray  # [n] neuron indices, in the order of scores
    scores: np.ndarray  # [n]
    layer_score: float  # the whole MLP layer patched at all positions

    def frame(self, top_k: int | None = None) -> pd.DataFrame:
        """layer, neuron, label, score; highest score first."""
        order = np.argsort(-self.scores, kind="stable")
        if top_k is not None:
            order = order[:top_k]
        return pd.DataFrame(
            {
                "layer": self.layer,
                "neuron": self.neurons[order],
                "label": [f"L{self.layer}.N{n}" for n in self.neurons[order]],
                "score": self.scores[order],
            }
        )


def check_layer(model: Model, layer: int) -> int:
    if not 0 <= layer < model.n_layers:
        raise UserError(f"layer {layer} is out of range; {model.name} has layers 0..{model.n_layers - 1}")
    return layer


@torch.no_grad()
def patch_neurons(
    setup: Setup,
    layer: int,
    neurons: list[int] | None = None,
    max_batch_tokens: int | None = None,
    progress: Progress | None = None,
) -> NeuronPatching:
    """Each neuron of `layer` patched alone at all positions (the post's sweep), batched; default all neurons.

    Patched residual after the MLP = base + (replacement − base activation)[:, n] ⊗ W_out[layer, n], exact.
    """
    model = setup.model
    w, start = model.weights, setup.start_pos
    check_layer(model, layer)
    batch = max_batch_tokens or default_batch_tokens(model)
    neuron_ids = torch.arange(w.d_mlp) if neurons is None else torch.tensor(neurons, dtype=torch.long)
    if neuron_ids.numel() and (neuron_ids.min() < 0 or neuron_ids.max() >= w.d_mlp):
        raise UserError(f"neurons must be in 0..{w.d_mlp - 1} for {model.name}")
    d_post = (setup.replacement("mlp_post", layer) - setup.base.mlp_post[layer])[0, start:]  # [S, m]
    after = setup.base.resid_pre[layer + 1] if layer + 1 < w.n_layers else setup.base.resid_final
    base_resid = after[:, start:]
    W_out = w.W_out[layer]
    chunks = _row_chunks(len(neuron_ids), base_resid.shape[1], batch)
    scores = []
    for i, rows in enumerate(chunks):
        ids = neuron_ids[rows].to(W_out.device)
        deltas = d_post[:, ids].T[:, :, None] * W_out[ids][:, None, :]  # [n, S, d]
        final = fw.resume(w, base_resid + deltas, layer + 1, "pre", start, setup.base)
        scores.append(setup.score(setup.metric(w, final)))
        if progress:
            progress(i + 1, len(chunks))
    whole = base_resid + (d_post @ W_out)[None]
    layer_score = setup.score(setup.metric(w, fw.resume(w, whole, layer + 1, "pre", start, setup.base)))[0]
    return NeuronPatching(
        layer, neuron_ids.cpu().numpy(), np.concatenate(scores) if scores else np.zeros(0, np.float32), float(layer_score)
    )


def standout_mlp_layer(layers: LayerPatching) -> int:
    """The MLP layer whose all-positions patch restores most, MLP 0 aside (it acts as an extended embedding)."""
    scores = layers.all_positions["mlp_out"]
    return int(np.argmax(scores[1:])) + 1 if len(scores) > 1 else 0
