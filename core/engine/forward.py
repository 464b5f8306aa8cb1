"""A hook-free functional forward pass over TransformerLens-convention weights.

Why it exists: patching needs to *resume* a forward from the middle of the model (layer L, positions p..end)
for a batch of differently-patched residual streams. TransformerLens's bridge cannot do that cheaply: its
`start_at_layer` still runs blocks 0..L-1 (see its docstring), it has no prefix key/value reuse, and its hooks
live on the shared model (two sessions patching at once would race). This module computes exactly what the
bridge (and Hugging Face's own forward) computes, from plain tensors, so it is thread-safe and can start anywhere.

The forward is driven by an `Arch`: one record of switches per model (the ones TransformerLens's config uses),
read from the Hugging Face config by `core.engine.families`. Adding a family is adding a record there, not a
branch here.

Shapes: B batch, P positions, d d_model, H heads, K key/value heads, h d_head, m d_mlp, V vocab.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

Stage = Literal["pre", "mid"]
STAGES: tuple[Stage, ...] = ("pre", "mid")


@dataclass(frozen=True)
class Arch:
    """What one architecture does, as switches (TransformerLens's config names in brackets).

    norm: "LN" (LayerNorm) or "RMS" (RMSNorm; Gemma's (1 + w) is folded into the stored weight at load).
    pre_norms: the norms before attention and MLP (every family but OLMo 2, which has only post-norms).
    post_norms: a norm on attention's and the MLP's output before it joins the residual (Gemma 2/3, OLMo 2
        "sandwich"): a neuron's effect on the residual then passes through that norm (it is not Δact × W_out).
    qk_norm: RMSNorm on queries and keys before rotary, per head (Qwen 3, Gemma 3) or over all heads (OLMo 2).
    parallel: attention and MLP both read resid_pre and add to it together (GPT-NeoX / Pythia) [parallel_attn_mlp].
    gated: mlp_post = act(x W_gate) · (x W_in) [gated_mlp]; else act(x W_in + b_in).
    act: "gelu_new" (tanh approximation, = gelu_pytorch_tanh), "gelu" (exact erf), "silu", "relu".
    rotary_dim: how many dims of each head rotate (rotary_dim; rotary fraction × d_head); None = learned positions.
    rotary_bases: rotary base of each layer (Gemma 3: local layers 10,000, global layers 1,000,000).
    windows: sliding-window length of each layer (a key is seen when query − key < window), None = full causal.
    attn_scale: multiplies q·k (1/√d_head; Gemma: query_pre_attn_scalar^-½).
    attn_softcap / final_softcap: cap · tanh(x / cap) on attention scores / output logits (Gemma 2).
    embed_scale: multiplies the token embedding (Gemma: √d_model).
    """

    norm: Literal["LN", "RMS"]
    eps: float
    act: Literal["gelu_new", "gelu", "silu", "relu"]
    gated: bool
    n_layers: int
    pre_norms: bool = True
    post_norms: bool = False
    qk_norm: Literal["head", "all"] | None = None
    parallel: bool = False
    rotary_dim: int | None = None
    rotary_bases: tuple[float, ...] = ()
    windows: tuple[int | None, ...] = ()
    attn_scale: float | None = None  # None = 1/√d_head
    attn_softcap: float | None = None
    final_softcap: float | None = None
    embed_scale: float = 1.0

    def window(self, layer: int) -> int | None:
        return self.windows[layer] if self.windows else None

    def switches(self) -> dict:
        """The switches that differ from a plain pre-norm transformer, for the UI and the JSON."""
        out: dict = {
            "norm": self.norm,
            "activation": self.act,
            "gated_mlp": self.gated,
            "positions": "learned" if self.rotary_dim is None else "rotary",
        }
        if not self.pre_norms:
            out["pre_norms"] = False
        if self.post_norms:
            out["post_norms"] = True
        if self.qk_norm:
            out["qk_norm"] = self.qk_norm
        if self.parallel:
            out["parallel_attn_mlp"] = True
        if self.rotary_bases and len(set(self.rotary_bases)) > 1:
            out["rotary_bases"] = sorted(set(self.rotary_bases))
        elif self.rotary_bases:
            out["rotary_base"] = self.rotary_bases[0]
        if any(self.windows):
            out["sliding_windows"] = sorted({w for w in self.windows if w})
        for name in ("attn_softcap", "final_softcap"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        if self.embed_scale != 1.0:
            out["embed_scale"] = self.embed_scale
        return out


@dataclass
class Weights:
    """Every parameter the forward needs, stacked over layers, in TransformerLens's orientation."""

    arch: Arch
    W_E: torch.Tensor  # [V, d]
    W_pos: torch.Tensor | None  # [n_ctx, d] for learned positions, None for rotary
    ln1_w: torch.Tensor | None  # [L, d]; None: no weight (folded) or no pre-norm (arch.pre_norms)
    ln1_b: torch.Tensor | None  # [L, d]
    ln2_w: torch.Tensor | None
    ln2_b: torch.Tensor | None
    lnf_w: torch.Tensor | None  # [d]
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
    q_norm_w: torch.Tensor | None = None  # [L, h] (per head) or [L, H h] (over all heads)
    k_norm_w: torch.Tensor | None = None  # [L, h] or [L, K h]
    attn_post_w: torch.Tensor | None = None  # [L, d] (post-norms only)
    mlp_post_w: torch.Tensor | None = None  # [L, d]

    @property
    def norm(self) -> str:
        return self.arch.norm

    @property
    def eps(self) -> float:
        return self.arch.eps

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
    k/v: [L, B, P, K, h] (after qk-norm and rotary); resid_final: [B, P, d] (entering the final norm).
    attn_out/mlp_out are what joins the residual (after the post-norm where the model has one). With parallel
    attention + MLP, resid_mid = resid_pre + attn_out is kept for the lens but read by nothing.
    """

    resid_pre: list[torch.Tensor] = field(default_factory=list)
    resid_mid: list[torch.Tensor] = field(default_factory=list)
    attn_out: list[torch.Tensor] = field(default_factory=list)
    mlp_out: list[torch.Tensor] = field(default_factory=list)
    mlp_post: list[torch.Tensor] = field(default_factory=list)
    z: list[torch.Tensor] = field(default_factory=list)
    k: list[torch.Tensor] = field(default_factory=list)
    v: list[torch.Tensor] = field(default_factory=list)
    resid_final: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # set by run()

    def stacked(self, name: str) -> torch.Tensor:
        """One activation stacked over layers: [L, ...]."""
        return torch.stack(getattr(self, name))

    def resid_after(self, layer: int) -> torch.Tensor:
        """The residual stream leaving block `layer` (all layers recorded): [B, P, d]."""
        return self.resid_pre[layer + 1] if layer + 1 < len(self.resid_pre) else self.resid_final


def norm(w: Weights, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """LayerNorm or RMSNorm over the last dim (torch's fused kernels: one pass over x instead of five)."""
    if w.norm == "LN":
        return F.layer_norm(x, x.shape[-1:], weight, bias, w.eps)
    out = F.rms_norm(x, x.shape[-1:], weight, w.eps)
    return out + bias if bias is not None else out


def at(weights: torch.Tensor | None, layer: int) -> torch.Tensor | None:
    """One layer of a stacked parameter the model may not have (a folded norm weight): None stays None."""
    return None if weights is None else weights[layer]


def rms(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm (the qk-norms and post-norms are RMSNorm in every family that has them)."""
    return F.rms_norm(x, x.shape[-1:], weight, eps)


def norm_scale(w: Weights, x: torch.Tensor) -> torch.Tensor:
    """The divisor the norm applies to x: [..., 1]. Frozen, it makes the norm linear (logit lens, DLA)."""
    x32 = x.float()  # squared in float32: float16 overflows past |x| = 256
    if w.norm == "LN":
        x32 = x32 - x32.mean(-1, keepdim=True)
    return (x32.pow(2).mean(-1, keepdim=True) + w.eps).sqrt().to(x.dtype)


def norm_scale_apply(
    w: Weights, x: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None
) -> torch.Tensor:
    if w.norm == "LN":
        x = x - x.mean(-1, keepdim=True)
    out = x / scale
    if weight is not None:
        out = out * weight
    return out + bias if bias is not None else out


def rms_scale(x: torch.Tensor, eps: float) -> torch.Tensor:
    """The divisor of RMSNorm: [..., 1] (frozen for DLA through a post-norm)."""
    return (x.float().pow(2).mean(-1, keepdim=True) + eps).sqrt().to(x.dtype)  # float32: see norm_scale


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    return x if cap is None else torch.tanh(x / cap) * cap


@functools.lru_cache(maxsize=64)
def _rotary_tables(
    base: float, dim: int, start: int, length: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of HF's rotary angles (rotate_half layout) at positions start..start+length-1: [length, 1, dim]."""
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, device=device, dtype=torch.int64).float() / dim))
    angles = torch.arange(start, start + length, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :]


def rotary(w: Weights, layer: int, x: torch.Tensor, start: int, scale: float = 1.0) -> torch.Tensor:
    """HF rotary (rotate_half layout) on the first rotary_dim dims of x: [B, S, n, h] at positions start..; × scale.

    out = x·cos + rotate_half(x)·sin, written as one multiply and two in-place multiply-adds on the halves (no
    concatenated copy of x): on CPU these elementwise passes cost as much as the projections themselves.
    """
    dim = w.arch.rotary_dim
    assert dim is not None
    cos, sin = _rotary_tables(w.arch.rotary_bases[layer], dim, start, x.shape[1], x.device, x.dtype)
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    half = dim // 2
    rot = x[..., :dim]
    out = x * scale if dim < x.shape[-1] else rot * cos
    if dim < x.shape[-1]:  # partial rotary (GPT-NeoX, Phi-3): the other dims pass through
        out[..., :dim] = rot * cos
    out[..., :half].addcmul_(rot[..., half:], sin[..., :half], value=-1.0)
    out[..., half:dim].addcmul_(rot[..., :half], sin[..., half:])
    return out


def split_qkv(w: Weights, layer: int, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split the fused projection into q, k, v: [B, S, n, h], applying the qk-norm where the model has one."""
    q, k, v = (w._split(qkv, part) for part in range(3))
    if w.arch.qk_norm == "head":
        q, k = rms(q, at(w.q_norm_w, layer), w.eps), rms(k, at(w.k_norm_w, layer), w.eps)
    elif w.arch.qk_norm == "all":  # OLMo 2: one norm over all heads' queries (keys), before the split into heads
        q = rms(q.flatten(-2), at(w.q_norm_w, layer), w.eps).unflatten(-1, q.shape[-2:])
        k = rms(k.flatten(-2), at(w.k_norm_w, layer), w.eps).unflatten(-1, k.shape[-2:])
    return q, k, v


def attn_pre_norm_out(w: Weights, layer: int, z: torch.Tensor) -> torch.Tensor:
    """Attention's output before the post-norm, from z [..., H, h]: [..., d] (= attn_out without post-norms)."""
    return z.flatten(-2) @ w.W_O[layer].flatten(0, 1) + w.b_O[layer]


def attn_post(w: Weights, layer: int, pre: torch.Tensor) -> torch.Tensor:
    """What joins the residual from attention's output (the post-norm where the model has one)."""
    return rms(pre, at(w.attn_post_w, layer), w.eps) if w.arch.post_norms else pre


def queries_keys_values(
    w: Weights, layer: int, resid: torch.Tensor, start_pos: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of `layer` for positions start_pos.. of resid [B, S, d]: each [B, S, n, h], after the input norm,
    the qk-norm and rotary; q already carries the score scale (1/√h or the family's)."""
    a = w.arch
    x = norm(w, resid, at(w.ln1_w, layer), at(w.ln1_b, layer)) if a.pre_norms else resid
    q, k, v = split_qkv(w, layer, x @ w.W_QKV[layer] + w.b_QKV[layer])
    scale = a.attn_scale if a.attn_scale is not None else 1 / math.sqrt(w.d_head)
    if a.rotary_dim is not None:  # the scale of the scores rides on q's rotary (one pass fewer)
        return rotary(w, layer, q, start_pos, scale), rotary(w, layer, k, start_pos), v
    return q * scale, k, v


def hidden_keys(w: Weights, layer: int, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """True where a query may not see a key: causal, and outside the layer's sliding window. [Sq, 1] × [1, Sk]."""
    hidden = k_pos > q_pos
    window = w.arch.window(layer)
    return hidden | (q_pos - k_pos >= window) if window is not None else hidden


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
    q, k, v = queries_keys_values(w, layer, resid, start_pos)  # [B, S, n, h]
    # GQA: query head i reads kv head i // group (HF's repeat_kv order), without materialising the repeat.
    group = w.n_heads // w.n_kv_heads
    q = q.unflatten(2, (w.n_kv_heads, group))  # [B, S, K, g, h]
    q_pos = torch.arange(start_pos, start_pos + S, device=resid.device)[:, None]
    if last_query_only:
        q, q_pos = q[:, -1:], q_pos[-1:]
    has_prefix = prefix_kv is not None and start_pos > 0
    key_start = 0 if has_prefix else start_pos
    k_pos = torch.arange(key_start, start_pos + S, device=resid.device)[None, :]
    hidden = hidden_keys(w, layer, q_pos, k_pos)
    scores = torch.einsum("bskgh,btkh->bkgst", q, k)
    if prefix_kv is not None and has_prefix:
        # The prefix's keys/values are the same for every row: one large matmul per kv head, not B small ones.
        pk, pv = prefix_kv[0][0], prefix_kv[1][0]  # [start_pos, K, h]
        scores = torch.cat([torch.einsum("bskgh,tkh->bkgst", q, pk), scores], dim=-1)
    # softmax in at least float32 (as Hugging Face's eager attention): in bfloat16 the normalisation over many
    # keys loses the small weights; float32 and float64 weights keep their own precision.
    masked = softcap(scores, w.arch.attn_softcap).masked_fill(hidden, torch.finfo(q.dtype).min)
    pattern = masked.softmax(-1, dtype=torch.promote_types(q.dtype, torch.float32)).to(q.dtype)
    if prefix_kv is not None and has_prefix:
        z = torch.einsum("bkgst,tkh->bskgh", pattern[..., :start_pos], pv)
        z = z + torch.einsum("bkgst,btkh->bskgh", pattern[..., start_pos:], v)
    else:
        z = torch.einsum("bkgst,btkh->bskgh", pattern, v)
    z = z.flatten(2, 3)  # [B, S, H, h]
    return attn_post(w, layer, attn_pre_norm_out(w, layer, z)), z, k, v


ACTIVATIONS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "silu": F.silu,
    "relu": F.relu,
}


def mlp_post(w: Weights, layer: int, resid: torch.Tensor) -> torch.Tensor:
    """Neuron activations (TransformerLens `mlp.hook_post`): [B, S, m]. For gated MLPs act(gate)·up."""
    a = w.arch
    x = norm(w, resid, at(w.ln2_w, layer), at(w.ln2_b, layer)) if a.pre_norms else resid
    act = ACTIVATIONS[a.act]
    pre = x @ w.W_in[layer] + w.b_in[layer]
    if a.gated:
        assert w.W_gate is not None
        return act(x @ w.W_gate[layer]) * pre
    return act(pre)


def mlp_linear(w: Weights, layer: int, post: torch.Tensor) -> torch.Tensor:
    """post @ W_out + b_out: linear in the neurons (the post-norm, if any, comes after)."""
    return post @ w.W_out[layer] + w.b_out[layer]


def mlp_post_norm(w: Weights, layer: int, linear: torch.Tensor) -> torch.Tensor:
    """What joins the residual from the MLP's linear output (the post-norm where the model has one)."""
    return rms(linear, at(w.mlp_post_w, layer), w.eps) if w.arch.post_norms else linear


def mlp_out_from_post(w: Weights, layer: int, post: torch.Tensor) -> torch.Tensor:
    """MLP output from neuron activations: linear in post unless the model has a post-norm."""
    return mlp_post_norm(w, layer, mlp_linear(w, layer, post))


def embed(w: Weights, tokens: torch.Tensor) -> torch.Tensor:
    """Residual stream entering block 0: [B, P, d]."""
    resid = w.W_E[tokens]
    if w.arch.embed_scale != 1.0:
        resid = resid * w.arch.embed_scale
    if w.W_pos is not None:
        resid = resid + w.W_pos[: tokens.shape[1]]
    return resid


ALL_ACTIVATIONS = frozenset({"resid_pre", "resid_mid", "attn_out", "mlp_out", "mlp_post", "z", "k", "v"})


def run(
    w: Weights,
    tokens: torch.Tensor,
    record: frozenset[str] | set[str] = ALL_ACTIVATIONS,
    layers: range | None = None,
    track_grad: bool = False,
) -> Trace:
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
        mid = resid + attn_out
        post = mlp_post(w, layer, resid if w.arch.parallel else mid)
        mlp_out = mlp_out_from_post(w, layer, post)
        keep("resid_mid", layer, mid)
        resid = mid + mlp_out
        keep("attn_out", layer, attn_out)
        keep("z", layer, z)
        keep("k", layer, k)
        keep("v", layer, v)
        keep("mlp_post", layer, post)
        keep("mlp_out", layer, mlp_out)
    trace.resid_final = resid
    return trace


HALF = (torch.bfloat16, torch.float16)
UNEMBED_COLUMNS = 16_384  # the block of W_U cast to float32 at a time with half-precision weights (≤ 256 MiB at d 4096)


def unembed(w: Weights, resid: torch.Tensor) -> torch.Tensor:
    """Logits [..., V] from a residual stream [..., d] entering the final norm.

    With bfloat16 / float16 weights the logits come out in float32, the product accumulated and rounded in float32:
    a bfloat16 logit of size 16–32 is rounded to a multiple of 0.125, as large as the differences the metric and the
    prompt effects read. W_U is cast a block of columns at a time, so no float32 copy of it is ever held."""
    normed = norm(w, resid, w.lnf_w, w.lnf_b)
    if w.W_U.dtype not in HALF:
        return softcap(normed @ w.W_U + w.b_U, w.arch.final_softcap)
    normed = normed.float()
    blocks = [
        normed @ w.W_U[:, start : start + UNEMBED_COLUMNS].float()
        for start in range(0, w.W_U.shape[1], UNEMBED_COLUMNS)
    ]
    return softcap(torch.cat(blocks, dim=-1) + w.b_U.float(), w.arch.final_softcap)


def unembed_columns(w: Weights, normed: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """The logits of tokens `ids` before any soft-cap: [..., len(ids)] from the normed final residual [..., d];
    in float32 with half-precision weights (see `unembed`)."""
    if w.W_U.dtype not in HALF:
        return normed @ w.W_U[:, ids] + w.b_U[ids]
    return normed.float() @ w.W_U[:, ids].float() + w.b_U[ids].float()


@dataclass
class Join:
    """Patched rows that enter a resumed forward at `stage` of `layer`.

    resid: [n, S, d], the residual stream at positions start_pos..P-1; stage "pre" = entering block `layer`,
    "mid" = between its attention and its MLP (not with parallel attention + MLP, whose MLP reads resid_pre);
    layer == n_layers with "pre" = the final residual itself.
    """

    layer: int
    stage: Stage
    resid: torch.Tensor

    def depth(self) -> int:
        if self.stage not in STAGES:
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

    if w.arch.parallel and any(j.stage == "mid" for j in joins):
        raise ValueError("with parallel attention + MLP there is no 'mid' stage: enter at 'pre' of the next layer")
    for current in range(joins[order[0]].layer, w.n_layers):
        admit(2 * current)
        if resid is None:
            admit(2 * current + 1)
        else:
            kv = None
            if start_pos > 0:
                kv = (prefix.k[current][:, :start_pos], prefix.v[current][:, :start_pos])
            if current == last:  # only the last position reaches the metric: its query and its MLP alone
                attn_out = attention(w, current, resid, start_pos, kv, last_query_only=True)[0]
                resid = resid[:, -1:]
            else:
                attn_out = attention(w, current, resid, start_pos, kv)[0]
            if w.arch.parallel:  # the MLP reads the same resid_pre as attention
                resid = resid + attn_out + mlp_out_from_post(w, current, mlp_post(w, current, resid))
                continue
            resid = resid + attn_out
            admit(2 * current + 1)
        if current == last and resid is not None and resid.shape[1] > 1:  # rows that entered at the last MLP
            resid = resid[:, -1:]
        if resid is not None:
            resid = resid + mlp_out_from_post(w, current, mlp_post(w, current, resid))
    admit(2 * w.n_layers)
    if order:
        raise ValueError(f"a join enters after the last layer: {joins[order[0]].layer}, {joins[order[0]].stage}")
    assert resid is not None
    final = resid[:, -1]
    sizes = [joins[i].resid.shape[0] for i in admitted]
    pieces = dict(zip(admitted, final.split(sizes)))
    return torch.cat([pieces[i] for i in range(len(joins))])


def resume(
    w: Weights,
    resid: torch.Tensor,
    layer: int,
    stage: Stage,
    start_pos: int,
    prefix: Trace,
) -> torch.Tensor:
    """Continue a forward from the middle of the model; return the final residual at the last position.

    resid: [B, S, d], the residual stream at positions start_pos..P-1 at `stage` of `layer`:
    "pre" = entering block `layer`, "mid" = between its attention and its MLP. Positions before start_pos
    are taken as unchanged from `prefix` (a Trace with batch 1), whose keys/values they contribute.
    Returns [B, d].
    """
    return resume_joined(w, [Join(layer, stage, resid)], start_pos, prefix)
