"""A hook-free functional forward pass over TransformerLens-convention weights.

Why it exists: patching needs to *resume* a forward from the middle of the model (layer L, positions p..end)
for a batch of differently-patched residual streams. TransformerLens's bridge cannot do that cheaply: its
`start_at_layer` still runs blocks 0..L-1 (see its docstring), it has no prefix key/value reuse, and its hooks
live on the shared model (two sessions patching at once would race). This module computes exactly what the
bridge computes (tests compare every activation with `bridge.run_with_cache`), from plain tensors, so it is
thread-safe and can start anywhere.

Shapes: B batch, P positions, d d_model, H heads, K key/value heads, h d_head, m d_mlp, V vocab.
Architectures: GPT-2 (LayerNorm, learned positions, GELU MLP) and Llama (RMSNorm, rotary, gated SiLU MLP, GQA).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class Weights:
    """Every parameter the forward needs, stacked over layers, in TransformerLens's orientation."""

    norm: str  # "LN" (GPT-2) or "RMS" (Llama)
    eps: float
    act: str  # "gelu_new" or "silu" (gated)
    W_E: torch.Tensor  # [V, d]
    W_pos: torch.Tensor | None  # [n_ctx, d] for learned positions, None for rotary
    rotary_base: float | None
    ln1_w: torch.Tensor  # [L, d]
    ln1_b: torch.Tensor | None  # [L, d]
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor | None
    lnf_w: torch.Tensor  # [d]
    lnf_b: torch.Tensor | None
    # Q, K and V fused into one matrix so attention's input projection is one plain matmul (per-head einsums
    # ran as many small batched matmuls: 3× slower on CPU). W_Q/W_K/W_V/b_* below are views of it.
    W_QKV: torch.Tensor  # [L, d, (H + 2K) h], columns: H query heads, K key heads, K value heads
    b_QKV: torch.Tensor  # [L, (H + 2K) h]
    n_heads: int
    n_kv_heads: int
    W_O: torch.Tensor  # [L, H, h, d]
    b_O: torch.Tensor  # [L, d]
    W_in: torch.Tensor  # [L, d, m]
    W_gate: torch.Tensor | None  # [L, d, m] (gated MLPs only)
    b_in: torch.Tensor  # [L, m]
    W_out: torch.Tensor  # [L, m, d]
    b_out: torch.Tensor  # [L, d]
    W_U: torch.Tensor  # [d, V]
    b_U: torch.Tensor  # [V]

    @property
    def n_layers(self) -> int:
        return self.W_QKV.shape[0]

    @property
    def d_head(self) -> int:
        return self.W_O.shape[2]

    def _split(self, tensor: torch.Tensor, part: int) -> torch.Tensor:
        H, K, h = self.n_heads, self.n_kv_heads, self.d_head
        bounds = [0, H * h, (H + K) * h, (H + 2 * K) * h]
        return tensor[..., bounds[part] : bounds[part + 1]].unflatten(-1, (-1, h))

    @property
    def W_Q(self) -> torch.Tensor:
        """[L, H, d, h] (a view)."""
        return self._split(self.W_QKV, 0).permute(0, 2, 1, 3)

    @property
    def W_K(self) -> torch.Tensor:
        return self._split(self.W_QKV, 1).permute(0, 2, 1, 3)

    @property
    def W_V(self) -> torch.Tensor:
        return self._split(self.W_QKV, 2).permute(0, 2, 1, 3)

    @property
    def d_mlp(self) -> int:
        return self.W_in.shape[2]

    @property
    def d_model(self) -> int:
        return self.W_E.shape[1]

    @property
    def d_vocab(self) -> int:
        return self.W_U.shape[1]


@dataclass
class Trace:
    """Activations of one run, named after TransformerLens hooks (batch dim kept).

    resid_pre/resid_mid/attn_out/mlp_out: [L, B, P, d]; z: [L, B, P, H, h]; mlp_post: [L, B, P, m];
    k/v: [L, B, P, K, h] (after rotary); resid_final: [B, P, d] (entering the final norm).
    """

    resid_pre: list[torch.Tensor] = field(default_factory=list)
    resid_mid: list[torch.Tensor] = field(default_factory=list)
    attn_out: list[torch.Tensor] = field(default_factory=list)
    mlp_out: list[torch.Tensor] = field(default_factory=list)
    mlp_post: list[torch.Tensor] = field(default_factory=list)
    z: list[torch.Tensor] = field(default_factory=list)
    k: list[torch.Tensor] = field(default_factory=list)
    v: list[torch.Tensor] = field(default_factory=list)
    resid_final: torch.Tensor | None = None

    def stacked(self, name: str) -> torch.Tensor:
        """One activation stacked over layers: [L, ...]."""
        return torch.stack(getattr(self, name))


def norm(w: Weights, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """LayerNorm or RMSNorm over the last dim (torch's fused kernels: one pass over x instead of five)."""
    if w.norm == "LN":
        return F.layer_norm(x, x.shape[-1:], weight, bias, w.eps)
    out = F.rms_norm(x, x.shape[-1:], weight, w.eps)
    return out + bias if bias is not None else out


def norm_scale(w: Weights, x: torch.Tensor) -> torch.Tensor:
    """The divisor the norm applies to x: [..., 1]. Frozen, it makes the norm linear (logit lens, DLA)."""
    if w.norm == "LN":
        x = x - x.mean(-1, keepdim=True)
    return (x.pow(2).mean(-1, keepdim=True) + w.eps).sqrt()


def norm_scale_apply(
    w: Weights, x: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    if w.norm == "LN":
        x = x - x.mean(-1, keepdim=True)
    out = x / scale * weight
    return out + bias if bias is not None else out


@functools.lru_cache(maxsize=64)
def _rotary_tables(base: float, h: int, start: int, length: int, device: torch.device,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of HF Llama's rotary angles at positions start..start+length-1: each [length, 1, h]."""
    inv_freq = 1.0 / (base ** (torch.arange(0, h, 2, device=device, dtype=torch.float32) / h))
    angles = torch.arange(start, start + length, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :]


def _rotary(w: Weights, x: torch.Tensor, start: int, scale: float = 1.0) -> torch.Tensor:
    """HF Llama rotary (rotate_half layout) on x: [B, S, n, h] at positions start.., times `scale`.

    out = x·cos + rotate_half(x)·sin, written as one multiply and two in-place multiply-adds on the halves (no
    concatenated copy of x): on CPU these elementwise passes cost as much as the projections themselves.
    """
    h = x.shape[-1]
    cos, sin = _rotary_tables(w.rotary_base, h, start, x.shape[1], x.device, x.dtype)
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    half = h // 2
    out = x * cos
    out[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-1.0)
    out[..., half:].addcmul_(x[..., :half], sin[..., half:])
    return out


def attention(
    w: Weights,
    layer: int,
    resid: torch.Tensor,
    start_pos: int = 0,
    prefix_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    last_query_only: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention of `layer` for positions start_pos.. of resid: [B, S, d].

    prefix_kv: keys/values of positions 0..start_pos-1 ([1, start_pos, K, h]), shared by the whole batch.
    last_query_only: attend from the last position alone (keys and values still come from every position).
    Returns attn_out [B, S, d], z [B, S, H, h] (S = 1 with last_query_only), k and v of the S positions [B, S, K, h].
    """
    B, S, _ = resid.shape
    x = norm(w, resid, w.ln1_w[layer], None if w.ln1_b is None else w.ln1_b[layer])
    qkv = x @ w.W_QKV[layer] + w.b_QKV[layer]
    q, k, v = (w._split(qkv, part) for part in range(3))  # [B, S, n, h]
    if w.rotary_base is not None:  # the 1/√h of the scores rides on q's rotary (one pass fewer)
        q, k = _rotary(w, q, start_pos, 1 / math.sqrt(w.d_head)), _rotary(w, k, start_pos)
    else:
        q = q / math.sqrt(w.d_head)
    # GQA: query head i reads kv head i // group (HF's repeat_kv order), without materialising the repeat.
    group = w.n_heads // w.n_kv_heads
    q = q.unflatten(2, (w.n_kv_heads, group))  # [B, S, K, g, h]
    q_pos = torch.arange(start_pos, start_pos + S, device=resid.device)[:, None]
    if last_query_only:
        q, q_pos = q[:, -1:], q_pos[-1:]
    causal = torch.arange(S, device=resid.device)[None, :] + start_pos > q_pos  # key after query
    scores = torch.einsum("bskgh,btkh->bkgst", q, k).masked_fill(causal, torch.finfo(q.dtype).min)
    if prefix_kv is not None and start_pos > 0:
        # The prefix's keys/values are the same for every row: one large matmul per kv head, not B small ones.
        pk, pv = prefix_kv[0][0], prefix_kv[1][0]  # [start_pos, K, h]
        prefix_scores = torch.einsum("bskgh,tkh->bkgst", q, pk)
        pattern = torch.cat([prefix_scores, scores], dim=-1).softmax(-1)
        z = torch.einsum("bkgst,tkh->bskgh", pattern[..., :start_pos], pv)
        z = z + torch.einsum("bkgst,btkh->bskgh", pattern[..., start_pos:], v)
    else:
        pattern = scores.softmax(-1)
        z = torch.einsum("bkgst,btkh->bskgh", pattern, v)
    z = z.flatten(2, 3)  # [B, S, H, h]
    attn_out = z.flatten(2) @ w.W_O[layer].flatten(0, 1) + w.b_O[layer]
    return attn_out, z, k, v


def mlp_post(w: Weights, layer: int, resid_mid: torch.Tensor) -> torch.Tensor:
    """Neuron activations (TransformerLens `mlp.hook_post`): [B, S, m]. For gated MLPs silu(gate)·up."""
    x = norm(w, resid_mid, w.ln2_w[layer], None if w.ln2_b is None else w.ln2_b[layer])
    pre = x @ w.W_in[layer] + w.b_in[layer]
    if w.W_gate is not None:
        return F.silu(x @ w.W_gate[layer]) * pre
    return F.gelu(pre, approximate="tanh")


def mlp_out_from_post(w: Weights, layer: int, post: torch.Tensor) -> torch.Tensor:
    """MLP output from neuron activations: linear in post, which is why neuron patching needs no hook."""
    return post @ w.W_out[layer] + w.b_out[layer]


def embed(w: Weights, tokens: torch.Tensor) -> torch.Tensor:
    """Residual stream entering block 0: [B, P, d]."""
    resid = w.W_E[tokens]
    if w.W_pos is not None:
        resid = resid + w.W_pos[: tokens.shape[1]]
    return resid


ALL_ACTIVATIONS = frozenset({"resid_pre", "resid_mid", "attn_out", "mlp_out", "mlp_post", "z", "k", "v"})


def run(w: Weights, tokens: torch.Tensor, record: frozenset[str] | set[str] = ALL_ACTIVATIONS,
        layers: range | None = None, track_grad: bool = False) -> Trace:
    """Full forward of tokens [B, P] recording the named activations (of `layers`, default all).

    Not recorded activations are left out of the Trace (scans over a corpus keep only `mlp_post` of a few
    layers: recording everything would hold every layer's [B, P, d_mlp] at once).
    track_grad: build the autograd graph from the embedding on, so gradients w.r.t. any recorded activation
    can be taken (attribution patching); the weights themselves never require grad.
    """
    trace = Trace()
    wanted = range(w.n_layers) if layers is None else layers

    def keep(name: str, layer: int, value: torch.Tensor) -> None:
        if name in record and layer in wanted:
            getattr(trace, name).append(value)

    resid = embed(w, tokens)
    if track_grad:
        resid = resid.detach().requires_grad_(True)
    for layer in range(w.n_layers):
        keep("resid_pre", layer, resid)
        attn_out, z, k, v = attention(w, layer, resid)
        resid = resid + attn_out
        keep("resid_mid", layer, resid)
        post = mlp_post(w, layer, resid)
        mlp_out = mlp_out_from_post(w, layer, post)
        resid = resid + mlp_out
        keep("attn_out", layer, attn_out)
        keep("z", layer, z)
        keep("k", layer, k)
        keep("v", layer, v)
        keep("mlp_post", layer, post)
        keep("mlp_out", layer, mlp_out)
    trace.resid_final = resid
    return trace


def unembed(w: Weights, resid: torch.Tensor) -> torch.Tensor:
    """Logits [..., V] from a residual stream [..., d] entering the final norm."""
    return norm(w, resid, w.lnf_w, w.lnf_b) @ w.W_U + w.b_U


@dataclass
class Join:
    """Patched rows that enter a resumed forward at `stage` of `layer`.

    resid: [n, S, d], the residual stream at positions start_pos..P-1; stage "pre" = entering block `layer`,
    "mid" = between its attention and its MLP; layer == n_layers with "pre" = the final residual itself.
    """

    layer: int
    stage: str
    resid: torch.Tensor

    def depth(self) -> int:
        if self.stage not in ("pre", "mid"):
            raise ValueError(f"stage must be 'pre' or 'mid', got {self.stage!r}")
        return 2 * self.layer + (self.stage == "mid")


def resume_joined(w: Weights, joins: list[Join], start_pos: int, prefix: Trace) -> torch.Tensor:
    """Continue many patched forwards that enter at different depths, in one pass; [N, d] at the last position.

    Rows are returned in the order of `joins`. The pass walks down the model once and admits each join's rows
    into the running batch when it reaches their depth, so every sublayer runs as one matmul over all rows that
    have entered: patching 30 layers × 3 activations costs ~60 sublayer calls, not ~1,400 (one resume per
    layer), which is what dominates when each patch recomputes only a few positions.
    Positions before start_pos come from `prefix` (a Trace with batch 1), whose keys/values they contribute.
    """
    if not joins:
        return prefix.resid_final.new_zeros((0, prefix.resid_final.shape[-1]))
    order = sorted(range(len(joins)), key=lambda i: joins[i].depth())
    admitted: list[int] = []  # join indices, in the order their rows sit in the running batch
    resid: torch.Tensor | None = None
    last = w.n_layers - 1

    def admit(depth: int) -> None:
        nonlocal resid
        while order and joins[order[0]].depth() == depth:
            i = order.pop(0)
            admitted.append(i)
            # Broadcast arithmetic can hand us permuted strides, which make `x @ W` run as a batched matmul
            # over an expanded W (3-4x slower on CPU): start from a plain layout.
            rows = joins[i].resid.contiguous()
            if resid is not None and resid.shape[1] == 1:  # past the last attention: only the last position
                rows = rows[:, -1:].contiguous()
            resid = rows if resid is None else torch.cat([resid, rows])

    for current in range(joins[order[0]].layer, w.n_layers):
        admit(2 * current)
        if resid is not None:
            kv = None
            if start_pos > 0:
                kv = (prefix.k[current][:, :start_pos], prefix.v[current][:, :start_pos])
            if current == last:  # only the last position reaches the metric: its query and its MLP alone
                resid = resid[:, -1:] + attention(w, current, resid, start_pos, kv, last_query_only=True)[0]
            else:
                resid = resid + attention(w, current, resid, start_pos, kv)[0]
        admit(2 * current + 1)
        if current == last and resid is not None and resid.shape[1] > 1:  # rows that entered at the last MLP
            resid = resid[:, -1:]
        if resid is not None:
            resid = resid + mlp_out_from_post(w, current, mlp_post(w, current, resid))
    admit(2 * w.n_layers)
    if order:
        raise ValueError(f"a join enters after the last layer: {joins[order[0]].layer}, {joins[order[0]].stage}")
    final = resid[:, -1]
    sizes = [joins[i].resid.shape[0] for i in admitted]
    pieces = dict(zip(admitted, final.split(sizes)))
    return torch.cat([pieces[i] for i in range(len(joins))])


def resume(
    w: Weights,
    resid: torch.Tensor,
    layer: int,
    stage: str,
    start_pos: int,
    prefix: Trace,
) -> torch.Tensor:
    """Continue a forward from the middle of the model; return the final residual at the last position.

    resid: [B, S, d], the residual stream at positions start_pos..P-1 at `stage` of `layer`:
    "pre" = entering block `layer`, "mid" = between its attention and its MLP. Positions before start_pos
    are taken as unchanged from `prefix` (a Trace with batch 1), whose keys/values they contribute.
    Returns [B, d].
    """
    if stage not in ("pre", "mid"):
        raise ValueError(f"stage must be 'pre' or 'mid', got {stage!r}")
    return resume_joined(w, [Join(layer, stage, resid)], start_pos, prefix)
