"""What every benchmark shares. Benchmarks run as `python bench/NAME.py` from the repo root with nothing else set, so
importing this first (`import _common`) puts the repo on sys.path and keeps the Hugging Face Hub offline (each hub
call burns ~25 s of retries without a network). It also says how the machine was set when a figure was taken."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
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


@contextlib.asynccontextmanager
async def niced_chromium(playwright, executable: str, args: list[str]):
    """A headless Chromium at nice 19 in this process's session, connected over CDP: the stand-in for visitors'
    browsers, which on a real host run on their own machines.

    Playwright's own launch starts the browser in a session of its own (setsid). With sched_autogroup (on by default,
    and on here) Linux first shares the CPU between sessions and only then ranks by nice, so a nice-19 browser in its
    own session still took half the machine: two busy-looping nice-19 processes in their own session (even with the
    session's weight set to nice 19) slowed the search's table pass from 22 s to 86 s; in the same session they left
    it at 21 s (3 Dec). Started here, the browser shares the server's session and nice 19 ranks it last.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    profile = tempfile.mkdtemp(prefix="tne-chromium-")
    process = subprocess.Popen(
        [
            "nice",
            "-n",
            "19",
            executable,
            "--headless",
            f"--remote-debugging-port={port}",
            f"--user-data-dir={profile}",
            *args,
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        end = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=2):
                    break
            except OSError:
                if time.monotonic() > end or process.poll() is not None:
                    raise RuntimeError(f"{executable} did not open its debugging port") from None
                await asyncio.sleep(0.25)
        browser = await playwright.chromium.connect_over_cdp(f"http://127.0.0.1:{port}")
        try:
            yield browser
        finally:
            await browser.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(profile, ignore_errors=True)
