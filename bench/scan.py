"""Benchmark: corpus scan throughput vs a plain forward over the same tokens, in one run.

Run alone:  python bench/scan.py [--model M] [--max-tokens N]
The scan runs with use_cache=False (no disk parts), so both sides compute everything.
The plain forward is the same batches through core.engine.forward.run with nothing recorded, plus the unembedding of
every position (what any forward that yields logits does). The scan adds recording the neurons' activations,
top-1 / target statistics, corpus loading and tokenization.
Each side runs --repeat times, alternating, and its fastest run counts (this shared machine's load swings a single
run by ±20 %).
Last line: `hook_overhead=X tokens_per_s=Y` (goal: overhead <= 0.15).
"""

from __future__ import annotations

import argparse
import time

import _common  # noqa: F401  (first: the repo on sys.path, the hub offline)
import torch

from core import story
from core.corpus import scan
from core.corpus.sources import load_corpus
from core.engine import forward as fw
from core.engine import tokens
from core.engine.model import EMBEDDED, load_model


@torch.no_grad()
def plain_forward(model, contexts, batch_size: int) -> None:
    w = model.weights
    for i in range(0, len(contexts), batch_size):
        batch = contexts[i : i + batch_size]
        width = max(len(ids) for _, ids in batch)
        padded = torch.zeros(len(batch), width, dtype=torch.long)
        for row, (_, ids) in enumerate(batch):
            padded[row, : len(ids)] = torch.tensor(ids)
        trace = fw.run(w, padded.to(model.device), record=frozenset())
        for row, (_, ids) in enumerate(batch):
            fw.unembed(w, trace.resid_final[row, : len(ids)]).argmax(-1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=EMBEDDED)
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    model = load_model(args.model, device=args.device)
    neurons = story.EMBEDDED_SCAN_NEURONS if model.name == EMBEDDED else [(model.n_layers - 1, 0)]
    ctx = min(scan.DEFAULT_CTX, model.n_ctx)
    contexts = scan.chunks(model, load_corpus().texts, ctx, args.max_tokens)
    positions = sum(len(ids) for _, ids in contexts)
    layers = max(l for l, _ in neurons) - min(l for l, _ in neurons) + 1
    print(
        f"model={model.name} device={model.device} {_common.machine()} contexts={len(contexts)} ctx={ctx} "
        f"tokens={positions} forward batch={scan.forward_contexts(model, ctx, layers)} "
        f"logit rows={scan.logit_rows(model)}"
    )
    plain_forward(model, contexts[:8], 8)  # warm-up
    spec = scan.ScanSpec(tuple(neurons), tokens.single_token(model, story.ANSWER), max_tokens=args.max_tokens, ctx=ctx)
    plain_s = scan_s = float("inf")
    for _ in range(args.repeat):
        start = time.perf_counter()
        plain_forward(model, contexts, 8)
        plain_s = min(plain_s, time.perf_counter() - start)
        start = time.perf_counter()
        result = scan.scan(model, spec, use_cache=False)
        scan_s = min(scan_s, time.perf_counter() - start)
    print(
        f"plain forward {plain_s:.1f} s ({positions / plain_s:.0f} tok/s); scan {scan_s:.1f} s "
        f"({positions / scan_s:.0f} tok/s), {result.positions} positions counted (BOS excluded)"
    )
    print(f"hook_overhead={scan_s / plain_s - 1:.3f} tokens_per_s={positions / scan_s:.0f}")


if __name__ == "__main__":
    main()
