"""Target tokens and prompts: parse, validate, and explain what the model will see."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import torch

from core.engine.model import Model
from core.errors import UserError
from core.hosting import check_text_length, limits

VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\xa0": "⍽"}


def shown(piece: str) -> str:
    """A token as text that shows its spaces and line breaks (leading spaces matter: ' an' vs 'an').

    Other invisible characters (control, format, unusual spaces) are written as \\uXXXX. The UI and the CLI's
    tables both show tokens this way.
    """

    def visible(char: str) -> str:
        if char in VISIBLE:
            return VISIBLE[char]
        if unicodedata.category(char)[0] in "CZ":
            return f"\\u{ord(char):04x}"
        return char

    return "".join(visible(c) for c in piece) or "∅"


@dataclass(frozen=True)
class Prompt:
    text: str
    ids: list[int]
    pieces: list[str]

    def tensor(self, device: torch.device) -> torch.Tensor:
        """[1, P] token ids."""
        return torch.tensor([self.ids], device=device)

    def to_json(self) -> list[dict]:
        return [{"position": i, "id": t, "token": p} for i, (t, p) in enumerate(zip(self.ids, self.pieces))]


def show_pieces(model: Model, ids: list[int]) -> str:
    """'[' an'=281]' style listing, used in every tokenization message."""
    return "[" + ", ".join(f"{model.token_str(t)!r}={t}" for t in ids) + "]"


def _check_text(model: Model, text: str, what: str) -> str:
    if text is None or text == "":
        raise UserError(f"{what} is empty; type some text")
    check_text_length(text, what, model.n_ctx)  # before any per-character work
    bad = [c for c in text if unicodedata.category(c) == "Cc" and c not in "\n\t"]
    if bad:
        raise UserError(f"{what} contains control characters {sorted({repr(c) for c in bad})}; remove them")
    return text


def prompt(model: Model, text: str, what: str = "prompt") -> Prompt:
    """Tokenize a prompt following the model's BOS convention; refuse empty or over-long prompts."""
    _check_text(model, text, what)
    if not text.strip():
        raise UserError(f"{what} is only whitespace; type some text")
    ids = model.prompt_ids(text)
    hosted_cap = limits().max_prompt_tokens
    cap = model.n_ctx if hosted_cap is None else min(model.n_ctx, hosted_cap)
    if len(ids) > cap:
        raise UserError(f"{what} is {len(ids)} tokens; {model.name} reads at most {cap} here")
    return Prompt(text=text, ids=ids, pieces=[model.token_str(t) for t in ids])


def single_token(model: Model, text: str, what: str = "token") -> int:
    """The id of a target given as text with its leading space (" an"); refuse 0 or 2+ tokens."""
    _check_text(model, text, what)
    ids = model.encode(text)
    if len(ids) == 1:
        return ids[0]
    if not ids:
        raise UserError(f"{what} {text!r} is no token at all; give one token, e.g. ' an'")
    alternatives = []
    stripped = text.strip()
    for candidate in (" " + stripped, stripped, stripped.lower(), " " + stripped.lower()):
        if candidate and candidate != text and len(model.encode(candidate)) == 1 and candidate not in alternatives:
            alternatives.append(candidate)
    first = model.token_str(ids[0])
    if first not in alternatives:
        alternatives.append(first)
    hint = ", ".join(repr(a) for a in alternatives[:4])
    raise UserError(
        f"{what} {text!r} is {len(ids)} tokens for {model.name}: {show_pieces(model, ids)}; "
        f"a target must be exactly one token. Single-token alternatives: {hint}"
    )


def token_from_id(model: Model, token_id: int) -> str:
    if not 0 <= token_id < model.d_vocab:
        raise UserError(f"token id {token_id} is out of range; {model.name} has ids 0..{model.d_vocab - 1}")
    return model.token_str(token_id)


def pair(model: Model, clean: str, corrupted: str) -> tuple[Prompt, Prompt]:
    """Clean and corrupted prompts; they must have the same number of tokens (patching is position-wise)."""
    c, k = prompt(model, clean, "clean prompt"), prompt(model, corrupted, "corrupted prompt")
    if len(c.ids) != len(k.ids):
        raise UserError(
            f"clean and corrupted prompts must have the same number of tokens: clean is {len(c.ids)} "
            f"{show_pieces(model, c.ids)}, corrupted is {len(k.ids)} {show_pieces(model, k.ids)}. "
            "Swap a word for one of the same token length."
        )
    if c.ids == k.ids:
        raise UserError("clean and corrupted prompts are the same tokens; patching needs them to differ")
    return c, k


def answer_pair(model: Model, answer: str, wrong: str) -> tuple[int, int]:
    """The ids of the metric's two tokens, answer and wrong, each checked to be one token."""
    return single_token(model, answer, "answer"), single_token(model, wrong, "wrong")


def first_difference(clean: Prompt, corrupted: Prompt) -> int:
    """First position where the two prompts differ: every activation before it is equal in both runs."""
    return next(i for i, (a, b) in enumerate(zip(clean.ids, corrupted.ids)) if a != b)
