"""Tokens as HTML: tokenization chips with ids, and text coloured by a neuron's activation."""

from __future__ import annotations

import html

from ui.charts import shown

_CHIP = ("display:inline-block;margin:2px 3px;padding:1px 6px;border:1px solid #d0d4d9;border-radius:4px;"
         "background:#f6f8fa;font-family:monospace;font-size:0.9em;white-space:pre")


def chips(pieces: list[str], ids: list[int]) -> str:
    """One chip per token: the token with visible spaces (␣) and its id."""
    spans = [
        f'<span style="{_CHIP}" title="position {i}, id {t}">{html.escape(shown(p))}'
        f'<sub style="color:#6a737d;margin-left:3px">{t}</sub></span>'
        for i, (p, t) in enumerate(zip(pieces, ids))
    ]
    return f'<div class="token-chips" style="line-height:2.1">{"".join(spans)}</div>'


_TOKEN = "padding:1px 0;border-radius:2px;white-space:pre-wrap"


def activation_colour(value: float, scale: float) -> str:
    """Blue for positive, red for negative, opacity ∝ |value| / scale."""
    alpha = 0.0 if scale <= 0 else min(abs(value) / scale, 1.0) * 0.85
    rgb = "31,95,168" if value >= 0 else "181,68,59"
    return f"rgba({rgb},{alpha:.2f})"


def activation_text(pieces: list[str], values: list[float], highlight: int | None = None) -> str:
    """The prompt with each token's background coloured by the activation (hover shows the value).

    highlight: a position to outline (e.g. the max-activating token of a corpus example).
    """
    scale = max((abs(v) for v in values), default=0.0)
    spans = []
    for i, (piece, value) in enumerate(zip(pieces, values)):
        outline = "outline:2px solid #111;" if i == highlight else ""
        style = f"background:{activation_colour(value, scale)};{outline}{_TOKEN}"
        title = f"{html.escape(repr(piece))}: {value:+.3f}"
        spans.append(f'<span title="{title}" style="{style}">{html.escape(piece)}</span>')
    return f'<div class="activation-text" style="font-family:monospace;line-height:1.9">{"".join(spans)}</div>'
