"""Limits for a public demo ("hosted mode") and the checks every entry point shares.

Hosted mode is on when TNE_HOSTED=1 (the app also maps `hosted = true` in .streamlit/secrets.toml onto it).
Then: only allow-listed model names (no local folders, no arbitrary hub names), the bundled corpus only, and caps
on prompt length, top-k, corpus token budget, patching batch size and the disk cache. Each cap can be set by an
environment variable (TNE_MODELS, TNE_MAX_PROMPT_TOKENS, TNE_MAX_TOP_K, TNE_MAX_SCAN_TOKENS,
TNE_MAX_BATCH_TOKENS, TNE_CACHE_MAX_MB). Locally nothing is capped beyond the model's own context and the disk
cache's size (10 GB by default).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from core.errors import UserError


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


def _int(name: str, default: int | None) -> int | None:
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
        return Limits(False, None, None, None, 50_000_000, None, True, _int("TNE_CACHE_MAX_MB", 10_240))
    models = tuple(m.strip() for m in os.environ.get("TNE_MODELS", "smollm2-135m,gpt2").split(",") if m.strip())
    return Limits(
        hosted=True,
        models=models,
        max_prompt_tokens=_int("TNE_MAX_PROMPT_TOKENS", 128),
        max_top_k=_int("TNE_MAX_TOP_K", 100),
        max_scan_tokens=_int("TNE_MAX_SCAN_TOKENS", 50_000),
        max_batch_tokens=_int("TNE_MAX_BATCH_TOKENS", 4096),
        custom_corpora=False,
        cache_max_mb=_int("TNE_CACHE_MAX_MB", 1024),
    )


def check_model(name: str) -> None:
    allowed = limits().models
    if allowed is not None and name not in allowed:
        raise UserError(f"this hosted demo serves only {', '.join(allowed)}; {name!r} is not one of them "
                        "(run the tool locally for other models or local folders)")


def check_top_k(top_k: int, available: int) -> int:
    """1 <= top_k <= min(available, hosted cap)."""
    cap = limits().max_top_k
    upper = available if cap is None else min(available, cap)
    if not 1 <= top_k <= upper:
        raise UserError(f"top-k {top_k} is out of range; use 1..{upper}")
    return top_k
