"""Benchmark: dashboards of every neuron (core.corpus.dashboards.build) vs a plain forward over the same tokens.

Usage: python bench/dashboards.py [--model smollm2-135m] [--corpus brown] [--max-tokens 100000]
Both sides read the same contexts (the build's plan), in the same batches, on the same threads, interleaved part
by part (this machine is shared: its load drifts over minutes, and interleaving gives both sides the same drift):
- plain forward: the model's forward over every batch, logits of every position (unembedded in the same chunks,
  argmax taken), nothing recorded — what `model(tokens)` costs;
- dashboards: core.corpus.dashboards.fold_part on the same part (records every layer's neuron activations and keeps
  every neuron's top-k, histogram and next-token counts) plus the part's checkpoint write — what build() does.
overhead = dashboards time / forward time − 1. Peak memory: the kernel's high-water mark (VmHWM) is reset
(/proc/self/clear_refs) before a first plain forward of one part, then before the interleaved loop:
peak_extra_mb = the loop's peak (the build's) − the plain forward's peak.
Last line: overhead=X tokens_per_s=Y peak_extra_mb=Z
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (first: the repo on sys.path, the hub offline)
import torch

from bench.memory import reset_peak, status_mb
from core import cache
from core.corpus import dashboards, scan
from core.engine import forward as fw
from core.engine.model import EMBEDDED, load_model


@torch.no_grad()
def plain_forward(model, work, part: range) -> None:
    rows = max(scan.LOGIT_ROWS, dashboards.LOGIT_BYTES // (4 * model.d_vocab))
    size = work.spec.batch_size
    for first in range(part.start, part.stop, size):
        batch = [ids for _, _, ids in work.contexts[first : min(first + size, part.stop)]]
        ids = scan.batch_tokens(model, batch)
        trace = fw.run(model.weights, ids, record=set())
        scan.top1(model, trace.resid_final.reshape(-1, trace.resid_final.shape[-1]), rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=EMBEDDED)
    parser.add_argument("--corpus", default=None)
    parser.add_argument("--max-tokens", type=int, default=100_000)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    model = load_model(args.model, device=args.device)
    spec = dashboards.DashboardSpec(args.corpus, args.max_tokens)
    work = dashboards.plan(model, spec)
    dashboards.top_tokens(model)  # the W_U search tables: cached once, not part of the pass
    positions = int(work.starts[-1])
    print(
        f"model {model.name} ({model.n_layers} layers × {model.d_mlp} = {model.n_layers * model.d_mlp:,} neurons), "
        f"device {model.device}, threads {torch.get_num_threads()}, corpus {work.spec.dataset}: {positions:,} "
        f"positions in {len(work.contexts)} contexts of ≤{work.spec.ctx} (batch {work.spec.batch_size}); "
        f"load {os.getloadavg()[0]:.2f}"
    )
    parts = work.parts
    rss = status_mb("VmRSS")
    reset_peak()
    plain_forward(model, work, parts[0])  # also the warm-up
    forward_peak = status_mb("VmHWM") - rss
    state = dashboards.State(model.n_layers, model.d_mlp, work.spec.top_k, model.device)
    tokens = dashboards.top_tokens(model)
    checkpoint = Path(tempfile.mkdtemp()) / "state.npz"
    forward_s = build_s = 0.0
    rss = status_mb("VmRSS")
    reset_peak()
    for part in parts:
        start = time.perf_counter()
        plain_forward(model, work, part)
        middle = time.perf_counter()
        dashboards.fold_part(model, work, part, state, tokens)
        cache.save(checkpoint, state.arrays())
        end = time.perf_counter()
        forward_s, build_s = forward_s + middle - start, build_s + end - middle
        print(
            f"  part of {work.starts[part.stop] - work.starts[part.start]:,} positions: "
            f"forward {middle - start:.1f} s, dashboards {end - middle:.1f} s, load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    build_peak = status_mb("VmHWM") - rss
    checkpoint.unlink()
    print(f"plain forward: {forward_s:.1f} s ({positions / forward_s:,.0f} tokens/s), peak +{forward_peak:.0f} MB")
    print(f"dashboards:    {build_s:.1f} s ({positions / build_s:,.0f} tokens/s), peak +{build_peak:.0f} MB")
    print(f"load after: {os.getloadavg()[0]:.2f}")
    print(
        f"overhead={build_s / forward_s - 1:.3f} tokens_per_s={positions / build_s:.0f} "
        f"peak_extra_mb={build_peak - forward_peak:.0f}"
    )


if __name__ == "__main__":
    main()
