"""Benchmark: how bfloat16 and float16 results differ from float32 on the embedded models (issue #27 item 2).

Run alone:
    python bench/dtypes.py [--model smollm2-135m|gemma3-270m] (default both) [--float16]

Each model is loaded in float32, bfloat16 and float16 (the streaming loader: processing in float32, then cast;
Gemma 3 refuses float16, see core.engine.families) and run on its story pair (core.story.pair, " an" vs " a"):
- logits: every position of the clean prompt, max |Δ| against float32 and the share of positions whose top-1
  token is float32's;
- the metric: the logit diff on the clean prompt (the last position, core.engine.metric.LogitDiff), and as the
  Prompt page's effects read it (core.analyses.effects: the two logits, each rounded as the logits are);
- layer patching (resid_pre / attn_out / mlp_out, every layer × position): max |Δ score|;
- the neuron sweep of the story layer (core.story.KNOWN_NEURONS): max |Δ score| over its neurons, the top neuron;
- attribution patching over all neurons: Spearman against float32's, overlap of the top 20 (by |attribution|);
- congruence: the known neuron's top-20 W_U tokens (overlap), the search's top-100 mutual pairs (overlap).
Last line: one `model dtype key=value …` block per model and dtype, `;`-separated.
"""

from __future__ import annotations

import argparse
import time

import _common  # noqa: F401  (first: the repo on sys.path, the hub offline)
import numpy as np
import torch

from core import story
from core.analyses import attribution, congruence, effects, patching, search
from core.engine import forward as fw
from core.engine import tokens
from core.engine.model import EMBEDDED, GEMMA3, load_model
from core.errors import UserError

DTYPES = ("float32", "bfloat16", "float16")
TOP = 20
PAIRS = 100


def measure(name: str, dtype: str) -> dict:
    """Every result the comparison needs, as numpy (float64 where it was a float)."""
    model = load_model(name, device="cpu", dtype=dtype)
    clean_text, corrupted_text = story.pair(name)
    layer, neuron = story.KNOWN_NEURONS[name]
    clean = tokens.prompt(model, clean_text)
    out: dict = {}
    with torch.no_grad():
        final = fw.run(model.weights, clean.tensor(model.device), record=frozenset()).resid_final[0]
        out["logits"] = fw.unembed(model.weights, final).double().numpy()  # [P, V]
    setup = patching.PatchInputs(clean_text, corrupted_text, story.ANSWER, story.WRONG).prepare(model)
    out["metric"] = setup.clean_logit_diff
    out["corrupted_metric"] = setup.corrupted_logit_diff
    out["effects_metric"] = effects.top_neurons(model, clean, story.ANSWER, story.WRONG, top_k=5).metric
    layers = patching.patch_layers(setup)
    out["layers"] = np.concatenate([layers.scores[k].ravel() for k in sorted(layers.scores)])
    sweep = patching.patch_neurons(setup, layer)
    order = np.argsort(sweep.neurons)
    out["sweep"] = sweep.scores[order].astype(np.float64)
    out["attribution"] = attribution.attribute(setup).neurons.ravel().astype(np.float64)
    top = congruence.neuron_to_tokens(model, layer, neuron, "W_U", top_k=TOP).top
    out["tokens"] = top.id.tolist()
    pairs = search.mutual(model, search.tables(model, "W_U"), top_k=PAIRS)
    out["pairs"] = list(zip(pairs.layer.tolist(), pairs.neuron.tolist(), pairs.id.tolist()))
    out["story_layer"] = layer
    return out


def overlap(a: list, b: list) -> float:
    return len(set(a) & set(b)) / max(1, len(a))


def top_abs(x: np.ndarray, k: int) -> list[int]:
    return np.argsort(-np.abs(x))[:k].tolist()


def compare(ref: dict, got: dict) -> dict[str, float | int | str]:
    """The differences the table shows (got against the float32 reference)."""
    return {
        "logits_max_abs": float(np.abs(got["logits"] - ref["logits"]).max()),
        "top1_agree": float((got["logits"].argmax(-1) == ref["logits"].argmax(-1)).mean()),
        "logit_diff": got["metric"],
        "logit_diff_delta": got["metric"] - ref["metric"],
        "effects_metric": got["effects_metric"],
        "layer_patch_max_abs": float(np.abs(got["layers"] - ref["layers"]).max()),
        "sweep_max_abs": float(np.abs(got["sweep"] - ref["sweep"]).max()),
        "sweep_top": int(np.argmax(got["sweep"])),
        "sweep_top_same": int(np.argmax(got["sweep"]) == np.argmax(ref["sweep"])),
        "attr_spearman": attribution.spearman(got["attribution"], ref["attribution"]),
        "attr_top20_overlap": overlap(top_abs(got["attribution"], TOP), top_abs(ref["attribution"], TOP)),
        "congruence_top20_overlap": overlap(got["tokens"], ref["tokens"]),
        "pairs_top100_overlap": overlap(got["pairs"], ref["pairs"]),
    }


COLUMNS = [
    ("logits_max_abs", "logits max|Δ|", "{:.3f}"),
    ("top1_agree", "top-1 agree", "{:.3f}"),
    ("logit_diff", "logit diff", "{:.3f}"),
    ("effects_metric", "prompt effects' metric", "{:.3f}"),
    ("layer_patch_max_abs", "layer patch max|Δ|", "{:.4f}"),
    ("sweep_max_abs", "sweep max|Δ|", "{:.4f}"),
    ("sweep_top_same", "sweep top same", "{}"),
    ("attr_spearman", "attr ρ", "{:.4f}"),
    ("attr_top20_overlap", "attr top-20", "{:.2f}"),
    ("congruence_top20_overlap", "congr. top-20", "{:.2f}"),
    ("pairs_top100_overlap", "pairs top-100", "{:.2f}"),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=[EMBEDDED, GEMMA3], action="append", help="default: both")
    parser.add_argument(
        "--float16", action="store_true", help="also float16 (slow here: this CPU has no native float16 matmul)"
    )
    args = parser.parse_args()
    dtypes = DTYPES[1:] if args.float16 else DTYPES[1:2]
    print(_common.machine(), flush=True)
    summary = []
    for name in args.model or [EMBEDDED, GEMMA3]:
        start = time.perf_counter()
        ref = measure(name, "float32")
        took = time.perf_counter() - start
        print(
            f"{name} float32: logit diff {ref['metric']:.3f} (prompt effects {ref['effects_metric']:.3f}, "
            f"corrupted {ref['corrupted_metric']:.3f}), story "
            f"layer {ref['story_layer']}, sweep top N{int(np.argmax(ref['sweep']))} ({took:.0f} s)",
            flush=True,
        )
        print("| model | dtype | " + " | ".join(c[1] for c in COLUMNS) + " |")
        print("|---" * (len(COLUMNS) + 2) + "|")
        for dtype in dtypes:
            start = time.perf_counter()
            try:
                got = measure(name, dtype)
            except UserError as err:
                print(f"| {name} | {dtype} | refused: {err} |", flush=True)
                summary.append(f"{name} {dtype} refused")
                continue
            diff = compare(ref, got)
            cells = [fmt.format(diff[key]) for key, _, fmt in COLUMNS]
            took = time.perf_counter() - start
            print(f"| {name} | {dtype} | " + " | ".join(cells) + f" | ({took:.0f} s)", flush=True)
            summary.append(
                f"{name} {dtype} "
                + " ".join(f"{k}={fmt.format(diff[k])}" for k, _, fmt in COLUMNS if k != "logit_diff")
                + f" logit_diff={diff['logit_diff']:.3f}/{ref['metric']:.3f}"
            )
    print("; ".join(summary))


if __name__ == "__main__":
    main()
