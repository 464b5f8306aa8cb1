"""Load benchmark: N browser sessions at once against one hosted server, compared with the same N one after another.

Run alone:  python bench/load.py [--sessions N] [--budget TOKENS] [--think SECONDS] [--no-prober]
Each session (its own browser context in one Chromium) runs the heavy mix Patching → Search → Corpus → Prompt → Steer
with inputs of its own (names in the prompts, search kind × matrix, the scanned neuron, the Prompt page's text, the
steered prompt and token count), so the jobs are distinct computations; Prompt and Steer compute on opening (no Run
button: the clock starts at the page load), Steer's generation streams its tokens and then draws its dose curve;
meanwhile a prober loads the light pages (Home, Logit lens) and the health check in turn, pausing --think seconds
(2) after each page as a reader does. The serial phase runs the N sessions one after another on a fresh server
(session 0 is the solo run); the load phase runs all N at once on another fresh server (fresh result caches both
times, the converted model shared), and every session's results must equal its serial ones. Both phases do the same
work: what the sessions share (the search's tables per matrix, computed by the first session that needs them) is
shared in both, and the same paced prober runs in both, so the ratio measures the heavy sessions' contention, not
the light traffic's cost (a light visitor's cost shows in the light loads' seconds, which the bench prints for both
phases). Until 3 Dec the prober ran in the load phase only, reloading nonstop: at one session that alone made the
ratio 1.82.

The visitors' browsers run on this machine too (on a real host they are elsewhere): the heavy sessions' Chromium
runs every thread at the lowest CPU priority (nice 19, in the bench's own session so that the scheduler honours it:
see _common.niced_chromium), so their page rendering does not count as the server's contention; the prober, whose
page loads are what is measured, has a Chromium of its own at nice -10 (PROBER_NICE). The phase's CPU time is
accounted per process group (machine, server, workers, browsers, bench), with the time each waited for a CPU.

Measured: errors (error boxes, exceptions, timeouts, results that differ from the serial run's), the 95th
percentile of light page loads during the load phase, heavy_makespan_ratio = (load phase's heavy makespan) /
(the serial phase's) — 1.0 is perfect queueing, more is time lost to contention —, and the peak memory over both
phases of the server and every process it started (its heavy-job workers): their proportional set sizes summed
(shared pages counted once).
Last line: `sessions=N errors=E p95_light_s=X heavy_makespan_ratio=Y peak_rss_mb=Z`
(goal at N=10: E = 0, X <= 2, Y <= 1.2, Z <= 4096).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlencode

import _common  # noqa: F401  (first: the repo on sys.path, the hub offline)
from _common import ROOT, descendants, niced_chromium, settled_texts

from core import story
from core.engine.model import EMBEDDED, cache_root

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
NAMES = ["I", "We", "They", "You", "She", "He", "Tom", "Anna", "Max", "Sam", "Ben", "Eva"]
SEARCHES = [("mutual", "W_U"), ("standout", "W_U"), ("mutual", "W_E"), ("standout", "W_E")]
TIMEOUT_MS = 1_200_000
ERRORS = "[data-testid='stException'], [data-testid='stAlertContentError']"
DONE = "⬇ JSON of this analysis"  # the last element of every heavy page but Steer
STEER_DONE = "⬇ JSON of the curve"  # Steer's last element: its dose curve, drawn after the generation
# What a session's page showed that must equal its serial run's: the metrics, and on Steer where the runs part
SHOWN = "[data-testid='stMetric'], [data-testid='stAlertContentSuccess']"
# The prober's browser stands in for a light visitor's own machine: above the server and its workers, so a light
# load's seconds are the server's latency plus uncontended rendering (a Logit lens load costs its browser 1.6-2.2
# core-seconds, the server 0.3), not the rendering's wait behind the heavy jobs. Negative: needs root (as here).
PROBER_NICE = -10


def watch_browsers(
    stop: threading.Event, ticks: dict[int, tuple[str, int, int, int]], browsers: dict[str, dict[int, int]]
) -> None:
    """Every second until `stop`: the CPU ticks so far of every process of each browser (name → its pids, filled by
    _common.niced_chromium) and of Playwright's driver (counted with the visitors' browser, and set to nice 19)
    into `ticks` (pid → (name, user, system, waited))."""
    while not stop.wait(1.0):
        named = [(name, pid) for name, seen in browsers.items() for pid in list(seen)]
        for proc in Path("/proc").iterdir():
            with contextlib.suppress(OSError, UnicodeDecodeError, IndexError):
                if proc.name.isdigit() and b"playwright/driver" in (proc / "cmdline").read_bytes().split(b"\0")[0]:
                    if os.getpriority(os.PRIO_PROCESS, int(proc.name)) != 19:
                        os.setpriority(os.PRIO_PROCESS, int(proc.name), 19)
                    named.append(("browser", int(proc.name)))
        for name, pid in named:
            used = _ticks(pid)
            if used is not None:
                ticks[pid] = (name, *used)


def _ticks(pid: int) -> tuple[int, int, int] | None:
    """(user, system, waited) CPU clock ticks of a process so far; waited: its live threads' time runnable but
    waiting for a CPU (schedstat), which tells a starved process from a slow one."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        waited_ns = 0
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, IndexError, ValueError):
                waited_ns += int((task / "schedstat").read_text().split()[1])
    except OSError:
        return None
    return int(fields[11]), int(fields[12]), waited_ns * os.sysconf("SC_CLK_TCK") // 1_000_000_000


def machine_ticks() -> dict[str, int]:
    """The whole machine's CPU ticks so far by kind (/proc/stat's first line)."""
    names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
    values = Path("/proc/stat").read_text().splitlines()[0].split()[1:9]
    return dict(zip(names, map(int, values)))


def cpu_report(
    label: str, before: dict[str, int], after: dict[str, int], groups: dict[str, tuple[int, int, int]]
) -> str:
    """Where a phase's CPU time went: the machine's busy and idle core-seconds, and each process group's."""
    hz = os.sysconf("SC_CLK_TCK")
    spent = {k: (after[k] - before[k]) / hz for k in before}
    parts = ", ".join(
        f"{name} {(u + s) / hz:.0f} (sys {s / hz:.0f}, waited for a CPU {w / hz:.0f})"
        for name, (u, s, w) in groups.items()
    )
    return (
        f"{label} CPU core-seconds: user {spent['user']:.0f}, user at nice > 0 {spent['nice']:.0f}, "
        f"system {spent['system']:.0f}, softirq {spent['softirq']:.0f}, idle {spent['idle'] + spent['iowait']:.0f}, "
        f"steal {spent['steal']:.0f}; {parts}"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A hosted-mode `streamlit run app.py` with its own result caches (the converted model is linked in)."""

    def __init__(self) -> None:
        self.cache = Path(tempfile.mkdtemp(prefix="tne-load-"))
        (self.cache / "models").symlink_to(cache_root() / "models")
        self.port = free_port()
        env = {
            **os.environ,
            "TNE_HOSTED": "1",
            "TNE_CACHE_DIR": str(self.cache),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "MALLOC_ARENA_MAX": "2",
        }
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                "app.py",
                "--server.port",
                str(self.port),
                "--server.address",
                "127.0.0.1",
                "--server.headless",
                "true",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.peak_mb = 0.0
        self.peak_parts: dict[str, int] = {}  # process → MB at the peak
        self.cpu_ticks: dict[int, tuple[str, int, int, int]] = {}  # pid → (server/workers, user, system, waited ticks)
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()
        end = time.monotonic() + 120
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.25)
        raise TimeoutError("the server did not start")

    def _sample(self) -> None:
        """Peak memory of the server and every process it started (heavy-job workers, their manager): the sum of
        their proportional set sizes, so shared pages count once (with one process, PSS ≈ RSS).

        Reading a process's PSS (smaps_rollup) walks its page tables under its memory lock: every 0.25 s on two
        2 GB processes it cost the bench ~0.1 core in kernel time (28 s of a 198 s phase). So the
        resident sizes (statm, cheap) are read every 0.25 s and the PSS only near their highest sum so far (within
        64 MB): the shared part (the weights in shared memory, torch's libraries) is about constant, so the PSS sum
        peaks where the RSS sum does. The family is listed again every 2 s."""
        page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
        family: set[int] = set()
        highest_rss = 0
        for sample in itertools.count():
            if self._stop.wait(0.25) or self.process.poll() is not None:
                return
            if sample % 8 == 0:
                family = descendants(self.process.pid)
            rss = {}
            for pid in family:
                ticks = _ticks(pid)
                if ticks is not None:
                    self.cpu_ticks[pid] = ("server" if pid == self.process.pid else "workers", *ticks)
                try:
                    rss[pid] = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page_kb
                except (OSError, IndexError, ValueError):
                    continue
            if sum(rss.values()) < highest_rss - 64 * 1024:
                continue
            highest_rss = max(highest_rss, sum(rss.values()))
            sizes = {}
            for pid in rss:  # PSS: pages shared between them (the weights, torch's libraries) are counted once in all
                try:
                    status = Path(f"/proc/{pid}/smaps_rollup").read_text()
                    sizes[pid] = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Pss:"))
                except (OSError, StopIteration):
                    continue
            total = sum(sizes.values())
            if total / 1024 > self.peak_mb:
                self.peak_mb = total / 1024
                self.peak_parts = {
                    ("server" if pid == self.process.pid else f"child {pid}"): round(kb / 1024)
                    for pid, kb in sizes.items()
                }

    def stop(self) -> None:
        self._stop.set()
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.cache, ignore_errors=True)


def heavy_urls(session: int, budget: int) -> list[tuple[str, str, str | None, str]]:
    """(name, page path with query, button or None where the page computes on opening, its last element) of one
    session's heavy mix."""
    name = NAMES[session % len(NAMES)]
    pair = {
        "clean": story.CLEAN.replace("I climbed", f"{name} climbed"),
        "corrupted": story.CORRUPTED.replace("I climbed", f"{name} climbed"),
        "answer": story.ANSWER,
        "wrong": story.WRONG,
    }
    kind, matrix = SEARCHES[session % len(SEARCHES)]
    layer, neuron = story.KNOWN_NEURONS[EMBEDDED]
    # neurons below the story's (1527 is 9 from SmolLM2's last, 1535): session 9's N1536 fell back to the default
    corpus = {"neurons": f"L{layer}.N{neuron - session}", "target": story.ANSWER, "budget": str(budget)}
    prompt = {"prompt": pair["clean"]}
    # the post's decisive experiment on each session's own prompt, a token count of its own (20..29 new tokens)
    steer = {"prompt": pair["clean"], "neuron": f"L{layer}.N{neuron}", "op": "negate", "new": str(20 + session % 10)}
    return [
        ("patching", f"Patching?{urlencode(pair, quote_via=quote)}", "Run patching", DONE),
        ("search", f"Search?{urlencode({'kind': kind, 'matrix': matrix})}", "Run search", DONE),
        ("corpus", f"Corpus?{urlencode(corpus, quote_via=quote)}", "Scan", DONE),
        ("prompt", f"Prompt?{urlencode(prompt, quote_via=quote)}", None, DONE),
        ("steer", f"Steer?{urlencode(steer, quote_via=quote)}", None, STEER_DONE),
    ]


async def heavy_session(browser, url: str, session: int, budget: int) -> dict:
    """Run one session's mix; returns per-job seconds, the metrics it showed, and its errors."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    out: dict = {"seconds": {}, "metrics": {}, "errors": []}
    try:
        for name, path, button, done in heavy_urls(session, budget):
            started = time.monotonic()
            await page.goto(f"{url}/{path}")
            if button is not None:
                run = page.get_by_role("button", name=button)
                await run.wait_for(timeout=TIMEOUT_MS)
                started = time.monotonic()
                await run.click()
            await page.get_by_role("button", name=done).wait_for(timeout=TIMEOUT_MS)
            out["seconds"][name] = time.monotonic() - started
            print(f"  session {session}: {name} done in {out['seconds'][name]:.1f} s", flush=True)
            out["metrics"][name] = await settled_texts(page, SHOWN)
            out["errors"] += [f"{name}: {t[:200]}" for t in await page.locator(ERRORS).all_inner_texts()]
    except Exception as err:  # noqa: BLE001 - a timeout or a crash is an error of this session, counted
        out["errors"].append(f"{type(err).__name__}: {str(err)[:200]}")
    finally:
        await context.close()
    return out


async def light_prober(browser, url: str, stop: asyncio.Event, think_s: float) -> tuple[list[float], list[str]]:
    """Load Home, Logit lens and the health check in turn until `stop`, pausing `think_s` after each page as a
    reader does; seconds per load. Unpaced, one prober reloading nonstop on the server's own two cores was most of
    the machine's load at one session (its browser 121 of 310 core-seconds)."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    finished = ScriptFinished(page)
    seconds, errors = [], []
    by_page: dict[str, list[float]] = {}
    finished_by_page: dict[str, list[float]] = {}
    socket_by_page: dict[str, list[float]] = {}
    while not stop.is_set():
        for path, ready in (("", "The post's story in"), ("Logit_Lens", "Direct logit attribution")):
            started = time.monotonic()
            finished.at = finished.opened = None
            try:
                await page.goto(f"{url}/{path}")
                await page.get_by_text(ready).first.wait_for(timeout=60_000)
                seconds.append(time.monotonic() - started)
                by_page.setdefault(path or "Home", []).append(seconds[-1])
                await finished.wait(started)
                if finished.at is not None and finished.opened is not None:
                    finished_by_page.setdefault(path or "Home", []).append(finished.at - started)
                    socket_by_page.setdefault(path or "Home", []).append(finished.opened - started)
                errors += [f"{path or 'Home'}: {t[:200]}" for t in await page.locator(ERRORS).all_inner_texts()]
            except Exception as err:  # noqa: BLE001
                errors.append(f"light {path or 'Home'}: {type(err).__name__}: {str(err)[:200]}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), think_s)
        started = time.monotonic()
        await asyncio.to_thread(urllib.request.urlopen, f"{url}/_stcore/health", None, 30)
        seconds.append(time.monotonic() - started)
        by_page.setdefault("health check", []).append(seconds[-1])  # the server's event loop, no browser
    await context.close()
    for name, page_seconds in by_page.items():
        print(f"  light {name}: {light_summary(page_seconds)}", flush=True)
        if name in finished_by_page:
            print(f"    until the browser opened its socket: {light_summary(socket_by_page[name])}", flush=True)
            print(f"    until the run's last message arrived: {light_summary(finished_by_page[name])}", flush=True)
    return seconds, errors


class ScriptFinished:
    """Two marks of a page load. `opened`: the page opened its websocket. Before it come the HTML, the app's
    JavaScript starting up, and the health and host-config requests; for any page but Home, Streamlit's frontend first
    asks at the page's own path (/Logit_Lens/_stcore/health: 404) and retries at the root after its 0.1 s backoff.
    `at`: the server's `script_finished` message arrived. Playwright sees frames where the page's renderer does, so a
    renderer busy drawing delays this mark too; the health-check line is the server's responsiveness alone."""

    def __init__(self, page) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        self.at: float | None = None
        self.opened: float | None = None
        self._message = ForwardMsg
        page.on("websocket", self._socket)

    def _socket(self, socket) -> None:
        self.opened = time.monotonic()
        socket.on("framereceived", self._frame)

    def _frame(self, payload) -> None:
        if isinstance(payload, bytes) and self.at is None:
            with contextlib.suppress(Exception):  # a frame that is not a ForwardMsg is not the one we look for
                if self._message.FromString(payload).WhichOneof("type") == "script_finished":
                    self.at = time.monotonic()

    async def wait(self, since: float, timeout_s: float = 30.0) -> None:
        while self.at is None and time.monotonic() - since < timeout_s:
            await asyncio.sleep(0.02)


def group_ticks(
    before: dict[int, tuple[str, int, int, int]], after: dict[int, tuple[str, int, int, int]]
) -> dict[str, tuple[int, int, int]]:
    """(user, system, waited) ticks of each group between two snapshots of pid → (group, user, system, waited)."""
    groups: dict[str, tuple[int, int, int]] = {}
    for pid, (name, *now) in after.items():
        then = before.get(pid, (name, 0, 0, 0))[1:]
        total = groups.get(name, (0, 0, 0))
        groups[name] = tuple(t + n - b for t, n, b in zip(total, now, then))  # type: ignore[assignment]
    return groups


async def phase(
    server: Server, sessions: int, budget: int, think_s: float | None, serial: bool = False
) -> tuple[list[dict], float, list[float], list]:
    """Run `sessions` heavy mixes (one after another when `serial`, else all at once) while a prober loads light
    pages with `think_s` seconds between them (none when None); returns the sessions' results, their makespan, and
    the light loads' seconds and errors."""
    from playwright.async_api import async_playwright

    url = server.url
    browser_ticks: dict[int, tuple[str, int, int, int]] = {}
    visitors: dict[int, int] = {}
    prober_pids: dict[int, int] = {}
    async with (
        async_playwright() as playwright,
        niced_chromium(playwright, CHROMIUM, ARGS, nice=19, seen=visitors) as browser,
        niced_chromium(playwright, CHROMIUM, ARGS, nice=PROBER_NICE, seen=prober_pids) as prober_browser,
    ):
        await warm_up(browser, url)
        watching = threading.Event()
        browsers = {"browser": visitors, "prober's browser": prober_pids}
        threading.Thread(target=watch_browsers, args=(watching, browser_ticks, browsers), daemon=True).start()
        stop = asyncio.Event()
        prober = asyncio.create_task(light_prober(prober_browser, url, stop, think_s)) if think_s is not None else None
        machine_before, server_before = machine_ticks(), dict(server.cpu_ticks)
        own_before = _ticks(os.getpid())
        started = time.monotonic()
        if serial:
            results = [await heavy_session(browser, url, i, budget) for i in range(sessions)]
        else:
            results = await asyncio.gather(*(heavy_session(browser, url, i, budget) for i in range(sessions)))
        makespan = time.monotonic() - started
        machine_after, server_after = machine_ticks(), dict(server.cpu_ticks)
        own_after = _ticks(os.getpid())
        await asyncio.sleep(1.1)  # one more sample of the browser's ticks
        groups = group_ticks(server_before, server_after) | group_ticks({}, browser_ticks)
        groups["bench"] = tuple(a - b for a, b in zip(own_after, own_before))  # type: ignore[arg-type]
        print(cpu_report("serial" if serial else "load", machine_before, machine_after, groups), flush=True)
        stop.set()
        light, light_errors = await prober if prober else ([], [])
        watching.set()
    return results, makespan, light, light_errors


async def warm_up(browser, url: str) -> None:
    """Load Home once before the phase's clock starts: the model loads, its workers start and the story is computed,
    as on a hosted server after its first visitor. Without it the load phase began with the cold start under eleven
    first visits at once (one of them waited past Playwright's 30 s for its first page, 4 Dec)."""
    context = await browser.new_context()
    page = await context.new_page()
    started = time.monotonic()
    await page.goto(url, timeout=TIMEOUT_MS)
    await page.get_by_text("Conventions.").first.wait_for(timeout=TIMEOUT_MS)  # drawn after the story's six steps
    print(f"warm-up: the server's first Home load took {time.monotonic() - started:.1f} s", flush=True)
    await context.close()


def p95_s(seconds: list[float]) -> float:
    return statistics.quantiles(seconds, n=20)[-1] if len(seconds) >= 2 else float("nan")


def light_summary(seconds: list[float]) -> str:
    median = statistics.median(seconds) if seconds else float("nan")
    return (
        f"{len(seconds)} light loads, median {median:.2f} s, p95 {p95_s(seconds):.2f} s, "
        f"max {max(seconds, default=0):.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--budget", type=int, default=10_000, help="corpus tokens per scan")
    parser.add_argument(
        "--think",
        type=float,
        default=2.0,
        help="seconds the prober pauses after each light page, as a reader does (0: reloads nonstop)",
    )
    parser.add_argument(
        "--no-prober", action="store_true", help="no light page loads in either phase (to isolate their cost)"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `timeout` still stops the server (finally below)
    print(
        f"torch threads per job: {os.environ.get('TNE_JOB_THREADS') or os.environ.get('OMP_NUM_THREADS') or 'auto'}"
        f", heavy slots: {os.environ.get('TNE_HEAVY_JOBS') or 'auto'}, cores: {os.cpu_count()}",
        flush=True,
    )

    if args.think < 0 or args.think != args.think:
        parser.error(f"--think must be 0 or more seconds, not {args.think}")
    think_s = None if args.no_prober else args.think
    server = Server()
    try:
        run = phase(server, args.sessions, args.budget, think_s, serial=True)
        serial, serial_s, serial_light, serial_light_errors = asyncio.run(run)
        serial_peak = server.peak_mb
    finally:
        server.stop()
    solo = serial[0]
    print(
        f"serial: {serial_s:.1f} s for {args.sessions} sessions; session 0 alone "
        f"({', '.join(f'{k} {v:.1f} s' for k, v in solo['seconds'].items())}), peak memory {serial_peak:.0f} MB "
        f"({server.peak_parts})",
        flush=True,
    )

    server = Server()
    try:
        load = phase(server, args.sessions, args.budget, think_s)
        results, makespan, light, light_errors = asyncio.run(load)
        peak = max(server.peak_mb, serial_peak)
        print(f"load phase: peak memory {server.peak_mb:.0f} MB ({server.peak_parts})", flush=True)
    finally:
        server.stop()
    errors = serial_light_errors + light_errors + [e for r in results + serial for e in r["errors"]]
    for i, (alone, together) in enumerate(zip(serial, results)):
        if together["metrics"] != alone["metrics"]:
            errors.append(f"session {i} differs from its serial run: {together['metrics']} vs {alone['metrics']}")
    for i, r in enumerate(results):
        print(f"session {i}: " + ", ".join(f"{k} {v:.1f} s" for k, v in r["seconds"].items()), flush=True)
    for e in errors:
        print(f"error: {e}", flush=True)
    print(f"serial: {light_summary(serial_light)}")
    print(
        f"load: makespan {makespan:.1f} s vs serial {serial_s:.1f} s "
        f"(session 0 alone {sum(solo['seconds'].values()):.1f} s); {light_summary(light)}"
    )
    p95 = p95_s(light)
    print(
        f"sessions={args.sessions} errors={len(errors)} p95_light_s={p95:.2f} "
        f"heavy_makespan_ratio={makespan / serial_s:.2f} peak_rss_mb={peak:.0f}"
    )


if __name__ == "__main__":
    main()
