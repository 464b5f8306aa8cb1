"""Benchmark: K mutual pairs tested on a corpus (core.corpus.pairs), from built dashboards and by one scan pass, vs a
plain forward over the same tokens, in one run.

Run alone:  python bench/pairs.py [--model M] [--corpus brown] [--max-tokens 100000] [--top-k 100] [--build]
--build builds the dashboards of that corpus and budget first when they are missing (≈ 4 min per 100k tokens on the
embedded model, 2 cores); without them the dashboards figure is left out (printed as nan). Both sides run with
use_cache=False for the scan (the pairs' own result cache is bypassed); the dashboards path reads the built npz.
The plain forward is the same contexts (spread over the corpus, as pairs reads them) through
core.engine.forward.run with nothing recorded, plus the top-1 unembedding of every position.
Last line: `pairs=K seconds_from_dashboards=X seconds_scan=Y scan_overhead=Z` (goal: X <= 2, Z <= 0.25).
"""

from __future__ import annotations

import argparse
import time

import _common  # noqa: F401  (first: the repo on sys.path, the hub offline)
import torch

from core.corpus import dashboards, pairs, scan
from core.corpus.sources import load_corpus
from core.engine import forward as fw
from core.engine.model import EMBEDDED, load_model


@torch.no_grad()
def plain_forward(model, contexts, batch_size: int) -> None:
    w = model.weights
    for i in range(0, len(contexts), batch_size):
        batch = [ids for _, _, ids in contexts[i : i + batch_size]]
        trace = fw.run(w, scan.batch_tokens(model, batch), record=frozenset())
        for row, ids in enumerate(batch):
            scan.top1(model, trace.resid_final[row, : len(ids)], scan.logit_rows(model))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=EMBEDDED)
    parser.add_argument("--corpus", default=None)
    parser.add_argument("--max-tokens", type=int, default=100_000)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--build", action="store_true", help="build the dashboards first if missing")
    args = parser.parse_args()
    model = load_model(args.model, device=args.device)
    spec = pairs.PairsSpec("mutual", args.top_k, args.corpus, args.max_tokens)
    checked = pairs._validate(model, spec)
    assert checked.ctx is not None
    contexts = scan.cut(model, load_corpus(checked.dataset).texts, checked.ctx, checked.max_tokens, spread=True)
    positions = sum(len(ids) for _, _, ids in contexts)
    print(f"model={model.name} device={model.device} {_common.machine()} corpus={checked.dataset} tokens={positions}")
    pairs.ranked_pairs(model, checked)  # the search tables, once (cached on disk)
    built = pairs.matching_dashboards(model, checked)
    if built is None and args.build:
        start = time.perf_counter()
        dashboards.build(model, dashboards.DashboardSpec(checked.dataset, checked.max_tokens))
        print(f"dashboards built in {time.perf_counter() - start:.1f} s")
        built = pairs.matching_dashboards(model, checked)
    dash_s = float("nan")
    if built is not None:
        start = time.perf_counter()
        from_dash = pairs.pairs(model, spec, use_cache=False)
        dash_s = time.perf_counter() - start
        print(
            f"from dashboards: {dash_s:.2f} s; {from_dash.settings['pairs_from_dashboards']} pairs read, "
            f"{from_dash.settings['pairs_scanned']} scanned; {from_dash.summary()}"
        )
    plain_forward(model, contexts[:8], 8)  # warm-up
    start = time.perf_counter()
    plain_forward(model, contexts, 8)
    plain_s = time.perf_counter() - start
    start = time.perf_counter()
    scanned = pairs.pairs(model, spec, use_cache=False, use_dashboards=False)
    scan_s = time.perf_counter() - start
    print(
        f"plain forward {plain_s:.1f} s ({positions / plain_s:.0f} tok/s); pairs scan {scan_s:.1f} s; "
        f"{scanned.summary()}"
    )
    print(
        f"pairs={len(scanned.pairs)} seconds_from_dashboards={dash_s:.2f} seconds_scan={scan_s:.1f} "
        f"scan_overhead={scan_s / plain_s - 1:.3f}"
    )


if __name__ == "__main__":
    main()
