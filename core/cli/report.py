"""`reproduce`: the post's whole story on one model, written as a report."""

from __future__ import annotations

import argparse
import sys

from core.cli.common import Command, load, positive_int
from core.jsonable import to_jsonable


def reproduce_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dataset", default="bundled", help="corpus for the corpus check (see scan)")
    p.add_argument("--corpus-tokens", type=positive_int, default=20_000, help="token budget of the corpus check")


def cmd_reproduce(args: argparse.Namespace) -> dict:
    from pathlib import Path

    from tqdm import tqdm

    from core import reproduce

    model = load(args)
    bar = tqdm(total=len(reproduce.STEPS), desc="reproduce", file=sys.stderr, leave=False)

    def progress(done: int, total: int, name: str) -> None:
        bar.set_postfix_str(name)
        bar.update(done - bar.n)

    try:
        results = reproduce.run(model, args.dataset, args.corpus_tokens, progress)
    finally:
        bar.close()
    written = reproduce.write(to_jsonable(results), Path(args.out))
    if not args.json:
        for row in results["verdicts"]:
            print(f"{row['verdict']:>12}  {row['quantity']}: measured {row['measured']}, expected {row['expected']}")
        print("wrote " + ", ".join(str(p) for p in written.values()))
    return {"written": {k: str(v) for k, v in written.items()}, "verdicts": results["verdicts"]}


COMMANDS = [
    Command(
        "reproduce",
        "the post's whole story on one model: report.md/.html, figures, results.json",
        reproduce_arguments,
        cmd_reproduce,
    ),
]
