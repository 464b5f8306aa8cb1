"""Benchmark: all neurons of one MLP layer patched exactly — batched engine vs the post's one-forward-per-neuron loop.

Run alone (other processes on the cores distort it):  python bench/neuron_patching.py [--model M] [--layer L]
Prints the figures, then a last line `speedup_vs_loop=X matmul_efficiency=Y peak_rss_mb=Z`.
- loop: a full TransformerLens forward per neuron with a hook on blocks.L.mlp.hook_post (the post's method),
  timed on --loop-neurons neurons and extrapolated to the whole layer; for families loaded without the bridge
  (core.engine.families: Gemma 3, …) a full Hugging Face forward per neuron with a hook on the down-projection's input;
- batched: core.analyses.patching.patch_neurons over every neuron (resume from layer L+1, suffix positions only);
- matmul_efficiency: FLOPs the batched path must do (counted analytically) per second, over this machine's plain
  fp32 matmul rate measured in the same run on a matmul of the same shape.
"""

from __future__ import annotations

import argparse
import resource
import time

import _common  # noqa: F401  (first: the repo on sys.path, the hub offline)
import torch

from core import story
from core.analyses import patching
from core.engine import tokens
from core.engine.model import EMBEDDED, load_model, resolve


def resumed_flops(w, n_rows: int, first_layer: int, S: int, P: int) -> float:
    """Multiply-adds ×2 of resuming n_rows copies from `first_layer` over S suffix positions (P keys at most).

    As the engine does it: the last layer projects keys and values for all S positions but queries, W_O and the
    MLP for the last position only (nothing else reaches the metric).
    """
    d, H, K, h, m = w.d_model, w.n_heads, w.n_kv_heads, w.d_head, w.d_mlp
    qkv = 2 * d * (H * h + 2 * K * h)
    rest = 2 * H * h * d + 2 * d * m * (3 if w.W_gate is not None else 2) + 2 * 2 * H * h * P  # O, MLP, attention
    layers = w.n_layers - first_layer
    per_row = S * (layers - 1) * (qkv + rest) + S * qkv + rest  # the last layer: all K/V, one position otherwise
    return float(n_rows) * per_row + n_rows * 2 * d


def matmul_rate(M: int, k: int, n: int, device: torch.device, seconds: float = 2.0) -> float:
    a = torch.randn(M, k, device=device)
    b = torch.randn(k, n, device=device)
    a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2.0 * M * k * n * reps / (time.perf_counter() - start)


def bridge_loop(model, clean, ids, layer):
    """One TransformerLens forward per neuron, hooking blocks.L.mlp.hook_post (the post's method)."""
    hook_name = f"blocks.{layer}.mlp.hook_post"
    clean_post = model.bridge.run_with_cache(clean.tensor(model.device))[1][hook_name]

    def run_patched(n: int) -> None:
        def patch(t, hook):
            t = t.clone()
            t[..., n] = clean_post[..., n]
            return t

        with torch.no_grad():
            model.bridge.run_with_hooks(ids, fwd_hooks=[(hook_name, patch)])

    return run_patched


def hf_loop(model, clean, ids, layer):
    """One Hugging Face forward per neuron, hooking the input of layer L's down-projection (no bridge here)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(resolve(model.name)[1], attn_implementation="eager").eval()
    hf.to(model.device)
    down = hf.model.layers[layer].mlp.down_proj
    box = []
    handle = down.register_forward_pre_hook(lambda m, args: box.append(args[0].clone()))
    with torch.no_grad():
        hf(clean.tensor(model.device))
    handle.remove()
    clean_post = box[0]

    def run_patched(n: int) -> None:
        def patch(m, args):
            t = args[0].clone()
            t[..., n] = clean_post[..., n]
            return (t,)

        handle = down.register_forward_pre_hook(patch)
        with torch.no_grad():
            hf(ids)
        handle.remove()

    return run_patched


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=EMBEDDED)
    parser.add_argument("--layer", type=int, default=None, help="default: the standout late MLP layer")
    parser.add_argument("--loop-neurons", type=int, default=30)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-loop", action="store_true", help="skip the loop baseline (big models on GPU)")
    args = parser.parse_args()

    model = load_model(args.model, device=args.device, keep_bridge=not args.no_loop)
    clean, corrupted = tokens.pair(model, *story.STORY_PAIRS.get(model.name, (story.CLEAN, story.CORRUPTED)))
    an, a = tokens.single_token(model, story.ANSWER), tokens.single_token(model, story.WRONG)
    setup = patching.prepare(model, clean, corrupted, an, a)
    layer = args.layer if args.layer is not None else patching.standout_mlp_layer(patching.patch_layers(setup))
    w = model.weights
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    print(
        f"model={model.name} device={model.device} threads={torch.get_num_threads()} layer={layer} "
        f"d_mlp={w.d_mlp} positions={len(clean.ids)} recomputed_from={setup.start_pos}"
    )

    patching.patch_neurons(setup, layer, neurons=list(range(64)))  # warm-up
    sync()
    start = time.perf_counter()
    sweep = patching.patch_neurons(setup, layer)
    sync()
    batched_s = time.perf_counter() - start
    top = sweep.frame(1)
    print(
        f"batched: {w.d_mlp} neurons in {batched_s:.3f} s; top {top.label[0]} score {top.score[0]:.4f} "
        f"(layer {sweep.layer_score:.4f})"
    )

    S, P = len(clean.ids) - setup.start_pos, len(clean.ids)
    flops = resumed_flops(w, w.d_mlp + 1, layer + 1, S, P)
    achieved = flops / batched_s
    rows = patching.default_batch_tokens(model)
    peak_matmul = matmul_rate(rows, w.d_model, w.d_mlp, model.device)
    print(
        f"batched achieved {achieved / 1e9:.1f} GFLOP/s; plain matmul [{rows}x{w.d_model}]@[{w.d_model}x{w.d_mlp}] "
        f"{peak_matmul / 1e9:.1f} GFLOP/s"
    )

    speedup = float("nan")
    if not args.no_loop:
        ids = corrupted.tensor(model.device)
        run_patched = bridge_loop(model, clean, ids, layer) if model.bridge else hf_loop(model, clean, ids, layer)
        sync()
        start = time.perf_counter()
        for n in range(args.loop_neurons):
            run_patched(n)
        sync()
        per_neuron = (time.perf_counter() - start) / args.loop_neurons
        loop_s = per_neuron * w.d_mlp
        speedup = loop_s / batched_s
        print(f"loop: {per_neuron * 1e3:.1f} ms per neuron (over {args.loop_neurons}) -> {loop_s:.1f} s for {w.d_mlp}")

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"speedup_vs_loop={speedup:.1f} matmul_efficiency={achieved / peak_matmul:.2f} peak_rss_mb={peak_rss_mb:.0f}")


if __name__ == "__main__":
    main()
