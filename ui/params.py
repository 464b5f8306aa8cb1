"""URL query parameters ⇄ widgets, so that a copied URL reopens the same view.

Every input widget's value lives in `st.session_state` under `"<page>:<name>"`. Each run:
1. `bind` (before the widgets) compares the URL with what this page last wrote to it. If they differ, the URL
   was changed from outside (first load, a shared link, a click-through from another page, browser history), so its
   values are parsed, validated like form input, and copied into the widgets; a bad value gives an `st.error`
   saying what was wrong and what is valid, and the widget keeps its default.
2. `publish` (after the widgets) writes the widget values back to the URL (defaults are left out, so links stay short).

Streamlit's own `bind="query-params"` is not used: it drops bad values silently, and a page cannot switch to
another page with query parameters that are bound to widgets on the current page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from core.errors import UserError
from core.hosting import limits
from ui import text

LOCAL_URL_VALUE_CHARS = 262_144  # a URL value longer than this is refused unread (hosted: TNE_MAX_TEXT_CHARS)
ECHO_CHARS = 80  # how much of a refused value the notice repeats


@dataclass(frozen=True)
class Param:
    """One URL parameter: its name, its default, and a parser that raises UserError for bad text."""

    name: str
    default: Any
    parse: Callable[[str], Any] = str
    format: Callable[[Any], str] = field(default=str)


def key(page: str, name: str) -> str:
    """The session-state key of a page's input (also the widget key)."""
    return f"{page}:{name}"


def _written_key(page: str) -> str:
    return f"_url_written:{page}"


def bind(page: str, params: list[Param]) -> None:
    """Seed the page's widget state from the URL when the URL changed from outside (bad values: st.error)."""
    for p in params:
        if key(page, p.name) not in st.session_state:
            st.session_state[key(page, p.name)] = p.default
    url = {p.name: st.query_params.get(p.name) for p in params}
    if url == st.session_state.get(_written_key(page)):
        return  # the URL is what this page wrote: the widgets are the truth
    for p in params:
        raw = url[p.name]
        if raw is None:
            continue  # not in the URL: keep what the user had (or the default on a fresh session)
        try:
            st.session_state[key(page, p.name)] = p.parse(checked_length(p.name, raw))
        except UserError as err:
            shown = raw if len(raw) <= ECHO_CHARS else f"{raw[:ECHO_CHARS]}…"
            st.error(f"URL parameter {text.literal(f'{p.name}={shown}')} was ignored: {text.literal(err)}")
            st.session_state[key(page, p.name)] = p.default


def checked_length(name: str, raw: str) -> str:
    """A URL value no longer than any input may be (checked before parsing, tokenizing or echoing it)."""
    cap = limits().max_text_chars or LOCAL_URL_VALUE_CHARS
    if len(raw) > cap:
        raise UserError(f"{name} is {len(raw):,} characters; at most {cap:,} are read here")
    return raw


def value(page: str, name: str) -> Any:
    return st.session_state.get(key(page, name))


def publish(page: str, params: list[Param]) -> None:
    """Mirror the page's input values into the URL (non-default values only)."""
    written = {}
    for p in params:
        current = value(page, p.name)
        text = None if current is None or current == p.default else p.format(current)
        written[p.name] = text
        if text is None:
            if p.name in st.query_params:
                del st.query_params[p.name]
        elif st.query_params.get(p.name) != text:
            st.query_params[p.name] = text
    st.session_state[_written_key(page)] = written


# ---------------------------------------------------------------- parsers (raise UserError, say what is valid)


def whole_number(what: str, low: int = 0, high: int | None = None) -> Callable[[str], int]:
    """Parser for an integer in low..high (high inclusive; None = no upper bound)."""
    valid = f"{low}..{high}" if high is not None else f"{low} or more"

    def parse(text: str) -> int:
        try:
            number = int(str(text).strip())
        except ValueError:
            raise UserError(f"{what} {text!r} is not a whole number; valid: {valid}") from None
        if number < low or (high is not None and number > high):
            raise UserError(f"{what} {number} is out of range; valid: {valid}")
        return number

    return parse


def choice(what: str, options: tuple[str, ...] | list[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise UserError(f"{what} {text!r} is unknown; valid: {', '.join(options)}")
        return text

    return parse
