"""Commands on the weights alone (no prompt): congruence, search, atlas."""

from __future__ import annotations

import argparse

import pandas as pd

from core.analyses.congruence import MATRICES
from core.analyses.search import KINDS
from core.cli.common import Command, load, positive_int, print_table, progress_bar, ray_flags


def congruence_arguments(p: argparse.ArgumentParser) -> None:
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--neuron", help="L31.N892 or 31.892")
    target.add_argument("--token", help="a token with its leading space, e.g. ' an'")
    p.add_argument("--top-k", type=positive_int, default=20)
    p.add_argument("--matrix", choices=MATRICES, default="W_U", help="W_U: unembedding; W_E: embedding (post's code)")


def search_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=KINDS, default="mutual")
    p.add_argument("--top-k", type=positive_int, default=20)
    p.add_argument("--matrix", choices=MATRICES, default="W_U")
    ray_flags(p)


def atlas_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", default=None, help="an inclusive layer range, e.g. 20-29 (default: all layers)")
    p.add_argument("--top-k", type=positive_int, default=None, help="neurons to list, by kurtosis (default: all)")


def cmd_congruence(args: argparse.Namespace) -> dict:
    from core.analyses import congruence
    from core.engine import tokens

    model = load(args)
    out = {"model": model.facts(), **congruence.describe(model, args.matrix)}
    if args.neuron is not None:
        layer, neuron = congruence.parse_neuron(model, args.neuron)
        by_neuron = congruence.neuron_to_tokens(model, layer, neuron, args.matrix, args.top_k)
        if not args.json:
            print(
                f"{congruence.label(layer, neuron)} · {args.matrix}; its top token ranks "
                f"#{by_neuron.top_token_rank_among_neurons} among all neurons for that token"
            )
            print_table("most congruent tokens", by_neuron.top)
            print_table("least congruent tokens", by_neuron.bottom)
        return {**out, **by_neuron.to_json()}
    by_token = congruence.token_to_neurons(model, tokens.single_token(model, args.token), args.matrix, args.top_k)
    if not args.json:
        print(f"{args.token!r} (id {by_token.token_id}) · {args.matrix}")
        print_table("most congruent neurons", by_token.top)
    return {**out, **by_token.to_json()}


def cmd_search(args: argparse.Namespace) -> dict:
    from core.analyses import congruence, search

    model = load(args)
    progress = progress_bar("congruence blocks") if not args.json else None
    kind = search.check_kind_and_top_k(model, args.kind, args.top_k)
    if args.ray:
        from core.corpus import distributed

        tables = distributed.ray_tables(model, args.matrix, args.workers, args.ray_address, progress=progress)
        frame = search.ranked(model, kind, tables, args.top_k)
    else:
        frame = search.search(model, kind, args.matrix, args.top_k, progress)
    if not args.json:
        print_table(f"{args.kind} search, {args.matrix}", frame)
    return {"model": model.facts(), **congruence.describe(model, args.matrix), **search.to_json(kind, frame)}


def cmd_atlas(args: argparse.Namespace) -> dict:
    from core.analyses import atlas

    model = load(args)
    atlas.check_layers(model, args.layers)
    result = atlas.atlas(model, args.layers, progress_bar("atlas blocks") if not args.json else None)
    if not args.json:
        columns = ["name", "kurtosis", "skew", "std", "null_space_share", "gap", "classes", "label", "top_token"]
        print_table(f"atlas of {model.name}, by kurtosis", result.ranked(args.top_k or 20)[columns])
        print(pd.DataFrame(result.counts(), index=range(result.layers[0], result.layers[1] + 1)).to_string())
    return {"model": model.facts(), **result.to_json(args.top_k)}


COMMANDS = [
    Command(
        "congruence",
        "neuron → tokens (--neuron) or token → neurons (--token): W_out · u_t",
        congruence_arguments,
        cmd_congruence,
    ),
    Command(
        "search",
        "stand-out or mutual-exclusive token-neuron pairs over all neurons × tokens",
        search_arguments,
        cmd_search,
    ),
    Command(
        "atlas",
        "every neuron classified by its vocabulary composition (moments, classes)",
        atlas_arguments,
        cmd_atlas,
    ),
]
