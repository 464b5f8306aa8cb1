"""Benchmark: the whole neuron atlas (every neuron × every token's cosine, its moments, top/bottom tokens), streamed.

Run alone:  python bench/atlas.py [--model M] [--device D]
Prints the class counts per layer, the top neurons by kurtosis, the token neurons, and a last line
`matmul_efficiency=X peak_extra_mb=Y seconds=Z`:
- matmul_efficiency: 2·N·d·V FLOPs / atlas time, over this machine's plain matmul rate on one block's matmul
  ([rows × d] @ [d × V]) measured in the same run; the atlas also pays for the centring, two top-k's, the squares
  and three reductions per element, the normalised copies and W_U's null space.
- peak_extra_mb: the process's high-water mark during the pass (VmHWM, reset just before it through
  /proc/self/clear_refs) minus the resident memory before it: the model's weights and their loading are excluded.
- seconds: the streamed pass (core.analyses.atlas.compute_stats); building the table (labels, token strings) is
  printed apart.
"""

from __future__ import annotations

import argparse
import os
import time

import _common  # noqa: F401  (first: the repo on sys.path, the hub offline)
import pandas as pd
import torch

from bench.memory import reset_peak, status_mb
from core.analyses import atlas, search
from core.analyses.congruence import neuron_vectors, token_vectors
from core.engine.model import EMBEDDED, load_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=EMBEDDED)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    model = load_model(args.model, device=args.device)
    w = model.weights
    N, d, V = w.n_layers * w.d_mlp, w.d_model, w.d_vocab
    rows = search.chunk_rows(model)
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    print(
        f"model={model.name} device={model.device} threads={torch.get_num_threads()} neurons={N} tokens={V} "
        f"d_model={d} rows_per_block={rows} load_avg={os.getloadavg()[0]:.2f}"
    )

    a, b = neuron_vectors(model)[:rows].float().contiguous(), token_vectors(model, "W_U").float().contiguous()
    a @ b
    sync()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < 3.0:
        a @ b
        reps += 1
    sync()
    matmul = 2.0 * rows * d * V * reps / (time.perf_counter() - start)
    del a, b

    before = status_mb("VmRSS")
    exact = reset_peak()
    sync()
    start = time.perf_counter()
    arrays = atlas.compute_stats(model)
    sync()
    seconds = time.perf_counter() - start
    peak_extra = status_mb("VmHWM") - before
    achieved = 2.0 * N * d * V / seconds
    print(
        f"atlas pass: {seconds:.1f} s, {achieved / 1e9:.1f} GFLOP/s; plain matmul {matmul / 1e9:.1f} GFLOP/s; "
        f"peak {'VmHWM (reset before the pass)' if exact else 'VmHWM since start (clear_refs refused)'}"
    )
    start = time.perf_counter()
    result = atlas.build(model, arrays)
    print(f"table (moments, classes, token strings, labels): {time.perf_counter() - start:.1f} s")
    print(f"thresholds: {result.info['thresholds']}")
    counts = pd.DataFrame(result.counts(), index=pd.RangeIndex(model.n_layers, name="layer"))
    counts["depth"] = ((counts.index + 0.5) / model.n_layers).round(2)
    print(counts.to_string())
    print("totals:", {k: int(v) for k, v in counts.drop(columns="depth").sum().items()})
    columns = ["name", "kurtosis", "skew", "std", "null_space_share", "gap", "classes", "label", "top_tokens"]
    print(result.ranked(10)[columns].to_string(index=False))
    tokens = result.frame[result.frame["token"]].sort_values("gap", ascending=False)
    print(f"token neurons: {len(tokens)}; the 15 with the widest gap")
    print(tokens.head(15)[["name", "gap", "n_standout", "kurtosis", "label", "top_tokens"]].to_string(index=False))
    print(f"matmul_efficiency={achieved / matmul:.2f} peak_extra_mb={peak_extra:.0f} seconds={seconds:.1f}")


if __name__ == "__main__":
    main()
