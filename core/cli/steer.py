"""`steer` and `dose`: change neurons and watch what the model writes; one neuron's dose–response curve."""

from __future__ import annotations

import argparse
import math
import sys

from core import story
from core.cli.common import Command, answer_flags, load, positive_int, print_table
from core.errors import UserError


def steer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", default=story.CLEAN)
    p.add_argument(
        "--intervene",
        action="append",
        required=True,
        metavar="SPEC",
        help="L25.N1527:set=-4, L25.N1527:scale=2, L20.N33:add=10, L25.N1527:negate, L25.N1527:direction=4 "
        "(repeat the flag for several)",
    )
    p.add_argument(
        "--positions",
        default="all",
        help="where the interventions act: all (prompt and every new token), prompt, new, or prompt indices 3,5,-1",
    )
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (1..1024; hosted: 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass, in (0, 1]")
    p.add_argument("--seed", type=int, action="append", help="sampling seed (repeat for several samples; default 0)")


def cmd_steer(args: argparse.Namespace) -> dict:
    from core.analyses import steering
    from core.engine import tokens

    model = load(args)
    prompt = tokens.prompt(model, args.prompt)
    interventions = [
        steering.parse_intervention(model, spec, args.positions, len(prompt.ids)) for spec in args.intervene
    ]
    stream = None if args.json else _printer(model)
    result = steering.steer(
        model,
        prompt,
        interventions,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seeds=args.seed or [0],
        on_token=stream,
    )
    if not args.json:
        print(file=sys.stderr)
        for sample, (base, steered) in enumerate(zip(result.baseline, result.steered)):
            seed = "" if base.seed is None else f" (seed {base.seed})"
            print(f"\nsample {sample}{seed}\n  baseline: {base.text!r}\n  steered:  {steered.text!r}")
        change = result.first_change()
        print(
            "\nno generated token changed"
            if change is None
            else f"\nfirst change at new token {change}: {_piece(result.baseline[0], change)!r} → "
            f"{_piece(result.steered[0], change)!r}"
        )
    return {"model": model.facts(), **result.to_json()}


def _piece(continuation, index: int) -> str | None:
    return continuation.pieces[index] if index < len(continuation.pieces) else None


def _printer(model):
    """Stream the steered row's tokens to stderr as they are generated (the baseline is row 0, steered row n)."""

    def show(event) -> None:
        steered = event.token_ids[len(event.token_ids) // 2]
        if not event.finished[len(event.token_ids) // 2]:
            print(model.token_str(steered), end="", file=sys.stderr, flush=True)

    return show


def dose_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--neuron", required=True, help="L25.N1527 or 25.1527")
    p.add_argument("--prompt", default=story.CLEAN)
    answer_flags(p)
    p.add_argument("--from", dest="start", type=float, default=None, help="first clamp value")
    p.add_argument("--to", dest="stop", type=float, default=None, help="last clamp value")
    p.add_argument("--points", type=positive_int, default=21, help="values from --from to --to (2..201)")
    p.add_argument(
        "--positions",
        choices=["last", "all"],
        default="last",
        help="clamp at the last position (where the metric is read; default) or at every position",
    )


def cmd_dose(args: argparse.Namespace) -> dict:
    import numpy as np

    from core.analyses import congruence, steering

    model = load(args)
    layer, neuron = congruence.parse_neuron(model, args.neuron)
    if (args.start is None) != (args.stop is None):
        raise UserError("give both --from and --to, or neither (default: the neuron's observed range)")
    values = None
    observed, source = None, "−2×..+2× its activation on this prompt (no dashboards built)"
    if args.start is not None:
        if not (math.isfinite(args.start) and math.isfinite(args.stop)) or args.start == args.stop:
            raise UserError(f"--from {args.start} --to {args.stop}: give two different finite numbers")
        if not 2 <= args.points <= steering.MAX_DOSE_POINTS:
            raise UserError(f"--points {args.points}; use 2..{steering.MAX_DOSE_POINTS}")
        values, source = np.linspace(args.start, args.stop, args.points), "--from/--to"
    else:
        observed = observed_range(model, layer, neuron)
        if observed is not None:
            source = "the neuron's lowest..highest activation in the built dashboards"
    result = steering.dose_response(
        model,
        args.prompt,
        layer,
        neuron,
        args.answer,
        args.wrong,
        values=values,
        positions=args.positions,
        observed=observed,
        points=args.points,
    )
    if not args.json:
        print(
            f"{congruence.label(layer, neuron)} clamped at the {args.positions} position(s); natural activation "
            f"{result.natural:+.4f} (P({args.answer!r}) {result.natural_p_answer:.3f}); values: {source}"
        )
        print_table("dose–response (natural = the unclamped run)", result.frame())
    return {"model": model.facts(), **result.to_json(), "range_source": source}


def observed_range(model, layer: int, neuron: int) -> tuple[float, float] | None:
    """The neuron's observed activation range from built dashboards of the default corpus, if any are built."""
    from core.corpus import dashboards, rarity

    spec = dashboards.DashboardSpec()
    try:
        if not dashboards.is_built(model, spec):
            return None
    except UserError:  # no corpus installed: no dashboards either
        return None
    return rarity.observed_range(dashboards.build(model, spec), layer, neuron)


COMMANDS = [
    Command(
        "steer",
        "change neurons (set, scale, add, negate, direction) and generate: baseline and steered text side by side",
        steer_arguments,
        cmd_steer,
    ),
    Command(
        "dose",
        "one neuron's dose–response: answer/wrong probabilities as its activation is clamped over a range",
        dose_arguments,
        cmd_dose,
    ),
]
