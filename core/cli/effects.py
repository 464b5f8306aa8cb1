"""Commands on one prompt without a pair: top-neurons (direct and total effect of every neuron and head)."""

from __future__ import annotations

import argparse

from core.cli.common import Command, load, print_table


def whole(text: str) -> int:
    """A whole number, any sign: the engine says which range is valid (a position may count from the end)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def top_neurons_arguments(p: argparse.ArgumentParser) -> None:
    from core.analyses.effects import ABLATIONS, DEFAULT_TOP_K

    p.add_argument("--prompt", required=True, help="the text; its tokens follow the model's BOS convention")
    p.add_argument("--answer", default=None, help="target token (its logit); default: the model's top-1 there")
    p.add_argument("--wrong", default=None, help="with --answer: the metric is logit(answer) − logit(wrong)")
    p.add_argument("--position", type=whole, default=None, help="token position (default: the last; -1 = last)")
    p.add_argument("--top-k", type=whole, default=DEFAULT_TOP_K, help="neurons whose total effect is computed")
    p.add_argument(
        "--ablation",
        choices=ABLATIONS,
        default="zero",
        help="total effect = metric change when the neuron is set to zero, or to its corpus mean (built dashboards)",
    )
    p.add_argument("--corpus", default=None, help="--ablation mean: the dashboards' corpus (default: brown/bundled)")


def cmd_top_neurons(args: argparse.Namespace) -> dict:
    from core.analyses import effects
    from core.engine import tokens

    model = load(args)
    prompt = tokens.prompt(model, args.prompt)
    means = None
    if args.ablation == "mean":  # every neuron's corpus mean, from the largest dashboards built
        from core.corpus import dashboards, rarity

        built = dashboards.largest_built(model, args.corpus, "--ablation mean")
        means = rarity.corpus_means(rarity.require(model, built))
    result = effects.top_neurons(
        model,
        prompt,
        args.answer,
        args.wrong,
        position=args.position,
        top_k=args.top_k,
        ablation=args.ablation,
        means=means,
    )
    if not args.json:
        frame = result.frame()
        print(
            f"{model.name}: {len(prompt.ids)} tokens; position {result.position} "
            f"({tokens.shown(prompt.pieces[result.position])}); {model.bos_convention()}"
        )
        print(f"metric {result.target.description} = {result.metric:.4f} ({result.target.chosen})")
        print_table(
            f"top {len(frame)} neurons by |direct effect|; total = metric change when set to {args.ablation}",
            frame[["rank", "label", "activation", "direct", "total", "ratio", "kind"]],
        )
        print_table("top heads", result.heads[result.heads.verified][["label", "direct", "total", "ratio", "kind"]])
    # the same JSON as the Prompt page's download (tests/test_cli.py checks)
    return result.to_json()


COMMANDS = [
    Command(
        "top-neurons",
        "one prompt: direct effect of every neuron and head, exact total effects of the top ones",
        top_neurons_arguments,
        cmd_top_neurons,
    ),
]
