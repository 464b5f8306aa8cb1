"""`drivers`: what feeds one neuron."""

from __future__ import annotations

import argparse

from core import story
from core.analyses.patching import PatchInputs
from core.cli.common import Command, answer_flags, load, positive_int, print_table
from core.errors import UserError


def drivers_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--neuron", required=True, help="L25.N1527 or 25.1527")
    p.add_argument("--prompt", default=None, help="the prompt to decompose on (default: --clean, else the post's)")
    p.add_argument("--position", type=int, default=None, help="absolute position (default: the last; -1 = last)")
    p.add_argument("--clean", default=None, help="with --corrupted: path patching of every upstream component")
    p.add_argument("--corrupted", default=None)
    answer_flags(p)
    p.add_argument("--top-k", type=positive_int, help="components to list (default: all in JSON, 15 in tables)")
    p.add_argument("--reads-from", type=int, default=3, help="also where the top N heads read from (0: none)")


def cmd_drivers(args: argparse.Namespace) -> dict:
    from core.analyses import congruence, drivers
    from core.engine import tokens

    model = load(args)
    layer, neuron = congruence.parse_neuron(model, args.neuron)
    if (args.clean is None) != (args.corrupted is None):
        raise UserError("give both --clean and --corrupted for path patching, or neither")
    pair = None
    if args.clean is not None:
        pair = PatchInputs(args.clean, args.corrupted, args.answer, args.wrong).resolve(model)
    text = args.prompt if args.prompt is not None else (args.clean if args.clean is not None else story.CLEAN)
    prompt = tokens.prompt(model, text)
    if args.reads_from < 0:
        raise UserError(f"--reads-from {args.reads_from} must be 0 or more")
    result = drivers.drivers(model, prompt, layer, neuron, args.position, pair, reads_from_heads=args.reads_from)
    if not args.json:
        keys = " ".join(f"{k} {v:+.4f}" for k, v in result.inputs.items())
        print(
            f"{result.label()} at position {result.position} ({tokens.shown(prompt.pieces[result.position])}): "
            f"{keys}; activation {result.post_activation:+.4f}; input norm scale {result.norm_scale:.4f} (frozen)"
        )
        print_table("upstream components, by |first-order share|", result.top(args.top_k or 15))
        if result.path_patching is not None:
            facts = result.pair or {}
            print(
                f"\nactivation clean {facts['clean_activation']:+.4f}, corrupted {facts['corrupted_activation']:+.4f}"
            )
            frame = result.path_patching.drop(columns=["patched_activation"])
            print_table("path patching into the neuron, by neuron_restored", frame.head(args.top_k or 15))
        for name, frame in result.reads_from.items():
            print_table(
                f"{name} reads from (position {result.position})", frame.sort_values("attention").iloc[::-1].head(5)
            )
    return {"model": model.facts(), **result.to_json(args.top_k)}


COMMANDS = [
    Command(
        "drivers",
        "what drives a neuron: its input split over upstream components, path patching",
        drivers_arguments,
        cmd_drivers,
    ),
]
