"""Benchmark: the full stand-out / mutual-exclusive search, every neuron × every token, streamed.

Run alone:  python bench/congruence.py [--model M] [--matrix W_U|W_E]
Prints the top-10 mutual-exclusive pairs and a last line `matmul_efficiency=X peak_extra_mb=Y`:
- matmul_efficiency: 2·N·d·V FLOPs / search time, over this machine's plain matmul rate on one block's matmul
  ([rows × d] @ [d × V]) measured in the same run; the search also pays for two top-2 reductions per block.
- peak_extra_mb: peak RSS during the search minus RSS before it (the model's weights excluded). The kernel's
  high-water mark is reset just before the search (/proc/self/clear_refs), so loading the model does not count.
"""

from __future__ import annotations

import argparse
import time

import _common  # noqa: F401  (first: the repo on sys.path, the hub offline)
import torch

from bench.memory import reset_peak, status_mb
from core.analyses import search
from core.engine.model import EMBEDDED, load_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=EMBEDDED)
    parser.add_argument("--matrix", default="W_U", choices=["W_U", "W_E"])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    model = load_model(args.model, device=args.device)
    w = model.weights
    N, d, V = w.n_layers * w.d_mlp, w.d_model, w.d_vocab
    rows = search.chunk_rows(model)
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    print(
        f"model={model.name} device={model.device} threads={torch.get_num_threads()} "
        f"neurons={N} tokens={V} d_model={d} rows_per_block={rows}"
    )

    a, b = w.W_out.flatten(0, 1)[:rows].contiguous(), w.W_U.contiguous()
    a @ b
    sync()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < 3.0:
        a @ b
        reps += 1
    sync()
    matmul = 2.0 * rows * d * V * reps / (time.perf_counter() - start)
    del a

    reset_peak()
    before = status_mb("VmRSS")
    sync()
    start = time.perf_counter()
    tables = search.compute_tables(model, args.matrix)
    sync()
    seconds = time.perf_counter() - start
    peak_extra = status_mb("VmHWM") - before
    achieved = 2.0 * N * d * V / seconds
    print(f"search: {seconds:.1f} s, {achieved / 1e9:.1f} GFLOP/s; plain matmul {matmul / 1e9:.1f} GFLOP/s")
    print(
        search.mutual(model, tables, 10)[
            ["rank", "label", "token", "congruence", "gap_token", "gap_neuron", "score"]
        ].to_string(index=False)
    )
    print(
        search.standout(model, tables, 10)[["rank", "label", "token", "congruence", "gap_neuron"]].to_string(
            index=False
        )
    )
    print(f"matmul_efficiency={achieved / matmul:.2f} peak_extra_mb={peak_extra:.0f}")


if __name__ == "__main__":
    main()
