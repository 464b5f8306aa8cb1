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
    gate_up: Literal["separate", "fused"] = "separate"  # Phi-3: [gate; up]
    decoder: str = "model"  # the attribute of the causal-LM module that holds embed/layers/norm
    bridge: bool = False  # loaded through TransformerLens's bridge (GPT-2, Llama)


_LLAMA_LIKE = Family("Llama")
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
    "gpt2": Family("GPT-2", norm="LN", gated=False, bridge=True),
    "llama": replace(_LLAMA_LIKE, bridge=True),
    "mistral": replace(_LLAMA_LIKE, label="Mistral"),
    "qwen2": replace(_LLAMA_LIKE, label="Qwen 2 / 2.5"),
    "qwen3": replace(_LLAMA_LIKE, label="Qwen 3", qk_norm="head"),
    "phi3": replace(_LLAMA_LIKE, label="Phi-3", qkv="fused", gate_up="fused"),
    "gemma": replace(_LLAMA_LIKE, label="Gemma", norm_plus_one=True, scaled_embedding=True),
    "gemma2": _GEMMA2,
    "gemma3_text": replace(_GEMMA2, label="Gemma 3", qk_norm="head"),
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
    "gpt_neox": Family("GPT-NeoX / Pythia", norm="LN", gated=False, qkv="fused_per_head", decoder="gpt_neox"),
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
        parallel=bool(getattr(config, "use_parallel_residual", False)) if fam.decoder == "gpt_neox" else False,
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


def raw_weights(hf: Any) -> Weights:
    """The Hugging Face module's parameters as `Weights`, unprocessed (norms keep their weights)."""
    config = hf.config
    fam = family_of(config)
    decoder = getattr(hf, fam.decoder)
    layers = decoder.layers
    H = config.num_attention_heads
    K = getattr(config, "num_key_value_heads", None) or H
    d = config.hidden_size
    h = getattr(config, "head_dim", None) or d // H
    arch = arch_of(config, h)
    Ws: dict[str, list] = {
        k: []
        for k in (
            "qkv",
            "b_qkv",
            "W_O",
            "b_O",
            "W_in",
            "b_in",
            "W_gate",
            "W_out",
            "b_out",
            "ln1_w",
            "ln1_b",
            "ln2_w",
            "ln2_b",
            "q_norm",
            "k_norm",
            "attn_post",
            "mlp_post",
        )
    }

    def zeros(n: int, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n, dtype=like.dtype, device=like.device)

    for layer in layers:
        attn = layer.attention if fam.decoder == "gpt_neox" else layer.self_attn
        if fam.qkv == "separate":
            parts = [_linear(attn.q_proj), _linear(attn.k_proj), _linear(attn.v_proj)]
            W = torch.cat([p[0] for p in parts], dim=1)
            b = torch.cat([p[1] if p[1] is not None else zeros(p[0].shape[1], W) for p in parts])
        elif fam.qkv == "fused":
            W, fused_b = _linear(attn.qkv_proj)
            b = zeros(W.shape[1], W) if fused_b is None else fused_b
        else:  # NeoX: columns grouped per head as [q_h k_h v_h]; regroup to [all q | all k | all v]
            W, fused_b = _linear(attn.query_key_value)
            assert fused_b is not None  # GPT-NeoX always has QKV biases
            W = W.unflatten(1, (H, 3, h)).permute(0, 2, 1, 3).flatten(1)
            b = fused_b.unflatten(0, (H, 3, h)).permute(1, 0, 2).flatten()
        Ws["qkv"].append(W)
        Ws["b_qkv"].append(b)
        W_O, b_O = _linear(attn.dense if fam.decoder == "gpt_neox" else attn.o_proj)
        Ws["W_O"].append(W_O.unflatten(0, (H, h)))
        Ws["b_O"].append(zeros(d, W_O) if b_O is None else b_O)
        mlp = layer.mlp
        if fam.decoder == "gpt_neox":
            W_in, b_in = _linear(mlp.dense_h_to_4h)
            W_out, b_out = _linear(mlp.dense_4h_to_h)
            W_gate = None
        else:
            if fam.gate_up == "fused":
                W_gate, W_in = _linear(mlp.gate_up_proj)[0].chunk(2, dim=1)
            else:
                W_gate, W_in = _linear(mlp.gate_proj)[0], _linear(mlp.up_proj)[0]
            b_in = None
            W_out, b_out = _linear(mlp.down_proj)
        Ws["W_in"].append(W_in)
        Ws["b_in"].append(zeros(W_in.shape[1], W_in) if b_in is None else b_in)
        Ws["W_gate"].append(W_gate)
        Ws["W_out"].append(W_out)
        Ws["b_out"].append(zeros(d, W_out) if b_out is None else b_out)
        for key, name in (("ln1", fam.ln1), ("ln2", fam.ln2)):
            module = getattr(layer, name) if name else None
            Ws[f"{key}_w"].append(None if module is None else _norm_weight(fam, module))
            bias = getattr(module, "bias", None) if module is not None else None
            Ws[f"{key}_b"].append(None if bias is None else bias.detach())
        if fam.qk_norm:
            Ws["q_norm"].append(_norm_weight(fam, attn.q_norm))
            Ws["k_norm"].append(_norm_weight(fam, attn.k_norm))
        if fam.post_norms:
            Ws["attn_post"].append(_norm_weight(fam, getattr(layer, str(fam.attn_post))))
            Ws["mlp_post"].append(_norm_weight(fam, getattr(layer, str(fam.mlp_post))))

    def stack(key: str) -> torch.Tensor | None:
        items = Ws[key]
        return None if not items or items[0] is None else torch.stack(items).contiguous()

    def stack_all(key: str) -> torch.Tensor:
        return torch.stack(Ws[key]).contiguous()

    embed = decoder.embed_in if fam.decoder == "gpt_neox" else decoder.embed_tokens
    final = decoder.final_layer_norm if fam.decoder == "gpt_neox" else decoder.norm
    unembed = hf.get_output_embeddings()
    W_E = embed.weight.detach()
    W_U = unembed.weight.detach().T
    return Weights(
        arch=arch,
        W_E=W_E,
        W_pos=None,
        ln1_w=stack("ln1_w"),
        ln1_b=stack("ln1_b"),
        ln2_w=stack("ln2_w"),
        ln2_b=stack("ln2_b"),
        lnf_w=_norm_weight(fam, final),
        lnf_b=None if getattr(final, "bias", None) is None else final.bias.detach(),
        W_QKV=stack_all("qkv"),
        b_QKV=stack_all("b_qkv"),
        n_heads=H,
        n_kv_heads=K,
        W_O=stack_all("W_O"),
        b_O=stack_all("b_O"),
        W_in=stack_all("W_in"),
        W_gate=stack("W_gate"),
        b_in=stack_all("b_in"),
        W_out=stack_all("W_out"),
        b_out=stack_all("b_out"),
        W_U=W_U,
        b_U=zeros(W_U.shape[1], W_U) if getattr(unembed, "bias", None) is None else unembed.bias.detach(),
        q_norm_w=stack("q_norm"),
        k_norm_w=stack("k_norm"),
        attn_post_w=stack("attn_post"),
        mlp_post_w=stack("mlp_post"),
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
    """
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
    if w.lnf_b is not None:
        out.b_U = w.b_U + w.lnf_b @ w.W_U
    if w.lnf_w is not None:
        out.W_U = w.W_U * w.lnf_w[:, None]
    out.lnf_w = out.lnf_b = None
    if a.norm == "LN" and not a.post_norms:
        out.W_E = w.W_E - w.W_E.mean(-1, keepdim=True)
        out.W_O = w.W_O - w.W_O.mean(-1, keepdim=True)
        out.b_O = w.b_O - w.b_O.mean(-1, keepdim=True)
        out.W_out = w.W_out - w.W_out.mean(-1, keepdim=True)
        out.b_out = w.b_out - w.b_out.mean(-1, keepdim=True)
    if a.final_softcap is None:
        out.W_U = out.W_U - out.W_U.mean(-1, keepdim=True)
        out.b_U = out.b_U - out.b_U.mean()
    # fold_value_biases: query head i reads value head i // group.
    H, K, h = w.n_heads, w.n_kv_heads, w.d_head
    b_V = w._split(out.b_QKV, 2)  # [L, K, h]
    per_query_head = b_V.repeat_interleave(H // K, dim=1)  # [L, H, h]
    out.b_O = out.b_O + torch.einsum("lnh,lnhd->ld", per_query_head, out.W_O)
    out.b_QKV = out.b_QKV.clone()
    out.b_QKV[:, (H + K) * h :] = 0
    return out
