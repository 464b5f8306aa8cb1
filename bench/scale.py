"""Benchmark: corpus-scan throughput, single process vs Ray with 1 and 2 workers, in one run.

Run alone:  python bench/scale.py [--max-tokens N]
Each Ray run starts its model actors inside the timed region (a worker loads the model, ~4 s: a fixed cost that a
long scan amortises). Ray workers use one torch thread each; the single process uses all cores through torch's
intra-op threads, so on one small machine Ray cannot beat it: Ray pays off across machines and GPUs.
Ends with a paper estimate for the post's pile-10k (~10M tokens) and the last line `ray_2w_vs_single=X`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (first: the repo on sys.path, the hub offline)
import torch

from core import story
from core.corpus import distributed, scan
from core.engine import tokens
from core.engine.model import EMBEDDED, load_model


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-tokens", type=int, default=16_384)
    args = parser.parse_args()
    model = load_model(EMBEDDED, device="cpu")
    budget = args.max_tokens
    print(f"model={model.name} threads(single)={torch.get_num_threads()} cores={os.cpu_count()} tokens={budget}")
    rates = {}
    spec = scan.ScanSpec((story.KNOWN_NEURONS[EMBEDDED],), tokens.single_token(model, story.ANSWER), max_tokens=budget)

    single_s = timed(lambda: scan.scan(model, spec, use_cache=False))
    rates["single"] = budget / single_s
    print(f"single process: {single_s:.1f} s, {budget / single_s:.0f} tok/s")
    for workers in (1, 2):
        distributed.connect(workers=workers)
        with tempfile.TemporaryDirectory() as scratch:
            # ray_scan reads and writes the parts cache: point results at a scratch scan folder
            original = scan._scan_dir
            scan._scan_dir = lambda *a, **k: Path(scratch)  # noqa: E731 - benchmark-only isolation
            try:
                total_s = timed(lambda n=workers: distributed.ray_scan(model, spec, workers=n))
            finally:
                scan._scan_dir = original
        import ray

        ray.shutdown()
        rates[f"ray{workers}"] = budget / total_s
        print(f"ray, {workers} worker(s): {total_s:.1f} s incl. actor start, {budget / total_s:.0f} tok/s")
    efficiency = rates["ray2"] / (2 * rates["ray1"])
    print(f"scaling efficiency 1 -> 2 workers: {efficiency:.2f}")
    per_worker = rates["ray1"]
    pile = 10_000_000
    print(
        f"paper estimate, pile-10k ({pile:,} tokens) with this model: {pile / per_worker / 3600:.1f} h on one "
        f"CPU worker like these; N workers: that / (N x {efficiency:.2f})."
    )
    large_flops = 2 * 774e6 + 2 * 1280 * 50257  # GPT-2 large forward + unembedding, per token
    gpu_rate = 0.4 * 60e12 / large_flops  # H100 fp32 non-tensor ~60 TFLOP/s at an assumed 40 % utilisation
    print(
        f"paper estimate, GPT-2 large on pile-10k: ~{gpu_rate:,.0f} tok/s per H100-class GPU (40 % of fp32 peak) "
        f"-> {pile / gpu_rate / 60:.0f} min on 1 GPU, {pile / gpu_rate / 60 / 8:.1f} min on 8 (not measured: "
        "no GPU here)"
    )
    print(f"ray_2w_vs_single={rates['ray2'] / rates['single']:.2f}")


if __name__ == "__main__":
    main()
