"""Benchmark + quality measurement: attribution patching over every neuron of every layer vs exact patching.

Run alone:  python bench/all_neurons.py [--model M]
For each prompt pair: attribution for all neurons (one forward per prompt + one backward), exact batched
sweeps of a sample of layers; per-layer Spearman correlation (attribution vs exact, all neurons of the layer),
and the top-50 by attribution verified exactly. The exact time for every layer is estimated from the sampled
layers' measured times, fitted as proportional to the number of layers a sweep must re-run (n_layers − L).
Last line: `speedup_vs_exact_all=X spearman_top50=Y` (post's prompt pair).
"""

from __future__ import annotations

import argparse
import time

import _common  # noqa: F401  (first: the repo on sys.path, the hub offline)
import numpy as np
import torch

from core import story
from core.analyses import attribution, patching
from core.engine import tokens
from core.engine.model import EMBEDDED, load_model

PAIRS = [
    ("post: apple→lemon", story.CLEAN, story.CORRUPTED, story.ANSWER, story.WRONG),
    (
        "orange→banana",
        "My favourite fruit is the orange, so for lunch I ate",
        "My favourite fruit is the banana, so for lunch I ate",
        " an",
        " a",
    ),
    ("France→Italy", "The capital of France is the city of", "The capital of Italy is the city of", " Paris", " Rome"),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=EMBEDDED)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    model = load_model(args.model, device=args.device)
    L = model.n_layers
    sample = sorted({0, L // 6, L // 3, L // 2, 2 * L // 3, 5 * L // 6, L - 1})
    print(
        f"model={model.name} device={model.device} threads={torch.get_num_threads()} "
        f"neurons={L * model.d_mlp} sampled layers={sample}"
    )
    headline = None
    for name, clean, corrupted, answer, wrong in PAIRS:
        c, k = tokens.pair(model, clean, corrupted)
        setup = patching.prepare(model, c, k, tokens.single_token(model, answer), tokens.single_token(model, wrong))
        attribution.attribute(setup)  # warm-up
        start = time.perf_counter()
        approx = attribution.attribute(setup)
        attr_s = time.perf_counter() - start
        per_layer, times = {}, {}
        for layer in sample:
            start = time.perf_counter()
            exact = patching.patch_neurons(setup, layer).scores
            times[layer] = time.perf_counter() - start
            per_layer[layer] = attribution.spearman(approx.neurons[layer], exact)
        rate = np.mean([times[l] / (L - l) for l in sample])  # seconds per (sweep × remaining layer)
        exact_all_s = rate * sum(L - l for l in range(L))
        top = attribution.verify_top(setup, approx, 50)
        rho_top = attribution.spearman(top.attribution.to_numpy(), top.exact.to_numpy())
        mlp0_attr = approx.layers_all_positions["mlp_out"][0]
        mlp0_exact = patching.patch_layers(setup).all_positions["mlp_out"][0]
        print(
            f"\n[{name}] clean {setup.clean_logit_diff:.3f} corrupted {setup.corrupted_logit_diff:.3f}; "
            f"recomputed from position {setup.start_pos} of {len(c.ids)}"
        )
        print(
            f"  attribution, all {L * model.d_mlp} neurons: {attr_s:.3f} s; exact all (estimated): "
            f"{exact_all_s:.1f} s -> speedup {exact_all_s / attr_s:.0f}x"
        )
        print(
            "  per-layer Spearman (all neurons of the layer): "
            + ", ".join(f"L{l}: {r:.3f}" for l, r in per_layer.items())
        )
        print(
            f"  top-50 Spearman {rho_top:.3f}; top-5: "
            + ", ".join(f"{r.label} {r.attribution:.3f}/{r.exact:.3f}" for r in top.head(5).itertuples())
        )
        print(f"  whole MLP 0 (all positions): attribution {mlp0_attr:.3f} vs exact {mlp0_exact:.3f}")
        if headline is None:
            headline = (exact_all_s / attr_s, rho_top)
    print(f"speedup_vs_exact_all={headline[0]:.0f} spearman_top50={headline[1]:.3f}")


if __name__ == "__main__":
    main()
