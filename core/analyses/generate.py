"""Text generation on the hook-free forward: a preallocated KV cache, greedy and sampled decoding, edits.

Why not transformers' `generate`: the engine's weights are TransformerLens-processed plain tensors shared by every
session (no hooks on a shared module), and an edit to a neuron must reach the cached keys and values of every
position it covers — an edit applied when the prompt is first read is *in* the cache, so every later token sees it,
exactly as if the whole sequence were recomputed with the edit (tests/test_generate.py checks both: against a
no-cache recompute and against transformers' own `generate` with a hook doing the same edit).

How it is fast (decoding one token reads every weight once; bench/generate.py measures how close to that limit):
- one preallocated cache per model run, [L, B, K, T, h] for keys and values, written in place (no concatenation);
- a sliding-window layer reads only its window's keys (Gemma 3's local layers, Mistral), a global layer all;
- only the last position is unembedded; at the last layer only the last position's query and MLP run in a prefill;
- several continuations (baseline and steered rows, several seeds) share each matmul as rows of one batch.

Sampling: each row draws from its own CPU generator seeded with its seed, one uniform number per step (inverse
CDF over the sorted distribution), so the same seeds in the same batch give the same text every time, on any
device's random number generator. (A different batch size can change the logits by fp32 noise, which flips a draw
that falls on a boundary of a flat distribution.) A baseline and a steered row with the same seed use the same
random numbers: their texts differ only where the edit changed the distribution (coupled sampling).

Shapes: B rows, P prompt positions, S positions in one step, T cache length, d d_model, K key/value heads,
g query heads per key/value head, h d_head, m d_mlp, V vocab.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from core.engine import forward as fw
from core.engine import memory
from core.engine.model import Model
from core.errors import UserError
from core.hosting import limits

# Caps on one generation (the CLI and the page wire them; hosted mode uses the smaller ones).
MAX_NEW_TOKENS = 1024
HOSTED_MAX_NEW_TOKENS = 64
MAX_ROWS = 64  # continuations in one batch (baseline + steered × seeds)
HOSTED_MAX_ROWS = 8

Positions = Literal["all", "prompt", "new"] | tuple[int, ...]
Site = Literal["post", "resid"]


def new_token_cap() -> int:
    return HOSTED_MAX_NEW_TOKENS if limits().hosted else MAX_NEW_TOKENS


def row_cap() -> int:
    return HOSTED_MAX_ROWS if limits().hosted else MAX_ROWS


# ---------------------------------------------------------------- edits


@dataclass(frozen=True)
class Edit:
    """One change made inside the forward, to some rows of the batch at some positions.

    site "post": the MLP hidden activation of `layer` (the input of W_out, [B, S, m]), column `neuron`:
        op "set" → value, "scale" → × value, "add" → + value.
    site "resid": the residual stream right after block `layer`'s MLP (after its post-norm, if any):
        op "add" → + value × W_out[layer, neuron] (a direction steer; without a post-norm this equals
        adding `value` to the activation).
    positions: "all" (prompt and every new token), "prompt", "new", or absolute indices.
    rows: the batch rows it applies to; None = every row.
    """

    layer: int
    neuron: int
    site: Site
    op: Literal["set", "scale", "add"]
    value: float
    positions: Positions = "all"
    rows: tuple[int, ...] | None = None


def _position_mask(
    positions: Positions, prompt_len: int, start: int, S: int, device: torch.device
) -> torch.Tensor | None:
    """Which of positions start..start+S-1 an edit covers: None = none, else a bool [S] (all-True is common)."""
    if positions == "all":
        return torch.ones(S, dtype=torch.bool, device=device)
    pos = torch.arange(start, start + S, device=device)
    if positions == "prompt":
        mask = pos < prompt_len
    elif positions == "new":
        mask = pos >= prompt_len
    else:
        mask = torch.isin(pos, torch.tensor(list(positions), device=device, dtype=torch.long))
    return mask if bool(mask.any()) else None


def _covers_all(positions: Positions, prompt_len: int, start: int, S: int) -> bool | None:
    """Cheap answers without tensors: True = every position, False = none, None = some (compute a mask)."""
    end = start + S
    if positions == "all":
        return True
    if positions == "prompt":
        return True if end <= prompt_len else (False if start >= prompt_len else None)
    if positions == "new":
        return True if start >= prompt_len else (False if end <= prompt_len else None)
    inside = [p for p in positions if start <= p < end]
    return False if not inside else (True if len(inside) == S else None)


class _Edits:
    """Edits grouped by layer and site, applied in place to a step's activations."""

    def __init__(self, edits: Sequence[Edit], w: fw.Weights, batch: int, prompt_len: int) -> None:
        self.by_site: dict[tuple[int, Site], list[Edit]] = {}
        for e in edits:
            self.by_site.setdefault((e.layer, e.site), []).append(e)
        self.w, self.batch, self.prompt_len = w, batch, prompt_len
        self._rows: dict[tuple[int, ...], torch.Tensor] = {}

    def row_mask(self, rows: tuple[int, ...], device: torch.device) -> torch.Tensor:
        if rows not in self._rows:
            mask = torch.zeros(self.batch, dtype=torch.bool, device=device)
            mask[list(rows)] = True
            self._rows[rows] = mask
        return self._rows[rows]

    def apply(self, layer: int, site: Site, x: torch.Tensor, start: int, rows: torch.Tensor | None = None) -> None:
        """Edit x ([B, S, m] for "post", [B, S, d] for "resid") at absolute positions start..start+S-1.

        rows: which batch rows x holds (None = all; a prefill's last layer keeps them all)."""
        todo = self.by_site.get((layer, site))
        if not todo:
            return
        S = x.shape[1]
        for e in todo:
            covered = _covers_all(e.positions, self.prompt_len, start, S)
            if covered is False:
                continue
            pos_mask = None if covered else _position_mask(e.positions, self.prompt_len, start, S, x.device)
            row_mask = None if e.rows is None or len(e.rows) == self.batch else self.row_mask(e.rows, x.device)
            if site == "post":
                column = x[:, :, e.neuron]  # a view [B, S]
                new = _op(e.op, column, e.value)
                if pos_mask is None and row_mask is None:
                    column.copy_(new)
                else:
                    column.copy_(torch.where(_mask2d(row_mask, pos_mask, column), new, column))
            else:
                delta = (e.value * self.w.W_out[layer, e.neuron]).to(x.dtype)  # [d]
                if pos_mask is None and row_mask is None:
                    x.add_(delta)
                else:
                    x.add_(_mask2d(row_mask, pos_mask, x[..., 0])[..., None] * delta)


def _op(op: str, column: torch.Tensor, value: float) -> torch.Tensor:
    if op == "set":
        return torch.full_like(column, value)
    if op == "scale":
        return column * value
    if op == "add":
        return column + value
    raise ValueError(f"unknown op {op!r}")


def _mask2d(rows: torch.Tensor | None, positions: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """[B, S] bool from an optional row mask [B] and position mask [S]."""
    out = torch.ones(like.shape, dtype=torch.bool, device=like.device)
    if rows is not None:
        out &= rows[:, None]
    if positions is not None:
        out &= positions[None, :]
    return out


# ---------------------------------------------------------------- the cached forward


@dataclass
class KVCache:
    """Keys and values of every layer, preallocated: k, v [L, B, K, T, h] (keys after qk-norm and rotary).

    `length` positions are filled. Layers keep every position (a sliding-window layer reads only its window);
    T is prompt + new tokens, which generation has checked against the model's context."""

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0
    # Per-layer views [B, K, T, h], taken once: indexing the 5-d tensor at every layer of every step costs more
    # Python time than the attention it feeds.
    ks: list[torch.Tensor] = field(init=False, repr=False)
    vs: list[torch.Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.ks, self.vs = list(self.k.unbind(0)), list(self.v.unbind(0))

    @classmethod
    def empty(cls, w: fw.Weights, batch: int, capacity: int, device: torch.device) -> KVCache:
        shape = (w.n_layers, batch, w.n_kv_heads, capacity, w.d_head)
        dtype = w.W_QKV.dtype
        return cls(torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))

    @property
    def capacity(self) -> int:
        return self.k.shape[3]


def _embed_at(w: fw.Weights, tokens: torch.Tensor, start: int) -> torch.Tensor:
    """Residual entering block 0 for tokens [B, S] at positions start..: [B, S, d] (fw.embed starts at 0)."""
    resid = w.W_E[tokens]
    if w.arch.embed_scale != 1.0:
        resid = resid * w.arch.embed_scale
    if w.W_pos is not None:
        resid = resid + w.W_pos[start : start + tokens.shape[1]]
    return resid


def _cached_attention(
    w: fw.Weights, layer: int, resid: torch.Tensor, cache: KVCache, start: int, last_query_only: bool
) -> torch.Tensor:
    """Attention of `layer` for positions start..start+S-1 of resid [B, S, d], writing their keys/values into the
    cache and reading every visible earlier one from it. Returns what joins the residual: [B, S', d] (S' = 1 with
    last_query_only, else S)."""
    B, S, _ = resid.shape
    K, h = w.n_kv_heads, w.d_head
    g = w.n_heads // K
    q, k, v = fw.queries_keys_values(w, layer, resid, start)  # [B, S, n, h]; q carries the score scale
    end = start + S
    cache.ks[layer].narrow(2, start, S).copy_(k.transpose(1, 2))
    cache.vs[layer].narrow(2, start, S).copy_(v.transpose(1, 2))
    if last_query_only:
        q, S, first = q[:, -1:], 1, end - 1
    else:
        first = start
    window = w.arch.window(layer)
    # The earliest key any of these queries may see: a sliding-window layer reads only its window.
    lo = 0 if window is None else max(0, first - window + 1)
    keys, values = cache.ks[layer].narrow(2, lo, end - lo), cache.vs[layer].narrow(2, lo, end - lo)  # [B, K, T', h]
    # GQA: query head i reads kv head i // g (HF's repeat_kv order); the g heads and S positions of one kv head
    # go in one matmul with its keys, no repeated keys materialised.
    if S == 1:  # decoding: plain views, no permuted copies
        q = q.reshape(B, K, g, h)
    else:
        q = q.reshape(B, S, K, g, h).permute(0, 2, 3, 1, 4).reshape(B, K, g * S, h)
    scores = (q @ keys.transpose(-1, -2)).view(B, K, g, S, end - lo)
    scores = fw.softcap(scores, w.arch.attn_softcap)
    if S > 1:  # a single query at the newest position sees exactly keys lo..end-1: no mask needed
        q_pos = torch.arange(first, end, device=resid.device)[:, None]
        k_pos = torch.arange(lo, end, device=resid.device)[None, :]
        scores = scores.masked_fill(fw.hidden_keys(w, layer, q_pos, k_pos), torch.finfo(scores.dtype).min)
    pattern = scores.softmax(-1).view(B, K, g * S, end - lo)
    if S == 1:
        z = (pattern @ values).view(B, 1, K * g, h)
    else:
        z = (pattern @ values).view(B, K, g, S, h).permute(0, 3, 1, 2, 4).reshape(B, S, K * g, h)
    return fw.attn_post(w, layer, fw.attn_pre_norm_out(w, layer, z))


def forward_step(w: fw.Weights, tokens: torch.Tensor, cache: KVCache, edits: _Edits | None = None) -> torch.Tensor:
    """Run tokens [B, S] at positions cache.length.. through every layer, filling the cache; apply the edits.

    Returns the final residual at the last position: [B, d] (unembed it with fw.unembed)."""
    start = cache.length
    S = tokens.shape[1]
    if start + S > cache.capacity:
        raise ValueError(f"cache holds {cache.capacity} positions; asked for {start + S}")
    a = w.arch
    last = w.n_layers - 1
    resid = _embed_at(w, tokens, start)
    for layer in range(w.n_layers):
        # At the last layer only the last position reaches the logits: its keys/values are cached for all S
        # positions, its query, W_O and MLP run for the last alone.
        trim = layer == last and S > 1
        attn_out = _cached_attention(w, layer, resid, cache, start, last_query_only=trim)
        first = start + S - 1 if trim else start
        if trim:
            resid = resid[:, -1:]
        mid = resid + attn_out
        post = fw.mlp_post(w, layer, resid if a.parallel else mid)
        if edits is not None:
            edits.apply(layer, "post", post, first)
        out = fw.mlp_out_from_post(w, layer, post)
        if edits is not None:
            edits.apply(layer, "resid", out, first)
        resid = mid + out
    cache.length = start + S
    return resid[:, -1]


# ---------------------------------------------------------------- the one-position decoding step


def _splits(length: int, threads: int) -> int:
    """Into how many equal chunks to cut a matrix dimension of `length` for `threads` cores (1 = leave it whole)."""
    return next(s for s in range(max(1, threads), 0, -1) if length % s == 0)


class _Matrix:
    """x @ W for decoding: x [B, k] (a few rows), W [k, n]; returns [B, n].

    Why not plain `x @ W`: with one row it is a matrix-vector product, which MKL runs on one core at ~20 GB/s here
    (bench/generate.py: half of what a single pass over the weights can stream). Cut W into `s` equal chunks along
    one dimension, as views (no copy), and torch.bmm runs the chunks on separate cores: ~35-39 GB/s on 2 cores.
    Contiguous W [k, n] is cut along k (s partial products, summed); a transposed view (a tied unembedding,
    W = W_E.T) along n (s slices of the output, side by side). The sum over chunks reorders fp32 additions: the
    result equals x @ W within fp32 noise. On a GPU, or with one thread, it is plain x @ W.
    """

    def __init__(self, W: torch.Tensor, threads: int) -> None:
        k, n = W.shape
        self.W, self.k, self.n = W, k, n
        self.mode, self.chunks = "plain", W
        if W.device.type != "cpu" or threads < 2:
            return
        if W.is_contiguous() and (s := _splits(k, threads)) > 1:
            self.mode, self.s, self.chunks = "k", s, W.view(s, k // s, n)
        elif W.T.is_contiguous() and (s := _splits(n, threads)) > 1:
            self.mode, self.s, self.chunks = "n", s, W.T.view(s, n // s, k)  # [s, n/s, k]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        if self.mode == "k":  # [s, B, k/s] @ [s, k/s, n] → summed over s
            return torch.bmm(x.reshape(B, self.s, self.k // self.s).transpose(0, 1), self.chunks).sum(0)
        if self.mode == "n":  # [s, n/s, k] @ [s, k, B] → [B, n] (row-major chunks times x: 45 vs 16 GB/s here)
            return torch.bmm(self.chunks, x.T.expand(self.s, self.k, B)).permute(2, 0, 1).reshape(B, self.n)
        return x @ self.W


def _bias(b: torch.Tensor) -> torch.Tensor | None:
    """A bias, or None when it is all zeros (most families' processed biases): adding it would cost an op."""
    return b if bool(b.any()) else None


@dataclass
class _Layer:
    """One layer's parameters for decoding, as views of the model's weights, with its switches resolved."""

    ln1: tuple[torch.Tensor | None, torch.Tensor | None]
    qkv: _Matrix
    b_qkv: torch.Tensor | None
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    o: _Matrix
    b_o: torch.Tensor | None
    attn_post: torch.Tensor | None
    ln2: tuple[torch.Tensor | None, torch.Tensor | None]
    up: _Matrix
    b_up: torch.Tensor | None
    gate: _Matrix | None
    down: _Matrix
    b_down: torch.Tensor | None
    mlp_post: torch.Tensor | None
    window: int | None
    base: float | None  # rotary base


class Decoder:
    """One new token per row through every layer, reading and filling a KVCache: the step generation repeats.

    forward_step does the same for any number of positions; this is its S = 1 case specialised once per
    generation, because one step reads each weight once and the Python around ~40 small ops per layer costs as
    much as the reading: per-layer views and switches (bias or none, norm weights, qk-norm, window, rotary
    base) are resolved here, rotary cos/sin are looked up once per step for all layers, the query and key heads
    rotate together, attention is one scaled_dot_product_attention (a single query needs no mask: a sliding
    window only narrows the keys), and every matrix product goes through _Matrix. No weight is copied.
    Exactness against forward_step (and so against a recompute and transformers): tests/test_generate.py.
    """

    def __init__(self, w: fw.Weights, capacity: int, device: torch.device) -> None:
        a = w.arch
        self.w, self.a = w, a
        threads = torch.get_num_threads()
        H, K, h = w.n_heads, w.n_kv_heads, w.d_head
        self.H, self.K, self.h = H, K, h
        self.scale = a.attn_scale if a.attn_scale is not None else 1 / math.sqrt(h)
        pre = a.pre_norms
        self.layers = [
            _Layer(
                ln1=(fw.at(w.ln1_w, l), fw.at(w.ln1_b, l)) if pre else (None, None),
                qkv=_Matrix(w.W_QKV[l], threads),
                b_qkv=_bias(w.b_QKV[l]),
                q_norm=fw.at(w.q_norm_w, l),
                k_norm=fw.at(w.k_norm_w, l),
                o=_Matrix(w.W_O[l].flatten(0, 1), threads),
                b_o=_bias(w.b_O[l]),
                attn_post=fw.at(w.attn_post_w, l),
                ln2=(fw.at(w.ln2_w, l), fw.at(w.ln2_b, l)) if pre else (None, None),
                up=_Matrix(w.W_in[l], threads),
                b_up=_bias(w.b_in[l]),
                gate=None if w.W_gate is None else _Matrix(w.W_gate[l], threads),
                down=_Matrix(w.W_out[l], threads),
                b_down=_bias(w.b_out[l]),
                mlp_post=fw.at(w.mlp_post_w, l),
                window=a.window(l),
                base=a.rotary_bases[l] if a.rotary_dim is not None else None,
            )
            for l in range(w.n_layers)
        ]
        self.act = fw.ACTIVATIONS[a.act]
        self.unembedding = _Matrix(w.W_U, threads)
        self.b_U = _bias(w.b_U)
        # cos/sin of every position the cache can hold, per rotary base: [T, 1, dim]; sin with rotate_half's
        # sign folded in (its first half negated), so rotating is x·cos + roll(x, dim/2)·sin.
        self.tables: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
        if a.rotary_dim is not None:
            half = a.rotary_dim // 2
            for base in set(a.rotary_bases):
                cos, sin = fw._rotary_tables(base, a.rotary_dim, 0, capacity, device, w.W_QKV.dtype)
                sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
                self.tables[base] = (cos, sin)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """HF's rotary (rotate_half layout) on the first rotary_dim dims of x [B, n, h] at one position."""
        dim = self.a.rotary_dim
        assert dim is not None
        if dim == x.shape[-1]:
            return torch.addcmul(x * cos, x.roll(dim // 2, -1), sin)
        out = x.clone()  # partial rotary (GPT-NeoX, Phi-3): the other dims pass through
        rot = x[..., :dim]
        out[..., :dim] = torch.addcmul(rot * cos, rot.roll(dim // 2, -1), sin)
        return out

    def step(self, tokens: torch.Tensor, cache: KVCache, edits: _Edits | None = None) -> torch.Tensor:
        """tokens [B, 1] at position cache.length → the final residual [B, d] (= forward_step's, fp32 noise)."""
        w, a = self.w, self.a
        pos = cache.length
        if pos + 1 > cache.capacity:
            raise ValueError(f"cache holds {cache.capacity} positions; asked for {pos + 1}")
        B = tokens.shape[0]
        H, K, h = self.H, self.K, self.h
        resid = _embed_at(w, tokens, pos)[:, 0]  # [B, d]
        rotary = {base: (cos[pos], sin[pos]) for base, (cos, sin) in self.tables.items()}  # [1, dim] each
        for l, p in enumerate(self.layers):
            x = fw.norm(w, resid, *p.ln1) if a.pre_norms else resid
            qkv = p.qkv(x)
            if p.b_qkv is not None:
                qkv = qkv + p.b_qkv
            qk, v = qkv[:, : (H + K) * h].view(B, H + K, h), qkv[:, (H + K) * h :].view(B, K, h)
            if a.qk_norm is not None:
                q, k = _qk_norm(w, a.qk_norm, qk[:, :H], qk[:, H:], p.q_norm, p.k_norm)
                qk = torch.cat([q, k], dim=1)
            if p.base is not None:
                qk = self._rotate(qk, *rotary[p.base])
            q, k = qk[:, :H], qk[:, H:]
            cache.ks[l].select(2, pos).copy_(k)
            cache.vs[l].select(2, pos).copy_(v)
            lo = 0 if p.window is None else max(0, pos - p.window + 1)
            keys, values = cache.ks[l][:, :, lo : pos + 1], cache.vs[l][:, :, lo : pos + 1]  # [B, K, T', h]
            z = self._attend(q, keys, values)  # [B, H h]
            attn = p.o(z)
            if p.b_o is not None:
                attn = attn + p.b_o
            if a.post_norms:
                attn = fw.rms(attn, p.attn_post, w.eps)
            mid = resid + attn
            x = resid if a.parallel else mid
            if a.pre_norms:
                x = fw.norm(w, x, *p.ln2)
            up = p.up(x)
            if p.b_up is not None:
                up = up + p.b_up
            post = self.act(p.gate(x)) * up if p.gate is not None else self.act(up)
            if edits is not None:
                edits.apply(l, "post", post.view(B, 1, -1), pos)
            out = p.down(post)
            if p.b_down is not None:
                out = out + p.b_down
            if a.post_norms:
                out = fw.rms(out, p.mlp_post, w.eps)
            if edits is not None:
                edits.apply(l, "resid", out.view(B, 1, -1), pos)
            resid = mid + out
        cache.length = pos + 1
        return resid

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """One query per head q [B, H, h] over keys/values [B, K, T', h] (GQA: head i reads kv head i // g)."""
        B, K, T, h = keys.shape
        g = self.H // K
        if self.a.attn_softcap is None:
            z = F.scaled_dot_product_attention(
                q.view(B, K, g, h), keys, values, scale=self.scale
            )  # keys broadcast over the g query heads of each kv head: [B, K, g, h]
            return z.reshape(B, self.H * h)
        scores = (q.view(B, K, g, h) @ keys.transpose(-1, -2)) * self.scale  # [B, K, g, T']
        pattern = fw.softcap(scores, self.a.attn_softcap).softmax(-1)
        return (pattern @ values).reshape(B, self.H * h)

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """Logits [B, V] of the final residual [B, d] (= fw.unembed)."""
        w = self.w
        if w.W_U.dtype in fw.HALF:
            return fw.unembed(w, resid)  # float32 logits, as the first step's (see fw.unembed)
        logits = self.unembedding(fw.norm(w, resid, w.lnf_w, w.lnf_b))
        if self.b_U is not None:
            logits = logits + self.b_U
        return fw.softcap(logits, w.arch.final_softcap)


def _qk_norm(
    w: fw.Weights, kind: str, q: torch.Tensor, k: torch.Tensor, q_w: torch.Tensor | None, k_w: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The qk-norm of fw.split_qkv on q [B, H, h], k [B, K, h]: per head, or over all heads (OLMo 2)."""
    if kind == "head":
        return fw.rms(q, q_w, w.eps), fw.rms(k, k_w, w.eps)
    return fw.rms(q.flatten(1), q_w, w.eps).view(q.shape), fw.rms(k.flatten(1), k_w, w.eps).view(k.shape)


# ---------------------------------------------------------------- decoding


@dataclass(frozen=True)
class Sampling:
    """temperature 0 = greedy (argmax); else softmax(logits / temperature) restricted to the smallest set of
    tokens whose probability reaches top_p, drawn with the row's seed."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class TokenEvent:
    """What the streaming callback gets after each step: one entry per row."""

    step: int  # 0-based index of the new token
    token_ids: list[int]
    logprobs: list[float]
    finished: list[bool]  # the row stopped at this step or before (its later entries repeat its EOS)


@dataclass
class Generation:
    """The continuations of one batch. token_ids/logprobs per row: generated tokens only (a final EOS included);
    logprob = log softmax of the model's own logits (temperature 1, no top-p) at the chosen token.
    logits: [steps, B, V] float32 when asked for (tests), else None. finish per row: "eos" | "length" | "stopped"."""

    prompt_ids: list[int]
    token_ids: list[list[int]]
    logprobs: list[list[float]]
    finish: list[str]
    logits: torch.Tensor | None = field(default=None, repr=False)


def check_settings(model: Model, prompt_len: int, max_new_tokens: int, sampling: Sequence[Sampling]) -> None:
    """One clear line for each bad setting (UserError)."""
    cap = new_token_cap()
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= cap:
        raise UserError(f"max new tokens {max_new_tokens!r} is out of range; use 1..{cap}")
    if prompt_len + max_new_tokens > model.n_ctx:
        raise UserError(
            f"the prompt ({prompt_len} tokens) + {max_new_tokens} new tokens would pass {model.name}'s context of "
            f"{model.n_ctx} tokens; ask for at most {max(0, model.n_ctx - prompt_len)} new tokens"
        )
    if not sampling:
        raise UserError("no continuation asked for")
    if len(sampling) > row_cap():
        raise UserError(f"{len(sampling)} continuations at once; at most {row_cap()} here")
    for s in sampling:
        if not (math.isfinite(s.temperature) and s.temperature >= 0):
            raise UserError(f"temperature {s.temperature} must be a finite number ≥ 0 (0 = greedy)")
        if not (math.isfinite(s.top_p) and 0 < s.top_p <= 1):
            raise UserError(f"top-p {s.top_p} must be in (0, 1]")


def prefill_positions(w: fw.Weights, rows: int, prompt_len: int, capacity: int) -> int:
    """Prompt positions per prefill pass: the whole prompt at once unless the memory budget (core.engine.memory)
    says fewer; then the prompt goes through in chunks of positions, each reading the keys and values the earlier
    ones cached (the key/value cache of `rows` × `capacity` positions counted first). A cache that does not fit
    the budget at all is refused before any work, in one line."""
    kv = rows * memory.kv_cache_bytes_per_row(w, capacity)
    budget = memory.budget_bytes(w.W_E.device, memory.held_bytes(w))
    if kv > budget:
        mib = 1 << 20
        raise UserError(
            f"{rows} continuations of {capacity} positions need {kv / mib:,.0f} MiB of key/value cache and the "
            f"memory budget leaves {budget / mib:,.0f} MiB; ask for fewer samples, fewer new tokens or a shorter prompt"
        )
    per_position = rows * memory.forward_bytes_per_token(w, keys=capacity)
    return memory.rows_that_fit(per_position, budget - kv, cap=prompt_len)


def eos_ids(model: Model) -> tuple[int, ...]:
    """The tokens that end a continuation: the tokenizer's EOS (none if it has none)."""
    eos = getattr(model.tokenizer, "eos_token_id", None)
    return () if eos is None else (int(eos),)


def _choose(logits: torch.Tensor, sampling: Sequence[Sampling], generators: list[torch.Generator | None]) -> list[int]:
    """The next token of each row from logits [B, V] (float32)."""
    out = logits.argmax(-1).tolist()
    for row, (s, gen) in enumerate(zip(sampling, generators)):
        if s.greedy or gen is None:
            continue
        probs = (logits[row] / s.temperature).softmax(-1)
        # Stable sort: equal probabilities keep id order, so the draw is reproducible everywhere.
        sorted_p, order = probs.sort(descending=True, stable=True)
        cum = sorted_p.cumsum(0)
        if s.top_p < 1.0:
            keep = int((cum < s.top_p).sum()) + 1  # the smallest prefix whose mass reaches top_p
            sorted_p, cum = sorted_p[:keep], cum[:keep]
        u = float(torch.rand((), generator=gen)) * float(cum[-1])
        index = min(int(torch.searchsorted(cum, torch.tensor([u], dtype=cum.dtype, device=cum.device))), len(cum) - 1)
        out[row] = int(order[index])
    return out


@torch.no_grad()
def generate(
    model: Model,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    sampling: Sequence[Sampling] = (Sampling(),),
    edits: Sequence[Edit] = (),
    stop_ids: Sequence[int] | None = None,
    on_token: Callable[[TokenEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    use_cache: bool = True,
    keep_logits: bool = False,
) -> Generation:
    """Continue one prompt in B = len(sampling) rows at once (row i decodes with sampling[i]; edits pick rows).

    stop_ids: tokens that end a row (default: the tokenizer's EOS); a row that ended keeps feeding its EOS until
    every row has ended or max_new_tokens is reached. on_token: called after every step (streaming).
    should_stop: polled before every step; True ends every row ("stopped") with what it has.
    use_cache False recomputes the whole sequence at every step (the reference the cache must equal).
    """
    prompt_ids = [int(t) for t in prompt_ids]
    check_settings(model, len(prompt_ids), max_new_tokens, sampling)
    w, device = model.weights, model.device
    B, P = len(sampling), len(prompt_ids)
    stops = set(eos_ids(model) if stop_ids is None else (int(t) for t in stop_ids))
    plan = _Edits(edits, w, B, P)
    generators: list[torch.Generator | None] = [
        None if s.greedy else torch.Generator(device="cpu").manual_seed(int(s.seed)) for s in sampling
    ]
    token_ids: list[list[int]] = [[] for _ in range(B)]
    logprobs: list[list[float]] = [[] for _ in range(B)]
    finish = ["length"] * B
    done = [False] * B
    kept: list[torch.Tensor] = []
    sequence = torch.tensor([prompt_ids] * B, device=device)  # [B, P + steps] (for the no-cache path)
    cache = KVCache.empty(w, B, P + max_new_tokens, device) if use_cache else None
    decoder = Decoder(w, P + max_new_tokens, device) if use_cache else None
    prefill = prefill_positions(w, B, P, P + max_new_tokens) if use_cache else P
    step_input = sequence
    for step in range(max_new_tokens):
        if should_stop is not None and should_stop():
            finish = ["stopped" if not d else f for d, f in zip(done, finish)]
            break
        if cache is None or decoder is None:  # recompute everything from position 0
            fresh = KVCache.empty(w, B, sequence.shape[1], device)
            logits = fw.unembed(w, forward_step(w, sequence, fresh, plan)).float()  # [B, V]
        elif step == 0:  # the prompt: every position at once, or in chunks of `prefill` when memory is short
            for lo in range(0, P, prefill):
                final = forward_step(w, step_input[:, lo : lo + prefill], cache, plan)
            logits = decoder.unembed(final).float()
        else:
            logits = decoder.unembed(decoder.step(step_input, cache, plan)).float()
        if keep_logits:
            kept.append(logits)
        chosen = _choose(logits, sampling, generators)
        logp = logits.log_softmax(-1)
        chosen = [token_ids[r][-1] if done[r] else chosen[r] for r in range(B)]
        chosen_t = torch.tensor(chosen, device=device)
        picked = logp.gather(1, chosen_t[:, None])[:, 0].tolist()
        for r in range(B):
            if done[r]:
                continue
            token_ids[r].append(chosen[r])
            logprobs[r].append(picked[r])
            if chosen[r] in stops:
                done[r], finish[r] = True, "eos"
        if on_token is not None:
            on_token(TokenEvent(step, chosen, [logprobs[r][-1] for r in range(B)], list(done)))
        if all(done):
            break
        step_input = chosen_t[:, None]
        if cache is None:
            sequence = torch.cat([sequence, step_input], dim=1)
    return Generation(prompt_ids, token_ids, logprobs, finish, torch.stack(kept) if kept else None)
