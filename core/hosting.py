"""Limits for a public demo ("hosted mode") and the checks every entry point shares.

Hosted mode is on when TNE_HOSTED=1 (the app also maps `hosted = true` in .streamlit/secrets.toml onto it).
Then: only allow-listed model names (default: the embedded model the image ships; no local folders, no arbitrary hub
names), device and weight processing fixed by the host (one shared model: a visitor cannot make the server load
another copy), the installed corpora only (bundled, brown), and caps on text length, prompt tokens, top-k, corpus
token budget, neurons and examples per scan, patching batch size, a search block's memory and the disk cache. Each
has an environment variable (TNE_MODELS, TNE_DEVICE, TNE_PROCESSING, TNE_MAX_TEXT_CHARS, TNE_MAX_PROMPT_TOKENS,
TNE_MAX_TOP_K, TNE_MAX_SCAN_TOKENS, TNE_MAX_SCAN_NEURONS, TNE_MAX_SCAN_EXAMPLES, TNE_MAX_BATCH_TOKENS, TNE_MAX_BLOCK_MB,
TNE_CACHE_MAX_MB). Locally nothing is capped beyond the model's own context (text: 32 characters per context
token) and the disk cache's size (10 GB by default).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from core.errors import UserError

CHARS_PER_TOKEN = 32  # text longer than this many characters per allowed token is refused before tokenizing


@dataclass(frozen=True)
class Limits:
    hosted: bool
    models: tuple[str, ...] | None  # None: any model
    max_prompt_tokens: int | None
    max_top_k: int | None
    max_scan_tokens: int
    max_batch_tokens: int | None
    custom_corpora: bool
    cache_max_mb: int
    fixed_settings: dict[str, str] | None = None  # {"device", "processing", "dtype"} set by the host; None: visitor's
    max_text_chars: int | None = None  # any one text input (prompt, token, neuron list); None: from the context
    max_scan_neurons: int | None = None
    max_scan_examples: int = 1000
    max_block_mb: int | None = None  # one block of the neuron × token search; None: from free memory


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"setting {name}={raw!r} is not a whole number") from None
    if value < 1:
        raise UserError(f"setting {name}={value} must be at least 1")
    return value


def limits() -> Limits:
    """Read the limits from the environment (cheap; read at every check so tests and the app can change them)."""
    hosted = os.environ.get("TNE_HOSTED", "").lower() in ("1", "true", "yes", "on")
    if not hosted:
        return Limits(
            hosted=False,
            models=None,
            max_prompt_tokens=None,
            max_top_k=None,
            max_scan_tokens=50_000_000,
            max_batch_tokens=None,
            custom_corpora=True,
            cache_max_mb=_int("TNE_CACHE_MAX_MB", 10_240),
        )
    # Default allow-list = what the image ships: a hub name would cost a download (or ~25 s of retries offline).
    models = tuple(m.strip() for m in os.environ.get("TNE_MODELS", "smollm2-135m").split(",") if m.strip())
    return Limits(
        hosted=True,
        models=models,
        max_prompt_tokens=_int("TNE_MAX_PROMPT_TOKENS", 128),
        max_top_k=_int("TNE_MAX_TOP_K", 100),
        max_scan_tokens=_int("TNE_MAX_SCAN_TOKENS", 50_000),
        max_batch_tokens=_int("TNE_MAX_BATCH_TOKENS", 4096),
        custom_corpora=False,
        cache_max_mb=_int("TNE_CACHE_MAX_MB", 1024),
        fixed_settings={
            "device": os.environ.get("TNE_DEVICE", "auto"),
            "processing": os.environ.get("TNE_PROCESSING", "tl-default"),
            "dtype": os.environ.get("TNE_DTYPE", "float32"),
        },
        max_text_chars=_int("TNE_MAX_TEXT_CHARS", 2000),
        max_scan_neurons=_int("TNE_MAX_SCAN_NEURONS", 8),
        max_scan_examples=_int("TNE_MAX_SCAN_EXAMPLES", 20),
        max_block_mb=_int("TNE_MAX_BLOCK_MB", 128),
    )


def check_model(name: str) -> None:
    allowed = limits().models
    if allowed is not None and name not in allowed:
        raise UserError(
            f"this hosted demo serves only {', '.join(allowed)}; {name!r} is not one of them "
            "(run the tool locally for other models or local folders)"
        )


def check_text_length(text: str, what: str, n_ctx: int) -> None:
    """Refuse text too long to be worth tokenizing (a 10M-character prompt took 31 s to refuse by token count)."""
    cap = limits().max_text_chars or n_ctx * CHARS_PER_TOKEN
    if len(text) > cap:
        raise UserError(f"{what} is {len(text):,} characters; at most {cap:,} are read here")


def check_top_k(top_k: int, available: int) -> int:
    """1 <= top_k <= min(available, hosted cap)."""
    cap = limits().max_top_k
    upper = available if cap is None else min(available, cap)
    if not 1 <= top_k <= upper:
        raise UserError(f"top-k {top_k} is out of range; use 1..{upper}")
    return top_k
