"""The streaming loader: safetensors → processed, stacked `forward.Weights`, at about the size of the weights.

Where the reference load (`loader="bridge"` in core.engine.model) materialises the Hugging Face model, then the
bridge's processed copy, then the stacked copy (≈ 3–4× the weights at peak), this module reads the checkpoint
tensor by tensor (memory-mapped with `safetensors.safe_open`; the files are opened per layer so that the mapped
pages are let go), processes each layer in float32 and writes it into tensors preallocated in the target dtype.
Nothing is held twice; the only transient is one layer in float32 (and, for bfloat16 / float16, one chunk of
the (un)embedding at a time).

Which weight processing: the same code paths as the reference load, so float32 results are equal bit for bit
(tests/test_loader.py checks every tensor and the logits):
- GPT-2 (LayerNorm; the bridge's processing, which also centres the weights that *read* a LayerNorm): through
  TransformerLens's own `ProcessWeights.process_weights`, one layer at a time, on a TransformerLens-named state
  dict, so "tl-default" stays TransformerLens's processing by construction;
- every other family (Llama included: the bridge's results equal these bit for bit): `families.process_layers`
  per layer and `families.process_embed` / `process_unembed` on the (un)embedding.
In bfloat16 / float16 the processing still runs in float32 and is cast after (the (un)embedding's centring
uses a mean accumulated in float64 over chunks, so its result can differ from float32's in the last bit before
the cast).
"""

from __future__ import annotations

import json
import math
import struct
import types
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from core.engine import families, memory
from core.engine.forward import Weights
from core.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_SAFETENSORS_DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
_CHUNK_BYTES = 32 << 20  # fp32 bytes of one (un)embedding chunk (a few are alive at once)


def torch_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} unknown; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def check_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The torch dtype, refused where the device cannot run it (float16 matmuls on a CPU without support)."""
    chosen = torch_dtype(dtype)
    if device.type == "cuda" and chosen == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise UserError(f"{device} does not run bfloat16 (compute capability < 8.0); use float16 or float32")
    if device.type == "cpu" and chosen != torch.float32:
        try:
            a = torch.ones(2, 2, dtype=chosen)
            (a @ a).sum().item()
        except RuntimeError as err:
            raise UserError(f"this CPU's torch cannot run {dtype} matmuls ({err}); use float32") from err
    return chosen


# ---------------------------------------------------------------- the checkpoint's header


@dataclass
class Checkpoint:
    """A folder's safetensors files: every tensor's file, dtype and shape, from the headers alone."""

    folder: Path
    files: dict[str, Path]  # tensor name → file
    dtypes: dict[str, str]  # tensor name → safetensors dtype ("F32", "BF16", …)
    shapes: dict[str, tuple[int, ...]]

    @classmethod
    def read(cls, folder: Path) -> Checkpoint:
        index = folder / "model.safetensors.index.json"
        if index.exists():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            paths = [folder / n for n in names]
        else:
            paths = sorted(folder.glob("*.safetensors"))
        if not paths:
            raise UserError(f"{str(folder)!r} has no *.safetensors weights")
        files: dict[str, Path] = {}
        dtypes: dict[str, str] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        for path in paths:
            try:
                with open(path, "rb") as f:
                    (n,) = struct.unpack("<Q", f.read(8))
                    if n > 100_000_000:
                        raise ValueError(f"header length {n}")
                    header = json.loads(f.read(n))
            except (OSError, ValueError, struct.error) as err:
                raise UserError(f"could not load weights from {path}: not a readable safetensors file ({err})") from err
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                files[name] = path
                dtypes[name] = info["dtype"]
                shapes[name] = tuple(info["shape"])
        return cls(folder, files, dtypes, shapes)

    def float_dtype(self) -> str:
        """The one floating dtype of the weights; a folder that mixes them is refused (one line)."""
        counts: dict[str, int] = {}
        for dt in self.dtypes.values():
            if dt in _SAFETENSORS_DTYPES:
                counts[dt] = counts.get(dt, 0) + 1
        if len(counts) > 1:
            listed = ", ".join(f"{dt}: {n} tensors" for dt, n in sorted(counts.items(), key=lambda kv: -kv[1]))
            raise UserError(
                f"{str(self.folder)!r} mixes weight dtypes ({listed}); re-save it in one dtype "
                "(e.g. model.to(torch.bfloat16).save_pretrained(folder))"
            )
        return next(iter(counts), "F32")

    def n_params(self) -> int:
        return sum(math.prod(s) for n, s in self.shapes.items() if self.dtypes[n] in _SAFETENSORS_DTYPES)

    def nbytes(self) -> int:
        return sum(
            math.prod(s) * _SAFETENSORS_DTYPES[self.dtypes[n]]
            for n, s in self.shapes.items()
            if self.dtypes[n] in _SAFETENSORS_DTYPES
        )


def weights_bytes(ck: Checkpoint, fam: families.Family, config: Any, dtype: torch.dtype) -> int:
    """What the loaded `Weights` hold: every checkpoint tensor in `dtype`, plus W_U when tied to W_E (processing
    makes them differ, so both are held)."""
    params = ck.n_params()
    if _name(ck, fam, f"{fam.lm_head}.weight", top=True) is None:
        params += math.prod(ck.shapes[_require(ck, fam, f"{fam.embed}.weight")])
    return params * torch.empty(0, dtype=dtype).element_size()


def check_budget(label: str, ck: Checkpoint, fam: families.Family, config: Any, dtype: str) -> None:
    """Refuse, before loading, a model whose weights exceed TNE_MEMORY_BUDGET_MB (when set): one line that says
    the size, the budget and what would fit."""
    setting = memory.set_budget()
    if setting is None:
        return
    raw, budget = setting
    need = weights_bytes(ck, fam, config, DTYPES[dtype])
    if need <= budget:
        return
    fits = [d for d, t in DTYPES.items() if weights_bytes(ck, fam, config, t) <= budget]
    per_param = budget / max(1, ck.n_params())
    hint = (
        f"in {' or '.join(fits)} it fits"
        if fits
        else f"it does not fit in any dtype (the budget holds ~{budget / 2 / 1e9:.2f}B params in bfloat16)"
    )
    raise UserError(
        f"{label}: {ck.n_params() / 1e9:.2f}B params need {need / 2**30:.2f} GiB in {dtype} (checkpoint "
        f"{ck.nbytes() / 2**30:.2f} GiB), over the memory budget TNE_MEMORY_BUDGET_MB={raw} "
        f"({budget / 2**30:.2f} GiB, {per_param:.1f} bytes per param); {hint}"
    )


def _name(ck: Checkpoint, fam: families.Family, path: str, top: bool = False) -> str | None:
    """The checkpoint's name for a module path inside the decoder (or at the top, e.g. lm_head); checkpoints
    saved from the bare decoder (the hub's gpt2) lack the decoder's prefix."""
    candidates = [path] if top else [f"{fam.decoder}.{path}", path]
    return next((c for c in candidates if c in ck.files), None)


def _require(ck: Checkpoint, fam: families.Family, path: str) -> str:
    found = _name(ck, fam, path)
    if found is None:
        raise UserError(f"{str(ck.folder)!r}: tensor {fam.decoder}.{path} is missing from the checkpoint")
    return found


# ---------------------------------------------------------------- reading


class _Reader:
    """Reads named tensors as float32, opening each file once per call and closing it after (its mapped pages
    are let go, so the process's resident memory does not grow with the file)."""

    def __init__(self, ck: Checkpoint, fam: families.Family):
        self.ck, self.fam = ck, fam

    def read(self, paths: dict[str, str]) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        names = {key: _require(self.ck, self.fam, path) for key, path in paths.items()}
        by_file: dict[Path, list[str]] = {}
        for key, name in names.items():
            by_file.setdefault(self.ck.files[name], []).append(key)
        out: dict[str, torch.Tensor] = {}
        for file, keys in by_file.items():
            with safe_open(str(file), framework="pt") as f:
                for key in keys:
                    out[key] = f.get_tensor(names[key]).float()
        return out

    def optional(self, paths: dict[str, str]) -> dict[str, torch.Tensor]:
        return self.read({k: p for k, p in paths.items() if _name(self.ck, self.fam, p) is not None})

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.ck.files[name]), framework="pt") as f:
            return f.get_slice(name)[start:stop].float()


# ---------------------------------------------------------------- one layer, raw (TransformerLens orientation)


def _oriented(fam: families.Family, W: torch.Tensor) -> torch.Tensor:
    """[in, out], as TransformerLens stores it (a view of torch Linear's [out, in])."""
    return W if fam.conv1d else W.T


def _raw_layer(reader: _Reader, fam: families.Family, config: Any, i: int, H: int, K: int, h: int) -> dict:
    """One layer's raw tensors as `Weights` fields with a leading layer dim of 1 (what raw_weights stacks)."""
    d = config.hidden_size
    base = f"{fam.layers}.{i}."
    attn, mlp = f"{base}{fam.attn}.", f"{base}{fam.mlp}."
    paths = {f"qkv{j}": f"{attn}{n}.weight" for j, n in enumerate(fam.qkv_proj)}
    paths |= {"o": f"{attn}{fam.o_proj}.weight", "up": f"{mlp}{fam.up_proj}.weight"}
    paths |= {"down": f"{mlp}{fam.down_proj}.weight"}
    optional = {f"qkv{j}_b": f"{attn}{n}.bias" for j, n in enumerate(fam.qkv_proj)}
    optional |= {"o_b": f"{attn}{fam.o_proj}.bias", "up_b": f"{mlp}{fam.up_proj}.bias"}
    optional |= {"down_b": f"{mlp}{fam.down_proj}.bias"}
    if fam.gate_proj is not None and fam.gate_up == "separate":
        paths["gate"] = f"{mlp}{fam.gate_proj}.weight"
    for key, module in (("ln1", fam.ln1), ("ln2", fam.ln2)):
        if module:
            paths[key] = f"{base}{module}.weight"
            optional[f"{key}_b"] = f"{base}{module}.bias"
    if fam.qk_norm:
        paths |= {"q_norm": f"{attn}q_norm.weight", "k_norm": f"{attn}k_norm.weight"}
    if fam.post_norms:
        paths |= {"attn_post": f"{base}{fam.attn_post}.weight", "mlp_post": f"{base}{fam.mlp_post}.weight"}
    t = reader.read(paths) | reader.optional(optional)

    def norm(key: str) -> torch.Tensor | None:
        if key not in t:
            return None
        return t[key] + 1.0 if fam.norm_plus_one else t[key]

    parts = [_oriented(fam, t[f"qkv{j}"]) for j in range(len(fam.qkv_proj))]
    W_QKV = torch.cat(parts, dim=1)
    b_QKV = torch.cat([t.get(f"qkv{j}_b", torch.zeros(p.shape[1])) for j, p in enumerate(parts)])
    if fam.qkv == "fused_per_head":  # NeoX: columns grouped per head as [q_h k_h v_h]; regroup
        W_QKV = W_QKV.unflatten(1, (H, 3, h)).permute(0, 2, 1, 3).flatten(1)
        b_QKV = b_QKV.unflatten(0, (H, 3, h)).permute(1, 0, 2).flatten()
    W_O = _oriented(fam, t["o"])
    W_in = _oriented(fam, t["up"])
    W_gate = None
    if fam.gate_up == "fused":
        W_gate, W_in = W_in.chunk(2, dim=1)
    elif "gate" in t:
        W_gate = _oriented(fam, t["gate"])
    b_in = t.get("up_b", torch.zeros(W_in.shape[1]))
    W_out = _oriented(fam, t["down"])
    raw = {
        "W_QKV": W_QKV,
        "b_QKV": b_QKV,
        "W_O": W_O.unflatten(0, (H, h)),
        "b_O": t.get("o_b", torch.zeros(d)),
        "W_in": W_in,
        "b_in": b_in,
        "W_gate": W_gate,
        "W_out": W_out,
        "b_out": t.get("down_b", torch.zeros(d)),
        "ln1_w": norm("ln1"),
        "ln1_b": t.get("ln1_b"),
        "ln2_w": norm("ln2"),
        "ln2_b": t.get("ln2_b"),
        "q_norm_w": norm("q_norm"),
        "k_norm_w": norm("k_norm"),
        "attn_post_w": norm("attn_post"),
        "mlp_post_w": norm("mlp_post"),
    }
    # contiguous, as the reference stacks them: a reduction's order (and so its last bit) follows the layout
    return {k: None if v is None else v[None].contiguous() for k, v in raw.items()}


_LAYER_FIELDS = (
    "W_QKV b_QKV W_O b_O W_in b_in W_gate W_out b_out ln1_w ln1_b ln2_w ln2_b q_norm_w k_norm_w attn_post_w mlp_post_w"
).split()


# ---------------------------------------------------------------- GPT-2: TransformerLens's own processing


def _tl_cfg(config: Any, n_layers: int, H: int, h: int) -> Any:
    return types.SimpleNamespace(
        n_layers=n_layers,
        n_heads=H,
        d_head=h,
        d_model=config.hidden_size,
        d_vocab=config.vocab_size,
        normalization_type="LN",
        positional_embedding_type="standard",
        gated_mlp=False,
        act_fn="gelu_new",
        final_rms=False,
    )


def _tl_process(state: dict[str, torch.Tensor], cfg: Any) -> dict[str, torch.Tensor]:
    import warnings

    from transformer_lens.weight_processing import ProcessWeights

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ProcessWeights.process_weights(state, cfg)


def _tl_layer(layer: dict, config: Any, H: int, h: int) -> dict:
    """One GPT-2 layer through ProcessWeights (n_layers=1; the tiny embed/unembed stand-ins it asks for are
    dropped). Its tensors are views shaped as the bridge's, so reductions run in the same order."""
    d = config.hidden_size
    W = layer["W_QKV"][0]
    b = layer["b_QKV"][0]
    state = {
        "embed.W_E": torch.zeros(1, d),
        "pos_embed.W_pos": torch.zeros(1, d),
        "unembed.W_U": torch.zeros(d, 1),
        "unembed.b_U": torch.zeros(1),
        "blocks.0.ln1.w": layer["ln1_w"][0],
        "blocks.0.ln1.b": layer["ln1_b"][0],
        "blocks.0.ln2.w": layer["ln2_w"][0],
        "blocks.0.ln2.b": layer["ln2_b"][0],
        "blocks.0.attn.W_O": layer["W_O"][0],
        "blocks.0.attn.b_O": layer["b_O"][0],
        "blocks.0.mlp.W_in": layer["W_in"][0],
        "blocks.0.mlp.b_in": layer["b_in"][0],
        "blocks.0.mlp.W_out": layer["W_out"][0],
        "blocks.0.mlp.b_out": layer["b_out"][0],
    }
    for j, n in enumerate("QKV"):
        state[f"blocks.0.attn.W_{n}"] = W[:, j * H * h : (j + 1) * H * h].unflatten(1, (H, h)).permute(1, 0, 2)
        state[f"blocks.0.attn.b_{n}"] = b[j * H * h : (j + 1) * H * h].unflatten(0, (H, h))
    out = _tl_process(state, _tl_cfg(config, 1, H, h))
    qkv = [out[f"blocks.0.attn.W_{n}"].permute(1, 0, 2).flatten(1) for n in "QKV"]
    processed = {
        "W_QKV": torch.cat(qkv, dim=-1),
        "b_QKV": torch.cat([out[f"blocks.0.attn.b_{n}"].flatten() for n in "QKV"]),
        "W_O": out["blocks.0.attn.W_O"],
        "b_O": out["blocks.0.attn.b_O"],
        "W_in": out["blocks.0.mlp.W_in"],
        "b_in": out["blocks.0.mlp.b_in"],
        "W_out": out["blocks.0.mlp.W_out"],
        "b_out": out["blocks.0.mlp.b_out"],
        "ln1_w": out["blocks.0.ln1.w"],
        "ln1_b": out["blocks.0.ln1.b"],
        "ln2_w": out["blocks.0.ln2.w"],
        "ln2_b": out["blocks.0.ln2.b"],
    }
    return {**layer, **{k: v[None] for k, v in processed.items()}}


# ---------------------------------------------------------------- the loader


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=device)


def load_weights(
    folder: Path, config: Any, dtype: str, device: torch.device, processing: str
) -> tuple[Weights, Checkpoint]:
    """Processed, stacked weights of the checkpoint in `folder`, read tensor by tensor (see the module doc)."""
    fam = families.family_of(config)
    ck = Checkpoint.read(folder)
    ck.float_dtype()
    target = torch_dtype(dtype)
    H = config.num_attention_heads
    K = getattr(config, "num_key_value_heads", None) or H
    d = config.hidden_size
    h = getattr(config, "head_dim", None) or d // H
    arch = families.arch_of(config, h)
    L = arch.n_layers
    reader = _Reader(ck, fam)
    tl = processing == "tl-default"
    gpt2 = fam.conv1d  # the family whose processing is TransformerLens's own (see the module doc)

    stacked: dict[str, torch.Tensor | None] = {}
    with torch.no_grad():
        for i in range(L):
            layer = _raw_layer(reader, fam, config, i, H, K, h)
            if tl and gpt2:
                layer = _tl_layer(layer, config, H, h)
            elif tl:
                one = Weights(
                    arch=replace(arch, n_layers=1),
                    W_E=torch.zeros(1, d),
                    W_pos=None,
                    lnf_w=None,
                    lnf_b=None,
                    n_heads=H,
                    n_kv_heads=K,
                    W_U=torch.zeros(d, 1),
                    b_U=torch.zeros(1),
                    **layer,
                )
                done = families.process_layers(one)
                layer = {k: getattr(done, k) for k in _LAYER_FIELDS}
                if fam.bridge:  # the bridge keeps weightless norms as ones
                    layer["ln1_w"] = torch.ones(1, d) if fam.ln1 else None
                    layer["ln2_w"] = torch.ones(1, d) if fam.ln2 else None
            for key in _LAYER_FIELDS:
                value = layer[key]
                if value is None:
                    stacked[key] = None
                    continue
                if i == 0:
                    stacked[key] = _empty((L, *value.shape[1:]), target, device)
                dest = stacked[key]
                assert dest is not None
                dest[i].copy_(value[0])
            del layer
        W_E, W_pos, W_U, b_U, lnf_w, lnf_b = _globals(reader, ck, fam, config, arch, target, device, tl, H, h)
    weights = Weights(
        arch=arch,
        W_E=W_E,
        W_pos=W_pos,
        lnf_w=lnf_w,
        lnf_b=lnf_b,
        n_heads=H,
        n_kv_heads=K,
        W_U=W_U,
        b_U=b_U,
        **stacked,  # type: ignore[arg-type]  # the required ones are never None
    )
    return weights, ck


def _globals(
    reader: _Reader,
    ck: Checkpoint,
    fam: families.Family,
    config: Any,
    arch: Any,
    target: torch.dtype,
    device: torch.device,
    tl: bool,
    H: int,
    h: int,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """W_E, W_pos, W_U, b_U and the final norm, processed. W_U is the transpose of a [V, d] tensor (as the
    checkpoint stores it and as the reference load holds it)."""
    d = config.hidden_size
    embed = _require(ck, fam, f"{fam.embed}.weight")
    head = _name(ck, fam, f"{fam.lm_head}.weight", top=True) or embed
    head_bias = _name(ck, fam, f"{fam.lm_head}.bias", top=True)
    norms = reader.read({"lnf_w": f"{fam.final_norm}.weight"}) | reader.optional({"lnf_b": f"{fam.final_norm}.bias"})
    lnf_w = norms["lnf_w"] + 1.0 if fam.norm_plus_one else norms["lnf_w"]
    lnf_b = norms.get("lnf_b")
    V = ck.shapes[head][0]
    b_U = reader.read({"b": head_bias})["b"] if head_bias else torch.zeros(V)
    W_pos = reader.read({"p": f"{fam.pos_embed}.weight"})["p"] if fam.pos_embed else None

    def out(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device=device, dtype=target)

    if tl and fam.conv1d:  # GPT-2: TransformerLens's processing on full float32 tensors (vocab 50,257)
        W_E = reader.read({"e": f"{fam.embed}.weight"})["e"]
        state = {"embed.W_E": W_E, "unembed.W_U": W_E.T, "unembed.b_U": b_U, "ln_final.w": lnf_w}
        state |= {"ln_final.b": lnf_b} if lnf_b is not None else {}
        state |= {"pos_embed.W_pos": W_pos} if W_pos is not None else {}
        done = _tl_process(state, _tl_cfg(config, 0, H, h))
        W_U = _empty((V, d), target, device).T
        W_U.copy_(done["unembed.W_U"])
        return (
            done["embed.W_E"].to(device=device, dtype=target),
            out(done.get("pos_embed.W_pos")),
            W_U,
            done["unembed.b_U"].to(device=device, dtype=target),
            torch.ones(d, dtype=target, device=device),
            torch.zeros(d, dtype=target, device=device),
        )

    W_E = _embedding(reader, ck, embed, arch if tl else None, target, device)
    if not tl:
        S = _empty((V, d), target, device)
        for start, stop in _chunks(V, d):
            S[start:stop].copy_(reader.rows(head, start, stop))
        return W_E, out(W_pos), S.T, b_U.to(device=device, dtype=target), out(lnf_w), out(lnf_b)
    W_U, b_U = _unembedding(reader, head, V, d, b_U, lnf_w, lnf_b, arch, target, device)
    if fam.bridge:  # the bridge keeps the folded final norm as ones (and zeros)
        return W_E, out(W_pos), W_U, b_U, torch.ones(d, dtype=target, device=device), None
    return W_E, out(W_pos), W_U, b_U, None, None


def _chunks(V: int, d: int) -> list[tuple[int, int]]:
    rows = max(1, _CHUNK_BYTES // (4 * d))
    return [(s, min(V, s + rows)) for s in range(0, V, rows)]


def _embedding(
    reader: _Reader, ck: Checkpoint, name: str, arch: Any, target: torch.dtype, device: torch.device
) -> torch.Tensor:
    """W_E [V, d], centred per row where the processing says so (row by row: chunks change nothing)."""
    V, d = ck.shapes[name]
    W_E = _empty((V, d), target, device)
    for start, stop in _chunks(V, d):
        rows = reader.rows(name, start, stop)
        W_E[start:stop].copy_(rows if arch is None else families.process_embed(rows, arch))
    return W_E


def _unembedding(
    reader: _Reader,
    name: str,
    V: int,
    d: int,
    b_U: torch.Tensor,
    lnf_w: torch.Tensor,
    lnf_b: torch.Tensor | None,
    arch: Any,
    target: torch.dtype,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """W_U [d, V] (a transposed [V, d]) and b_U with the final norm folded in and centred over the vocabulary.

    float32: read into the result, then `families.process_unembed`'s ops in place (equal bits to the reference,
    which runs them on the same layout). Other dtypes: two passes over chunks of the vocabulary in float32 (the
    mean over the vocabulary accumulated in float64), so no float32 copy of W_U is ever whole."""
    S = _empty((V, d), target, device)
    if target == torch.float32:
        for start, stop in _chunks(V, d):
            S[start:stop].copy_(reader.rows(name, start, stop))
        W_U, b_U = families.process_unembed(S.T, b_U, lnf_w, lnf_b, arch, inplace=True)
        return W_U, b_U.to(device)
    total = torch.zeros(d, dtype=torch.float64)
    b_U = b_U.clone()
    for start, stop in _chunks(V, d):
        rows = reader.rows(name, start, stop)  # [v, d] = W_U[:, start:stop].T
        if lnf_b is not None:
            b_U[start:stop] += rows @ lnf_b
        rows = rows * lnf_w
        total += rows.sum(0, dtype=torch.float64)
    centre = arch.final_softcap is None
    mean = (total / V).float()
    for start, stop in _chunks(V, d):
        rows = reader.rows(name, start, stop) * lnf_w
        S[start:stop].copy_(rows - mean if centre else rows)
    if centre:
        b_U = b_U - b_U.mean()
    return S.T, b_U.to(device=device, dtype=target)


def tensor_fields(w: Weights) -> dict[str, torch.Tensor | None]:
    """Every tensor of a `Weights` by field name (tests compare them)."""
    return {f.name: getattr(w, f.name) for f in fields(w) if f.name not in ("arch", "n_heads", "n_kv_heads")}
