"""`patch`: activation patching of a clean/corrupted pair, from layers down to single neurons."""

from __future__ import annotations

import argparse
from typing import Any

import pandas as pd

from core import story
from core.analyses.patching import ABLATIONS
from core.cli.common import Command, answer_flags, layer_int, load, positive_int, print_table
from core.jsonable import to_jsonable


def patch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clean", default=story.CLEAN)
    p.add_argument("--corrupted", default=story.CORRUPTED)
    answer_flags(p)
    p.add_argument(
        "--level",
        choices=["layers", "heads", "neurons", "all-neurons"],
        default="layers",
        help="all-neurons: every neuron of every layer (attribution patching, then exact on the top-k)",
    )
    p.add_argument(
        "--method",
        choices=["attribution", "exact-topk"],
        default="exact-topk",
        help="for --level all-neurons: attribution only, or attribution + exact patching of the top-k",
    )
    p.add_argument("--layer", type=layer_int, help="MLP layer for --level neurons (default: the standout late layer)")
    p.add_argument("--top-k", type=positive_int, help="neurons to list (default: all in JSON, 20 in tables)")
    p.add_argument("--ablation", choices=ABLATIONS, default="clean")
    p.add_argument(
        "--screen",
        action="store_true",
        help="full neuron sweeps (--level neurons, all-neurons) screened in bfloat16 where that is faster here, "
        "their top rows recomputed in fp32 (the Patching page does this); default: every row fp32",
    )


def cmd_patch(args: argparse.Namespace) -> dict:
    from core.analyses import patching

    model = load(args)
    inputs = patching.PatchInputs(args.clean, args.corrupted, args.answer, args.wrong, args.ablation)
    inputs.resolve(model)  # bad prompts and tokens first: their message before a bad --layer's
    if args.layer is not None:
        patching.check_layer(model, args.layer)
    setup = inputs.prepare(model)
    out: dict[str, Any] = {"model": model.facts(), **setup.to_json()}
    if not args.json:
        print(
            f"{model.name}: clean logit diff {setup.clean_logit_diff:.4f}, corrupted {setup.corrupted_logit_diff:.4f}; "
            f"{out['score']}"
        )
    if args.level == "layers":
        result = patching.patch_layers(setup)
        out.update(result.to_json())
        if not args.json:
            totals = pd.DataFrame({"layer": range(model.n_layers), **result.all_positions})
            print_table("all-positions score per layer", totals)
    elif args.level == "heads":
        heads = patching.patch_heads(setup, per_position=True)
        out.update(heads.to_json())
        if not args.json:
            print_table("top heads (all positions), by |score|", heads.frame().head(10))
    elif args.level == "all-neurons":
        out.update(_all_neurons(args, setup))
    else:
        layer = args.layer
        if layer is None:
            layer = patching.standout_mlp_layer(patching.patch_layers(setup))
        sweep = patching.patch_neurons(setup, layer, screen=args.screen)
        top_k = args.top_k or (None if args.json else 20)  # JSON: every neuron unless --top-k
        if not args.json:
            print(f"layer {layer}: whole-layer score {sweep.layer_score:.4f}")
            print_table("top neurons", sweep.frame(top_k))
        out.update(layer_choice="user" if args.layer is not None else "standout", **sweep.to_json(top_k))
    return out


def _all_neurons(args: argparse.Namespace, setup) -> dict:
    """--level all-neurons: attribution over every neuron of every layer, then (exact-topk) exact patching."""
    from core.analyses import attribution

    approx = attribution.attribute(setup)
    top_k = args.top_k or 50
    out: dict[str, Any] = {"caveat": attribution.CAVEAT, "method": args.method}
    if not args.json:
        print(attribution.CAVEAT)
    if args.method == "exact-topk":
        found = attribution.find_top_neurons(setup, approx, top_k, screen=args.screen)
        frame = found.table
        out.update(found.to_json())
        out["neurons"] = to_jsonable(frame[["layer", "neuron", "exact", "attribution", "source", "disagree"]])
        if not args.json:
            print(found.rule())
            best = found.best
            print(f"top neuron anywhere (exact): {best.label} {best.exact:.4f} (attribution {best.attribution:.4f})")
            print_table("verified candidates, by exact score", frame.head(top_k))
    else:
        frame = attribution.top_neurons(setup.model, approx, top_k)
        out["neurons"] = to_jsonable(frame[["layer", "neuron", "attribution", "exact"]])  # exact: null
        if not args.json:
            print_table(f"top {top_k} neurons of all layers by attribution (not verified)", frame)
    return out


COMMANDS = [
    Command(
        "patch",
        "activation patching: layers × positions, heads, or every neuron of a layer",
        patch_arguments,
        cmd_patch,
    ),
]
