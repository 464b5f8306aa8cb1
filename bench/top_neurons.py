"""Benchmark: one prompt → every neuron's direct effect + the exact total effects of the top 50 (core.analyses.effects).

Run alone (other processes on the cores distort it):  python bench/top_neurons.py [--model M] [--top-k K]
The model is loaded first and not timed; one warm-up call, then the median of --repeats calls of
effects.top_neurons on the post's prompt (~20 tokens), answer " an" vs " a". The baseline, in the same run: the
same total effects the way one would write them without resuming — one full forward of the whole prompt per
neuron with its activation zeroed at the last position (timed on --loop-neurons neurons, scaled to top-k).
Goals on a 2-core CPU: ≤ 1.5 s for smollm2-135m, ≤ 4 s for gemma3-270m.
Last line: `neurons=N total_seconds=X` (N = every neuron whose direct effect was computed).
"""

from __future__ import annotations

import argparse
import statistics
import time

import _common  # noqa: F401  (first: the repo on sys.path, the hub offline)
import torch

from core import story
from core.analyses import effects
from core.engine import forward as fw
from core.engine import tokens
from core.engine.model import EMBEDDED, load_model


@torch.no_grad()
def zeroed_forward(w: fw.Weights, ids: torch.Tensor, target: effects.Target, layer: int, neuron: int) -> float:
    """The metric at the last position of one full forward with neuron (layer, neuron) zeroed there."""
    resid = fw.embed(w, ids)
    for current in range(w.n_layers):
        mid = resid + fw.attention(w, current, resid)[0]
        post = fw.mlp_post(w, current, resid if w.arch.parallel else mid)
        if current == layer:
            post[:, -1, neuron] = 0
        resid = mid + fw.mlp_out_from_post(w, current, post)
    return float(target.value(w, resid[0, -1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=EMBEDDED)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--top-k", type=int, default=effects.DEFAULT_TOP_K)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop-neurons", type=int, default=10)
    args = parser.parse_args()

    model = load_model(args.model, device=args.device)
    prompt = tokens.prompt(model, story.CLEAN)
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    n_neurons = model.n_layers * model.d_mlp
    print(
        f"model={model.name} device={model.device} {_common.machine()} positions={len(prompt.ids)} "
        f"neurons={n_neurons} heads={model.n_layers * model.n_heads} top_k={args.top_k}"
    )

    effects.top_neurons(model, prompt, story.ANSWER, story.WRONG, top_k=args.top_k)  # warm-up
    times, result = [], None
    for _ in range(args.repeats):
        sync()
        began = time.perf_counter()
        result = effects.top_neurons(model, prompt, story.ANSWER, story.WRONG, top_k=args.top_k)
        sync()
        times.append(time.perf_counter() - began)
    assert result is not None
    total_s = statistics.median(times)
    phases = ", ".join(f"{k} {v:.3f} s" for k, v in result.seconds.items())
    print(f"top_neurons: median {total_s:.3f} s over {args.repeats} (min {min(times):.3f}); last call: {phases}")
    top = result.neurons.iloc[0]
    print(
        f"metric {result.metric:.4f} ({result.target.description}); top {top.label}: direct {top.direct:.4f} "
        f"total {top.total:.4f} ({top.kind}); cancelled {int(result.neurons.cancelled.sum())} of {len(result.neurons)}"
    )

    # Baseline: a full forward per neuron (no prefix reuse, no batching), on the first few verified neurons.
    ids = prompt.tensor(model.device)
    rows = result.neurons.head(args.loop_neurons)
    sync()
    began = time.perf_counter()
    for row in rows.itertuples():
        ablated = zeroed_forward(model.weights, ids, result.target, int(row.layer), int(row.neuron))
        assert abs((result.metric - ablated) - row.total) < 1e-3 * max(1.0, abs(row.total)), row.label
    sync()
    loop_s = (time.perf_counter() - began) / max(len(rows), 1) * args.top_k
    totals_s = result.seconds["total"]
    print(
        f"totals of {args.top_k}: batched resume {totals_s:.3f} s vs one forward per neuron {loop_s:.3f} s "
        f"(extrapolated from {len(rows)}; same values): speedup {loop_s / max(totals_s, 1e-9):.1f}x"
    )
    print(f"neurons={n_neurons} total_seconds={total_s:.3f}")


if __name__ == "__main__":
    main()
