"""`python -m core …`: every analysis headless, a table by default, JSON with --json.

One command table (`COMMANDS`), gathered from one small module per command group; each module lists its
`Command(name, help, arguments, run)` records. To add a command: write its arguments and run functions in the group's
module (or a new one) and add the record there, and the group to `GROUPS` if it is new. Layer: the top — may import
anything in core/; nothing in core/ imports it.

Bad input answers with one line `error: …` and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys

from core.cli import corpus, effects, neuron, pairs, patch, prompt, report, steer, weights
from core.cli.common import Command, Parser, model_flags
from core.errors import UserError
from core.jsonable import to_jsonable

GROUPS = (prompt, effects, patch, weights, neuron, steer, corpus, pairs, report)
COMMANDS: dict[str, Command] = {command.name: command for group in GROUPS for command in group.COMMANDS}


def build_parser() -> Parser:
    parser = Parser(prog="python -m core", description="Token Neuron Explorer, headless.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS.values():
        p = sub.add_parser(command.name, help=command.help)
        if command.model_flags:
            model_flags(p)
        command.arguments(p)
    return parser


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    undecodable = next((a for a in (sys.argv[1:] if argv is None else argv) if _has_surrogate(a)), None)
    if undecodable is not None:  # bytes that were not UTF-8 reach argv as lone surrogates (surrogateescape)
        print(f"error: argument {undecodable!r} is not valid UTF-8 text; pass UTF-8", file=sys.stderr)
        return 2
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # argparse already printed one line (or --help); hand back its status
        return int(done.code or 0)
    try:
        result = COMMANDS[args.command].run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if args.json:
        try:
            json.dump(to_jsonable(result), sys.stdout, ensure_ascii=False)
            print()
        except BrokenPipeError:  # `… --json | head` closed the pipe: not an error of ours
            sys.stderr.close()
    return 0
