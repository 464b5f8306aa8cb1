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
import threading
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


def descendants(root: int) -> set[int]:
    """`root` and every process below it."""
    parents = {}
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            if proc.name.isdigit():
                parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    family, grew = {root}, True
    while grew:
        grown = {pid for pid, parent in parents.items() if parent in family} - family
        family |= grown
        grew = bool(grown)
    return family


def keep_nice(root: int, nice: int, stop: threading.Event, seen: dict[int, int] | None = None) -> None:
    """Every second until `stop`: every thread of `root`'s process tree at `nice`; each process's pid into `seen`.

    Every thread, not only each process's first: Chromium (running as root here) raises the main threads of its
    browser and GPU processes to nice -8, above the server's workers."""
    while not stop.wait(1.0):
        for pid in descendants(root):
            with contextlib.suppress(OSError):
                for task in Path(f"/proc/{pid}/task").iterdir():
                    with contextlib.suppress(OSError, ValueError):
                        if os.getpriority(os.PRIO_PROCESS, int(task.name)) != nice:
                            os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
                if seen is not None:
                    seen[pid] = nice


@contextlib.asynccontextmanager
async def niced_chromium(playwright, executable: str, args: list[str], nice: int = 19, seen: dict | None = None):
    """A headless Chromium whose every thread runs at `nice`, in this process's session, connected over CDP: the
    stand-in for visitors' browsers, which on a real host run on their own machines. `seen` collects its pids.

    Playwright's own launch starts the browser in a session of its own (setsid). With sched_autogroup (on by default,
    and on here) Linux first shares the CPU between sessions and only then ranks by nice, so a nice-19 browser in its
    own session still took half the machine: two busy-looping nice-19 processes in a session of their own slowed the
    search's table pass from 24 s to 82 s; with their session's weight at nice 19 too, 22.9 s against 22.3 s alone
    (3 Dec). Started here, the browser shares the server's session and its nice value counts.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    profile = tempfile.mkdtemp(prefix="tne-chromium-")
    command = [executable, "--headless", f"--remote-debugging-port={port}", f"--user-data-dir={profile}", *args]
    process = subprocess.Popen(
        ["nice", "-n", str(nice), *command, "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    stop = threading.Event()
    threading.Thread(target=keep_nice, args=(process.pid, nice, stop, seen), daemon=True).start()
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
        stop.set()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(profile, ignore_errors=True)
