"""What every command shares: the parser class, argument types, common flags, loading, tables and progress bars."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import pandas as pd

from core import story
from core.engine.model import DTYPES, EMBEDDED, LOADERS, PROCESSINGS, Model
from core.progress import Progress


@dataclass(frozen=True)
class Command:
    """One `python -m core NAME` command: its flags and what it runs (a dict: the JSON printed with --json)."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict]
    model_flags: bool = True  # False where sub-commands carry them (dashboards build)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse's default prints usage too)
        self.exit(2, f"error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def layer_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a layer number") from None


def model_flags(parser: argparse.ArgumentParser) -> None:
    """--model, --device, --processing, --dtype, --loader, --json: on every command."""
    parser.add_argument("--model", default=EMBEDDED, help=f"{EMBEDDED} (embedded), gpt2…gpt2-xl, or a local folder")
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N")
    parser.add_argument(
        "--processing",
        default="tl-default",
        choices=PROCESSINGS,
        help="tl-default: fold_ln + centring, as the post; none: raw weights",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPES,
        help="weights' dtype (processing runs in float32 and is cast); bfloat16 halves memory, fast on CPUs "
        "with avx512_bf16",
    )
    parser.add_argument(
        "--loader",
        default="stream",
        choices=LOADERS,
        help="stream: safetensors read layer by layer (peak ≈ the weights); bridge: via the Hugging Face model "
        "and TransformerLens's bridge (the reference, 3–4× the weights)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def answer_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--answer", default=story.ANSWER, help="answer token with its leading space")
    parser.add_argument("--wrong", default=story.WRONG, help="the alternative token")


def ray_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray", action="store_true", help="run on Ray (optional extra, requirements-scale.txt)")
    parser.add_argument("--ray-address", default=None, help="join this Ray cluster (default: RAY_ADDRESS or local)")
    parser.add_argument("--workers", type=positive_int, default=2, help="Ray workers (local instance: CPUs)")


def load(args: argparse.Namespace) -> Model:
    from core.engine.model import load_model

    return load_model(args.model, device=args.device, processing=args.processing, dtype=args.dtype, loader=args.loader)


TOKEN_COLUMNS = ("token", "top_token", "answer", "wrong", "prediction")


def print_table(title: str, frame: pd.DataFrame) -> None:
    """A table for the terminal; tokens show their spaces (" an" as ␣an), as in the UI. JSON keeps them raw."""
    from core.engine.tokens import shown

    shown_frame = frame.assign(
        **{
            c: frame[c].map(lambda t: shown(t) if isinstance(t, str) else t)
            for c in TOKEN_COLUMNS
            if c in frame.columns
        }
    )
    print(f"\n{title}")
    print(shown_frame.to_string(index=False, float_format=lambda x: f"{x:.4f}"))


def progress_bar(description: str, unit: str = "it") -> Progress:
    """A progress callback drawing a tqdm bar on stderr."""
    from tqdm import tqdm

    bar: Any = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=description, file=sys.stderr, leave=False, unit=unit)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update
