"""`python -m core pairs`: the top-K pairs of a search tested on a corpus (core.corpus.pairs)."""

from __future__ import annotations

import argparse

from core.analyses.search import KINDS
from core.cli.common import Command, load, positive_int, print_table, progress_bar
from core.corpus import pairs


def corpus_flag(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument(
        "--corpus",
        default=default,
        help="brown (default when installed), bundled (State of the Union 1981-2021), a file/folder, a hub name",
    )


def pairs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", default="mutual", choices=KINDS, help="the search whose pairs are tested")
    p.add_argument("--top-k", type=int, default=pairs.DEFAULT_TOP_K, help="pairs tested, best first")
    corpus_flag(p)
    p.add_argument("--max-tokens", type=positive_int, default=pairs.DEFAULT_TOKENS, help="positions read")
    p.add_argument("--matrix", default="W_U", help="the search's congruence basis: W_U or W_E")
    p.add_argument("--no-dashboards", action="store_true", help="scan even where built dashboards could be read")


def cmd_pairs(args: argparse.Namespace) -> dict:
    model = load(args)
    spec = pairs.PairsSpec(args.kind, args.top_k, args.corpus, args.max_tokens, args.matrix)
    result = pairs.pairs(
        model,
        spec,
        progress=None if args.json else progress_bar("tokens scanned", unit="tok"),
        use_dashboards=not args.no_dashboards,
    )
    if not args.json:
        s = result.summary()
        print(
            f"top {s['pairs']} {result.kind} pairs of {model.name} on {result.positions:,} positions of "
            f"{result.corpus}: {s['correlates']} correlate, {s['weak']} weak, {s['none']} none, "
            f"{s['too rare to tell']} too rare to tell"
        )
        print(f"verdict: {pairs.THRESHOLDS['rule']}")
        print_table("pairs", result.frame().drop(columns=["layer", "neuron"]))
    return {"model": model.facts(), **result.to_json()}


COMMANDS = [
    Command(
        "pairs",
        "the top-K pairs of a search tested on a corpus: curves, Spearman, verdicts",
        pairs_arguments,
        cmd_pairs,
    )
]
