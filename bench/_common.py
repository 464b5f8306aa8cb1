"""What every benchmark shares. Benchmarks run as `python bench/NAME.py` from the repo root with nothing else set, so
importing this first (`import _common`) puts the repo on sys.path and keeps the Hugging Face Hub offline (each hub
call burns ~25 s of retries without a network). It also says how the machine was set when a figure was taken."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def machine() -> str:
    """torch's threads and the load average: a benchmark's figures are only comparable on a quiet machine."""
    import torch

    return f"torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.2f}"


async def settled_texts(page, selector: str, timeout_s: float = 20.0) -> list[str]:
    """The inner texts of `selector` on a Streamlit page once its script run has ended (no "Running…" status
    widget) and they read the same twice, 0.5 s apart. A page's last element can appear while the run that draws the
    elements above it is still going (a rerun leaves the previous run's elements in place until replaced), so
    reading at once may catch a page half drawn."""
    end = time.monotonic() + timeout_s
    before = None
    while True:
        running = await page.locator("[data-testid='stStatusWidget']").count()
        now = await page.locator(selector).all_inner_texts()
        if (not running and now == before) or time.monotonic() > end:
            return now
        before = now
        await page.wait_for_timeout(500)
