"""The architecture families the engine runs: one declarative record each, and the weights read from Hugging Face.

A `Family` says which switches of `forward.Arch` a family uses and where its weights sit in the Hugging Face
checkpoint; `arch_of(config)` reads the per-model values (eps, rotary bases, windows, soft-caps) from the config.
GPT-2 and Llama are loaded through TransformerLens's bridge (its processed weights; see core.engine.model); every
other family is read here from the Hugging Face module and processed with the same rules (fold_ln, centring,
value-bias folding), and checked against Hugging Face's own forward and hooked patching in tests/test_families.py.
Adding a family is adding a record to FAMILIES.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from core.engine.forward import Arch, Weights
from core.errors import UserError


@dataclass(frozen=True)
class Family:
    """One architecture family. Field names follow `forward.Arch`; the rest is where the weights are."""

    label: str  # what the README and the model facts call it
    norm: Literal["LN", "RMS"] = "RMS"
    norm_plus_one: bool = False  # Gemma: the norm multiplies by (1 + w)
    pre_norms: bool = True
    post_norms: bool = False
    qk_norm: Literal["head", "all"] | None = None
    gated: bool = True
    scaled_embedding: bool = False  # Gemma: embedding × √d_model
    query_pre_attn_scalar: bool = False  # Gemma 2/3: scores × query_pre_attn_scalar^-½
    # Where the weights are (names inside one decoder layer of the Hugging Face module):
    ln1: str | None = "input_layernorm"
    ln2: str | None = "post_attention_layernorm"
    attn_post: str | None = None
    mlp_post: str | None = None
    qkv: Literal["separate", "fused", "fused_per_head"] = "separate"  # Phi-3: [q; k; v]; NeoX: per head [q k v]
    qkv_proj: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")  # one name when fused
    gate_up: Literal["separate", "fused"] = "separate"  # Phi-3: [gate; up] in one matrix (named by up_proj)
    up_proj: str = "up_proj"
    gate_proj: str | None = "gate_proj"  # None: not gated
    down_proj: str = "down_proj"
    attn: str = "self_attn"  # the attention module inside a decoder layer
    o_proj: str = "o_proj"
    decoder: str = "model"  # the attribute of the causal-LM module that holds embed/layers/norm
    embed: str = "embed_tokens"
    final_norm: str = "norm"
    parallel_flag: str | None = None  # the config attribute that switches attention and MLP to parallel (NeoX)
    layers: str = "layers"  # the decoder's list of layers (GPT-2: h)
    mlp: str = "mlp"  # the MLP module inside a decoder layer
    pos_embed: str | None = None  # learned position embeddings (GPT-2: wpe)
    lm_head: str = "lm_head"  # the unembedding, outside the decoder (NeoX: embed_out); absent when tied
    conv1d: bool = False  # GPT-2's Conv1D stores weights as [in, out] (torch Linear: [out, in])
    bridge: bool = False  # the reference load goes through TransformerLens's bridge (GPT-2, Llama)
    # Why float16 is refused for this family ("" = allowed; core.engine.model still checks its forward's range).
    no_float16: str = ""


_LLAMA_LIKE = Family("Llama")
# Measured on Gemma 3 270M (docs/big_models.md), its story prompt: the residual stream's largest entry is 68,398
# entering layer 8 and 103,795 at layer 15 in float32, past float16's largest value (65,504); float16 turns it
# into inf at layer 8 and every later activation and logit into NaN. Gemma 2 has the same sandwich of (1 + w)
# post-norms and √d_model-scaled embedding (trained in bfloat16); not measured here, refused alike.
_GEMMA_FP16 = (
    "its residual stream grows past float16's largest value 65,504 (Gemma 3 270M: |x| ≈ 104,000), so float16 "
    "gives inf/NaN; use bfloat16 (float32's range, half the memory) or float32"
)
_GEMMA2 = replace(
    _LLAMA_LIKE,
    label="Gemma 2",
    norm_plus_one=True,
    scaled_embedding=True,
    query_pre_attn_scalar=True,
    post_norms=True,
    ln2="pre_feedforward_layernorm",
    attn_post="post_attention_layernorm",
    mlp_post="post_feedforward_layernorm",
)

FAMILIES: dict[str, Family] = {
    "gpt2": Family(
        "GPT-2",
        norm="LN",
        gated=False,
        ln1="ln_1",
        ln2="ln_2",
        qkv="fused",
        qkv_proj=("c_attn",),
        up_proj="c_fc",
        gate_proj=None,
        down_proj="c_proj",
        attn="attn",
        o_proj="c_proj",
        decoder="transformer",
        layers="h",
        embed="wte",
        pos_embed="wpe",
        final_norm="ln_f",
        conv1d=True,
        bridge=True,
    ),
    "llama": replace(_LLAMA_LIKE, bridge=True),
    "mistral": replace(_LLAMA_LIKE, label="Mistral"),
    "qwen2": replace(_LLAMA_LIKE, label="Qwen 2 / 2.5"),
    "qwen3": replace(_LLAMA_LIKE, label="Qwen 3", qk_norm="head"),
    "phi3": replace(
        _LLAMA_LIKE, label="Phi-3", qkv="fused", qkv_proj=("qkv_proj",), gate_up="fused", up_proj="gate_up_proj"
    ),
    "gemma": replace(_LLAMA_LIKE, label="Gemma", norm_plus_one=True, scaled_embedding=True),
    "gemma2": replace(_GEMMA2, no_float16=_GEMMA_FP16),
    "gemma3_text": replace(_GEMMA2, label="Gemma 3", qk_norm="head", no_float16=_GEMMA_FP16),
    "olmo2": replace(
        _LLAMA_LIKE,
        label="OLMo 2",
        pre_norms=False,
        post_norms=True,
        qk_norm="all",
        ln1=None,
        ln2=None,
        attn_post="post_attention_layernorm",
        mlp_post="post_feedforward_layernorm",
    ),
    "gpt_neox": Family(
        "GPT-NeoX / Pythia",
        norm="LN",
        gated=False,
        qkv="fused_per_head",
        qkv_proj=("query_key_value",),
        up_proj="dense_h_to_4h",
        gate_proj=None,
        down_proj="dense_4h_to_h",
        attn="attention",
        o_proj="dense",
        decoder="gpt_neox",
        embed="embed_in",
        final_norm="final_layer_norm",
        lm_head="embed_out",
        parallel_flag="use_parallel_residual",
    ),
}
SUPPORTED_TYPES = tuple(FAMILIES)

_ACTS = {
    "gelu_new": "gelu_new",
    "gelu_pytorch_tanh": "gelu_new",
    "gelu_fast": "gelu_new",
    "gelu": "gelu",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
}


def family_of(config: Any) -> Family:
    if config.model_type not in FAMILIES:
        raise UserError(unsupported_message(config.model_type))
    return FAMILIES[config.model_type]


def check_dtype(fam: Family, dtype: str) -> None:
    """Refuse a dtype the family cannot hold (float16 for Gemma 2/3): one line naming the family, why, what to use."""
    if dtype == "float16" and fam.no_float16:
        raise UserError(f"float16 is refused for {fam.label} models: {fam.no_float16}")


def unsupported_message(model_type: str) -> str:
    return (
        f"this is a {model_type!r} model, which the engine does not run; supported families (config "
        f"model_type): {', '.join(SUPPORTED_TYPES)}"
    )


def _rope(config: Any) -> dict[str, dict]:
    """Rotary parameters per layer type ('default' when all layers share one), rope_type checked."""
    rope = getattr(config, "rope_parameters", None) or {"rope_theta": getattr(config, "rope_theta", 10000.0)}
    per_type = rope if all(isinstance(v, dict) for v in rope.values()) else {"default": rope}
    for kind, params in per_type.items():
        if params.get("rope_type", "default") != "default":
            raise UserError(
                f"rotary scaling {params.get('rope_type')!r} ({kind} layers) is not supported; "
                "only plain rotary (rope_type 'default')"
            )
    return per_type


def arch_of(config: Any, d_head: int) -> Arch:
    """The forward's switches for one model, from its Hugging Face config."""
    fam = family_of(config)
    L = config.num_hidden_layers if hasattr(config, "num_hidden_layers") else config.n_layer
    eps = next(
        getattr(config, n)
        for n in ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon")
        if getattr(config, n, None) is not None
    )
    act_name = getattr(config, "hidden_act", None) or getattr(config, "activation_function", None) or "gelu_new"
    if act_name not in _ACTS:
        raise UserError(f"activation {act_name!r} is not supported; supported: {', '.join(sorted(_ACTS))}")
    layer_types = list(getattr(config, "layer_types", None) or [])
    rotary_dim: int | None = None
    bases: tuple[float, ...] = ()
    if config.model_type != "gpt2":
        per_type = _rope(config)
        partial = next(
            (p.get("partial_rotary_factor") for p in per_type.values() if "partial_rotary_factor" in p),
            getattr(config, "partial_rotary_factor", None),
        )
        partial = 1.0 if partial is None else float(partial)
        rotary_dim = int(d_head * partial)
        base = {kind: float(p["rope_theta"]) for kind, p in per_type.items()}
        bases = tuple(base[t] if t in base else base["default"] for t in (layer_types or ["default"] * L))
    window = getattr(config, "sliding_window", None)
    if layer_types:
        windows = tuple(window if t == "sliding_attention" else None for t in layer_types)
    else:
        windows = (window,) * L if window else ()
    return Arch(
        norm=fam.norm,
        eps=float(eps),
        act=_ACTS[act_name],  # type: ignore[arg-type]  # the table's values are the Literal's
        gated=fam.gated,
        n_layers=L,
        pre_norms=fam.pre_norms,
        post_norms=fam.post_norms,
        qk_norm=fam.qk_norm,
        parallel=bool(getattr(config, fam.parallel_flag, False)) if fam.parallel_flag else False,
        rotary_dim=rotary_dim,
        rotary_bases=bases,
        windows=windows,
        attn_scale=config.query_pre_attn_scalar**-0.5 if fam.query_pre_attn_scalar else None,
        attn_softcap=getattr(config, "attn_logit_softcapping", None),
        final_softcap=getattr(config, "final_logit_softcapping", None),
        embed_scale=math.sqrt(config.hidden_size) if fam.scaled_embedding else 1.0,
    )


# ---------------------------------------------------------------- weights from a Hugging Face module


def _linear(module: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A torch Linear as (W [in, out], b [out] | None): TransformerLens's orientation."""
    return module.weight.detach().T, None if module.bias is None else module.bias.detach()


def _norm_weight(fam: Family, module: Any) -> torch.Tensor:
    w = module.weight.detach()
    return w + 1.0 if fam.norm_plus_one else w


_Maybe = torch.Tensor | None


def _qkv(fam: Family, attn: Any, H: int, h: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's fused W_QKV [d, (H + 2K)·h] as [all q | all k | all v] and its bias (zeros where there is none)."""
    parts = [_linear(getattr(attn, name)) for name in fam.qkv_proj]
    W = torch.cat([W for W, _ in parts], dim=1)
    b = torch.cat([_bias(bias, Wp.shape[1], W) for Wp, bias in parts])
    if fam.qkv == "fused_per_head":  # NeoX: columns grouped per head as [q_h k_h v_h]; regroup
        W = W.unflatten(1, (H, 3, h)).permute(0, 2, 1, 3).flatten(1)
        b = b.unflatten(0, (H, 3, h)).permute(1, 0, 2).flatten()
    return W, b


def _mlp(fam: Family, mlp: Any) -> tuple[torch.Tensor, _Maybe, _Maybe, torch.Tensor, _Maybe]:
    """(W_in, b_in, W_gate, W_out, b_out) of one layer's MLP; W_gate None when not gated."""
    W_in, b_in = _linear(getattr(mlp, fam.up_proj))
    W_gate = None
    if fam.gate_up == "fused":
        W_gate, W_in = W_in.chunk(2, dim=1)
    elif fam.gate_proj is not None:
        W_gate = _linear(getattr(mlp, fam.gate_proj))[0]
    W_out, b_out = _linear(getattr(mlp, fam.down_proj))
    return W_in, b_in, W_gate, W_out, b_out


def _bias(b: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(n, dtype=like.dtype, device=like.device) if b is None else b


def _norm_pair(fam: Family, module: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if module is None:
        return None, None
    bias = getattr(module, "bias", None)
    return _norm_weight(fam, module), None if bias is None else bias.detach()


def _stack(items: list) -> torch.Tensor | None:
    return None if not items or items[0] is None else torch.stack(items).contiguous()


def raw_weights(hf: Any) -> Weights:
    """The Hugging Face module's parameters as `Weights`, unprocessed (norms keep their weights).

    Where each weight sits comes from the family's record (module names, fused layouts): no per-family branches.
    """
    config = hf.config
    fam = family_of(config)
    decoder = getattr(hf, fam.decoder)
    H = config.num_attention_heads
    d = config.hidden_size
    h = getattr(config, "head_dim", None) or d // H
    per_layer: dict[str, list] = {}

    def keep(**tensors: torch.Tensor | None) -> None:
        for key, value in tensors.items():
            per_layer.setdefault(key, []).append(value)

    for layer in decoder.layers:
        attn = getattr(layer, fam.attn)
        W_QKV, b_QKV = _qkv(fam, attn, H, h)
        W_O, b_O = _linear(getattr(attn, fam.o_proj))
        W_in, b_in, W_gate, W_out, b_out = _mlp(fam, layer.mlp)
        ln1_w, ln1_b = _norm_pair(fam, getattr(layer, fam.ln1) if fam.ln1 else None)
        ln2_w, ln2_b = _norm_pair(fam, getattr(layer, fam.ln2) if fam.ln2 else None)
        keep(
            W_QKV=W_QKV,
            b_QKV=b_QKV,
            W_O=W_O.unflatten(0, (H, h)),
            b_O=_bias(b_O, d, W_O),
            W_in=W_in,
            b_in=_bias(b_in, W_in.shape[1], W_in),
            W_gate=W_gate,
            W_out=W_out,
            b_out=_bias(b_out, d, W_out),
            ln1_w=ln1_w,
            ln1_b=ln1_b,
            ln2_w=ln2_w,
            ln2_b=ln2_b,
            q_norm_w=_norm_weight(fam, attn.q_norm) if fam.qk_norm else None,
            k_norm_w=_norm_weight(fam, attn.k_norm) if fam.qk_norm else None,
            attn_post_w=_norm_weight(fam, getattr(layer, str(fam.attn_post))) if fam.post_norms else None,
            mlp_post_w=_norm_weight(fam, getattr(layer, str(fam.mlp_post))) if fam.post_norms else None,
        )
    final = getattr(decoder, fam.final_norm)
    unembed = hf.get_output_embeddings()
    W_U = unembed.weight.detach().T
    lnf_w, lnf_b = _norm_pair(fam, final)
    stacked = {key: _stack(items) for key, items in per_layer.items()}
    return Weights(
        arch=arch_of(config, h),
        W_E=getattr(decoder, fam.embed).weight.detach(),
        W_pos=None,
        lnf_w=lnf_w,
        lnf_b=lnf_b,
        n_heads=H,
        n_kv_heads=getattr(config, "num_key_value_heads", None) or H,
        W_U=W_U,
        b_U=_bias(getattr(unembed, "bias", None), W_U.shape[1], W_U),
        **stacked,  # type: ignore[arg-type]  # the required ones (W_QKV, W_O, W_in, W_out, biases) are never None
    )


# ---------------------------------------------------------------- TransformerLens's default processing


def process(w: Weights) -> Weights:
    """TransformerLens's defaults, done on plain tensors: the same results as its bridge gives GPT-2 and Llama.

    - fold_ln: each pre-norm's weight (and bias) folds into the matrices that read it (W_QKV; W_in, W_gate;
      W_U), leaving a weightless norm. Post-norms and qk-norms are not folded (nothing linear follows them
      before a nonlinearity) and keep their weights.
    - center_writing_weights (LayerNorm families only: RMSNorm does not remove the mean): what writes to the
      residual (W_E, W_O, b_O, W_out, b_out) has its mean over d_model removed, which LayerNorm ignores anyway.
      Not with post-norms, whose RMSNorm would see the change.
    - center_unembed: W_U and b_U lose their mean over the vocabulary (softmax ignores it); not with a final
      logit soft-cap, which would see it.
    - fold_value_biases: b_V moves into b_O (attention weights sum to 1, so every position gets exactly b_V W_O).

    The per-layer part (`process_layers`) and the embedding / unembedding parts (`process_embed`,
    `process_unembed`) touch disjoint tensors, so core.engine.loader runs them layer by layer with the same ops.
    """
    out = process_layers(w)
    out.W_E = process_embed(w.W_E, w.arch)
    out.W_U, out.b_U = process_unembed(w.W_U, w.b_U, w.lnf_w, w.lnf_b, w.arch)
    out.lnf_w = out.lnf_b = None
    return out


def centres_writing_weights(a: Arch) -> bool:
    return a.norm == "LN" and not a.post_norms


def process_embed(W_E: torch.Tensor, a: Arch) -> torch.Tensor:
    """center_writing_weights on the embedding [V, d] (LayerNorm families without post-norms)."""
    return W_E - W_E.mean(-1, keepdim=True) if centres_writing_weights(a) else W_E


def process_unembed(
    W_U: torch.Tensor,
    b_U: torch.Tensor,
    lnf_w: torch.Tensor | None,
    lnf_b: torch.Tensor | None,
    a: Arch,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """fold_ln of the final norm into W_U [d, V], b_U [V]; then center_unembed (not with a final soft-cap).

    inplace: W_U is changed in place (the same values bit for bit; the streaming loader holds no second copy)."""
    if lnf_b is not None:
        b_U = b_U + lnf_b @ W_U
    if lnf_w is not None:
        W_U = W_U.mul_(lnf_w[:, None]) if inplace else W_U * lnf_w[:, None]
    if a.final_softcap is None:
        mean = W_U.mean(-1, keepdim=True)
        W_U = W_U.sub_(mean) if inplace else W_U - mean
        b_U = b_U - b_U.mean()
    return W_U, b_U


def process_layers(w: Weights) -> Weights:
    """The per-layer part of `process` (fold_ln of the pre-norms, centring, value-bias folding); W_E, W_U, b_U
    and the final norm are returned untouched."""
    a = w.arch

    def fold(
        weight: torch.Tensor | None, bias: torch.Tensor | None, W: torch.Tensor, b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Norm weight [L, d] (bias [L, d]) into W [L, d, n] and b [L, n]."""
        if bias is not None:
            b = b + torch.einsum("ld,ldn->ln", bias, W)
        if weight is not None:
            W = W * weight[:, :, None]
        return W, b

    out = replace(w)
    if a.pre_norms:
        out.W_QKV, out.b_QKV = fold(w.ln1_w, w.ln1_b, w.W_QKV, w.b_QKV)
        out.W_in, out.b_in = fold(w.ln2_w, w.ln2_b, w.W_in, w.b_in)
        if w.W_gate is not None:  # gated MLPs have no bias on the gate (none of the families do)
            out.W_gate = fold(w.ln2_w, None, w.W_gate, torch.zeros(1))[0]
        out.ln1_w = out.ln1_b = out.ln2_w = out.ln2_b = None
    if centres_writing_weights(a):
        out.W_O = w.W_O - w.W_O.mean(-1, keepdim=True)
        out.b_O = w.b_O - w.b_O.mean(-1, keepdim=True)
        out.W_out = w.W_out - w.W_out.mean(-1, keepdim=True)
        out.b_out = w.b_out - w.b_out.mean(-1, keepdim=True)
    # fold_value_biases: query head i reads value head i // group.
    H, K, h = w.n_heads, w.n_kv_heads, w.d_head
    b_V = w._split(out.b_QKV, 2)  # [L, K, h]
    per_query_head = b_V.repeat_interleave(H // K, dim=1)  # [L, H, h]
    out.b_O = out.b_O + torch.einsum("lnh,lnhd->ld", per_query_head, out.W_O)
    out.b_QKV = out.b_QKV.clone()
    out.b_QKV[:, (H + K) * h :] = 0
    return out
