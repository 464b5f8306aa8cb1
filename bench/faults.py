"""Fault campaign (#28 item 2): a hosted server with heavy-job workers, visitors clicking in Chromium, SIGKILLs at
random (seeded) moments — a worker, the whole server, the server mid cache write, a dashboards build mid part — then
checks that nothing on disk is corrupt and every result equals a clean run bit for bit.

Run alone:  python bench/faults.py [--kills 20] [--visitors 2] [--seed 0]

1. Reference: a fresh hosted server on its own cache folder; the visitors click through their routes once (the
   story, Logit lens, Patching → Run, Search → Run, Corpus → Scan, Steer); a dashboards build runs to its end.
2. Campaign, on a second cache folder: the same visitors loop over their routes while the campaign, K times, waits a
   random moment and then, in a seeded order that starts with one of each:
   - `write`  restarts the server with TNE_FAULT_AT=cache.write@N (core/cache.py): the server — or a worker, which
     inherits it — SIGKILLs itself with its N-th cache entry half written (not yet renamed into place);
   - `part`   restarts the dashboards build (its own process, on the same cache folder) with
     TNE_FAULT_AT=dashboards.part@N: it SIGKILLs itself between two batches of a part, its last checkpoint on disk;
   - `worker` SIGKILLs one heavy-job worker of the server, a busy one when one gets busy within 30 s (the server
     replaces it; the visitor whose job it ran sees "press Run again");
   - `server` SIGKILLs the server and its workers (its process group), then starts it again.
   A visitor whose server went away opens its next route once the new one answers.
3. Reopen: a clean server on the campaign's folder; every route once more (from disk where the campaign finished
   it), and the dashboards build resumes to its end.
Checks: every entry under results/, scans/ and dashboards/ loads (raw npz with pickle off, and the result codec);
every entry of the reference exists in the campaign's folder with the same bytes in every array (the codec's
`computed_at` time aside), and every route shows the same metrics as in the reference; no temp files are left; no
visitor saw a traceback (an exception box or "Something went wrong"); other error boxes must be the worker's
"restarted: press Run again" message (any other counts under other_errors).
Last line: `kills=K restarts=R corrupt_entries=0 mismatches=0 tracebacks=0`.
The visitors' Chromium and the campaign run on this machine beside the server (2 cores: slow, not a load figure).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode

import _common  # noqa: F401  (first: the repo on sys.path, the hub offline)
import numpy as np
from _common import ROOT, settled_texts

from core import cache, story
from core.engine.model import EMBEDDED

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--disable-sync"]
DONE = "⬇ JSON of this analysis"  # every heavy page's last element
EXCEPTIONS = "[data-testid='stException']"
ALERTS = "[data-testid='stAlertContentError']"
ALLOWED = ("press Run again",)  # what a visitor may see when the process computing their result was killed
NAMES = ["I", "We", "They", "You", "Tom", "Anna"]
KINDS = ("write", "worker", "server", "part")
ATTEMPTS = 3  # a clean pass's tries per route
# The dashboards build the campaign kills: small contexts and parts so that it has many parts (a resume matters).
DASH_SPEC = {"dataset": "bundled", "max_tokens": 2400, "ctx": 64, "batch_size": 2, "part_batches": 2}


STORY = "The post's story in"  # the Home page's last section ("... in six steps"; a substring match)


def routes(visitor: int, round_: int = 0) -> list[tuple[str, str, str | None]]:
    """(name, page path with query, button to press or None) of one visitor's click-through in its round `round_`.
    A route is done when its page shows DONE (the Home page: STORY). Each round asks for other results (another
    name in the prompts, another neuron to scan), so the campaign's server keeps writing cache entries to be killed
    in; round 0 is what the clean passes compare."""
    name = NAMES[(visitor + round_) % len(NAMES)]
    pair = {
        "clean": story.CLEAN.replace("I climbed", f"{name} climbed"),
        "corrupted": story.CORRUPTED.replace("I climbed", f"{name} climbed"),
        "answer": story.ANSWER,
        "wrong": story.WRONG,
    }
    layer, neuron = story.KNOWN_NEURONS[EMBEDDED]
    lens = {"prompt": pair["clean"], "answer": story.ANSWER, "wrong": story.WRONG}
    corpus = {"neurons": f"L{layer}.N{neuron + visitor - 7 * round_}", "target": story.ANSWER, "budget": "1000"}
    steer = {"prompt": pair["clean"], "neuron": f"L{layer}.N{neuron}", "op": "negate", "new": "6"}
    search = {"kind": "mutual", "matrix": "W_U", "budget": "500", "pairs": "2"}
    q = {"quote_via": quote}
    return [
        ("story", "", None),
        ("lens", f"Logit_Lens?{urlencode(lens, **q)}", None),
        ("patching", f"Patching?{urlencode(pair, **q)}", "Run patching"),
        ("search", f"Search?{urlencode(search)}", "Run search"),
        ("corpus", f"Corpus?{urlencode(corpus, **q)}", "Scan"),
        ("steer", f"Steer?{urlencode(steer, **q)}", None),
    ]


# ---------------------------------------------------------------- processes


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def new_cache(prefix: str) -> Path:
    """A cache folder of its own, the converted models linked in (never pruned, never checked)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    (folder / "models").symlink_to(cache.cache_root() / "models")
    return folder


def base_env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != cache.FAULT_ENV}
    env.update(
        TNE_CACHE_DIR=str(folder),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        MALLOC_ARENA_MAX="2",
    )
    return env


class Server:
    """A hosted `streamlit run app.py` in its own process group (a kill takes its workers too), two heavy slots
    of one torch thread each (two workers: one can be killed while the other works)."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self, fault: str | None = None) -> None:
        env = base_env(self.folder)
        env.update(TNE_HOSTED="1", TNE_WORKERS="1", TNE_HEAVY_JOBS="2", TNE_JOB_THREADS="1")
        if fault:
            env[cache.FAULT_ENV] = fault
        command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(self.port)]
        command += ["--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"]
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        end = time.monotonic() + 120
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode} at its start")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.25)
        raise TimeoutError("the server did not start")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def workers(self) -> list[int]:
        """Pids of the server's heavy-job workers (its spawned children, not multiprocessing's resource tracker)."""
        if not self.alive():
            return []
        assert self.process is not None
        found = []
        for proc in Path("/proc").iterdir():
            try:
                if not proc.name.isdigit():
                    continue
                parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                line = (proc / "cmdline").read_bytes().decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
            if parent == self.process.pid and "spawn_main" in line and "resource_tracker" not in line:
                found.append(int(proc.name))
        return sorted(found)

    def busy_worker(self, within: float = 30.0) -> int | None:
        """A worker that is computing (its CPU time grew over half a second), waiting up to `within` seconds for
        one; None when none got busy. Killing a busy worker is what a visitor notices ("press Run again")."""

        def cpu(pid: int) -> int:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                return int(fields[11]) + int(fields[12])  # utime + stime
            except (OSError, IndexError, ValueError):
                return -1

        end = time.monotonic() + within
        while time.monotonic() < end:
            before = {pid: cpu(pid) for pid in self.workers()}
            time.sleep(0.5)
            for pid, ticks in before.items():
                if ticks >= 0 and cpu(pid) > ticks + 10:  # > 0.1 s of CPU in 0.5 s: working, not idling
                    return pid
        return None

    def kill(self) -> None:
        """SIGKILL the server and every process of its group (workers, resource tracker)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self._reap()

    def stop(self) -> None:
        """A clean stop (SIGTERM, then its group), as a host restarting a healthy server."""
        if self.process is None:
            return
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def _reap(self) -> None:
        """Wait until no process of the killed group is left (a worker still writing would race the checks)."""
        assert self.process is not None
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            time.sleep(0.1)


class Builder:
    """The dashboards build (DASH_SPEC) as its own process on a cache folder: `python bench/faults.py --build`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.process: subprocess.Popen | None = None
        self.done = False

    def start(self, fault: str | None = None) -> None:
        env = base_env(self.folder)
        env.pop("TNE_HOSTED", None)
        env.update(OMP_NUM_THREADS="1")
        if fault:
            env[cache.FAULT_ENV] = fault
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--build"], cwd=ROOT, env=env, stdout=subprocess.PIPE
        )

    def poll(self) -> int | None:
        """None while running; its exit status once ended (0: built; -9: killed)."""
        if self.process is None:
            return None
        code = self.process.poll()
        if code == 0:
            self.done = True
        return code

    def finish(self) -> None:
        """Run (or resume) the build to its end, unarmed."""
        if self.process is not None and self.process.poll() is None:
            self.process.wait()
        if not self.done:
            self.start()
            assert self.process is not None
            if self.process.wait() != 0:
                raise RuntimeError("the dashboards build failed")
            self.done = True


def build_dashboards() -> None:
    """The builder process's body (--build): build or resume DASH_SPEC on the embedded model."""
    from core.corpus import dashboards
    from core.engine.model import load_model

    model = load_model(EMBEDDED, device="cpu")
    dash = dashboards.build(model, dashboards.DashboardSpec(**DASH_SPEC))  # type: ignore[arg-type]
    print(json.dumps({"positions": dash.positions}))


# ---------------------------------------------------------------- visitors


@dataclass
class World:
    """What the campaign and the visitors share: the server's generation (bumped whenever it goes down), whether it
    is up, and what the visitors saw."""

    pages: tuple[str, ...] | None = None  # the routes visited (names); None: all
    generation: int = 0
    up: asyncio.Event = field(default_factory=asyncio.Event)
    stop: bool = False
    metrics: dict[tuple[int, str], list[str]] = field(default_factory=dict)
    tracebacks: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)
    other_errors: list[str] = field(default_factory=list)
    visits: int = 0
    completed: int = 0


async def visit(page, url: str, world: World, visitor: int, route: tuple[str, str, str | None]) -> bool:
    """visit_once, its outcome printed."""
    began = time.monotonic()
    done = await visit_once(page, url, world, visitor, route)
    print(
        f"    visitor {visitor} {route[0]}: {'done' if done else 'ended'} after {time.monotonic() - began:.1f} s",
        flush=True,
    )
    return done


async def visit_once(page, url: str, world: World, visitor: int, route: tuple[str, str, str | None]) -> bool:
    """Open one route, press its button, wait for its last element; True when it completed. Ends early (False) when
    the server went away meanwhile or the page showed an error. Every error box seen is recorded in `world`."""
    name, path, button = route
    generation = world.generation
    world.visits += 1
    try:
        await page.goto(f"{url}/{path}", timeout=60_000)
    except Exception:  # noqa: BLE001 - the server died under the navigation
        return False
    pressed, end = False, time.monotonic() + 600
    while time.monotonic() < end:
        if world.generation != generation or world.stop:
            return False
        try:
            shown = await page.locator(ALERTS).all_inner_texts()
            crashed = await page.locator(EXCEPTIONS).count()
            if crashed or any(t.startswith("Something went wrong") for t in shown):
                world.tracebacks += [f"{name}: {t[:300]}" for t in shown] or [f"{name}: an exception box"]
                return False
            if shown:
                for text in shown:
                    (world.allowed if any(a in text for a in ALLOWED) else world.other_errors).append(
                        f"visitor {visitor} {name}: {text[:300]}"
                    )
                return False
            finished = page.get_by_text(STORY) if name == "story" else page.get_by_role("button", name=DONE)
            if await finished.count() and await finished.first.is_visible():
                metrics = await settled_texts(page, "[data-testid='stMetric']")
                if world.generation == generation:
                    world.metrics[(visitor, name)] = metrics
                    world.completed += 1
                    return True
                return False
            if button is not None and not pressed:
                run = page.get_by_role("button", name=button)
                if await run.count() and await run.first.is_enabled():
                    await run.first.click(timeout=5_000)
                    pressed = True
        except Exception:  # noqa: BLE001 - the page went away under a query (server killed): the generation says
            if world.generation == generation and not world.stop:
                await asyncio.sleep(0.5)
            continue
        await asyncio.sleep(0.5)
    world.other_errors.append(f"visitor {visitor} {name}: not done within 600 s")
    return False


async def visitor_loop(browser, url: str, world: World, visitor: int, rounds: int | None) -> None:
    """Click through the visitor's routes (rounds times, or until world.stop), waiting out server restarts."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    done_rounds = 0
    try:
        while not world.stop and (rounds is None or done_rounds < rounds):
            for route in [r for r in routes(visitor, done_rounds) if world.pages is None or r[0] in world.pages]:
                for _ in range(1 if rounds is None else ATTEMPTS):  # campaign: move on; clean pass: retry
                    await world.up.wait()
                    if world.stop or await visit(page, url, world, visitor, route):
                        break
                else:
                    if rounds is not None:
                        world.other_errors.append(f"visitor {visitor} {route[0]}: not done in {ATTEMPTS} attempts")
                if world.stop:
                    break
            done_rounds += 1
    finally:
        await context.close()


async def clean_pass(server: Server, visitors: int, builder: Builder | None, pages: tuple | None) -> World:
    """Every visitor's routes once on a server nobody kills (and the dashboards build to its end)."""
    from playwright.async_api import async_playwright

    world = World(pages)
    world.up.set()
    if builder is not None:
        builder.start()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        await asyncio.gather(*(visitor_loop(browser, server.url, world, v, 1) for v in range(visitors)))
        await browser.close()
    if builder is not None:
        await asyncio.to_thread(builder.finish)
    return world


def schedule(kills: int, rng: random.Random) -> list[str]:
    """One of each kind first (in a seeded order), then kinds drawn at random."""
    first = list(KINDS)
    rng.shuffle(first)
    return (first + [rng.choice(KINDS) for _ in range(max(0, kills - len(KINDS)))])[:kills]


@dataclass
class Tally:
    kills: int = 0
    restarts: int = 0
    log: list[str] = field(default_factory=list)


async def campaign(
    server: Server, builder: Builder, visitors: int, kills: int, seed: int, wait_s: tuple, pages: tuple | None
) -> tuple:
    from playwright.async_api import async_playwright

    rng = random.Random(seed)
    world, tally = World(pages), Tally()
    started = time.monotonic()

    def note(text: str) -> None:
        line = f"  [{time.monotonic() - started:6.1f} s] {text}"
        tally.log.append(line)
        print(line, flush=True)

    async def restart(fault: str | None = None) -> None:
        world.up.clear()
        world.generation += 1
        await asyncio.to_thread(server.stop if server.alive() else server.kill)
        await asyncio.to_thread(server.start, fault)
        tally.restarts += 1
        world.up.set()

    async def died(timeout: float) -> str | None:
        """Wait until the server or one of its workers is gone; which one, or None on timeout."""
        seen: set[int] = set()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not server.alive():
                return "server"
            now = set(await asyncio.to_thread(server.workers))  # a dead worker (a zombie) has no command line
            if seen - now:
                return "worker"
            seen |= now
            await asyncio.sleep(0.5)
        return None

    await asyncio.to_thread(server.start)
    world.up.set()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        tasks = [asyncio.create_task(visitor_loop(browser, server.url, world, v, None)) for v in range(visitors)]
        for i, kind in enumerate(schedule(kills, rng)):
            delay = rng.uniform(*wait_s)
            if kind == "write":
                nth = rng.randint(1, 4)
                await restart(f"cache.write@{nth}")
                who = await died(120 + delay)
                if who == "server":
                    world.up.clear()
                    world.generation += 1
                    await asyncio.to_thread(server.kill)  # reap its group; the fault was the kill
                    note(f"kill {i + 1}: write — the server killed itself at its cache write {nth}")
                elif who == "worker":
                    note(f"kill {i + 1}: write — a worker killed itself at its cache write {nth}")
                else:
                    world.up.clear()
                    world.generation += 1
                    await asyncio.to_thread(server.kill)
                    note(f"kill {i + 1}: write — no cache write {nth} within {120 + delay:.0f} s; SIGKILLed the server")
                temps = list(server.folder.rglob(f"{cache.TEMP_PREFIX}*"))
                note(f"  temp files left by the killed writer: {len(temps)}")
                await restart()  # unarmed again
            elif kind == "part":
                if builder.poll() is None and builder.process is not None:
                    await asyncio.to_thread(builder.process.wait)
                if builder.done:
                    builder.done = False
                    shutil.rmtree(server.folder / "dashboards", ignore_errors=True)  # build it again, to kill it
                nth = rng.randint(1, 4)
                builder.start(f"dashboards.part@{nth}")
                code = await asyncio.to_thread(builder.process.wait)  # type: ignore[union-attr]
                if code == -signal.SIGKILL:
                    note(f"kill {i + 1}: part — the dashboards build killed itself at batch {nth} of this run")
                else:
                    note(f"kill {i + 1}: part — the build ended ({code}) before batch {nth}; no kill")
                    builder.poll()
                    continue
            else:
                await asyncio.sleep(delay)
                if kind == "worker":
                    busy = await asyncio.to_thread(server.busy_worker)
                    pids = [busy] if busy is not None else await asyncio.to_thread(server.workers)
                    if not pids:
                        note(f"kill {i + 1}: worker — none running; the server instead")
                        kind = "server"
                    else:
                        pid = pids[0] if busy is not None else rng.choice(pids)
                        os.kill(pid, signal.SIGKILL)
                        state = "busy" if busy is not None else "idle (none got busy within 30 s)"
                        note(f"kill {i + 1}: worker {pid}, {state}, after {delay:.1f} s")
                if kind == "server":
                    world.up.clear()
                    world.generation += 1
                    await asyncio.to_thread(server.kill)
                    note(f"kill {i + 1}: server after {delay:.1f} s")
                    await restart()
            tally.kills += 1
        world.stop = True
        world.generation += 1
        await asyncio.gather(*tasks)
        await browser.close()
    await asyncio.to_thread(server.stop)
    return world, tally


# ---------------------------------------------------------------- checks


def entries(folder: Path, every: bool = False) -> dict[str, Path]:
    """Every cache entry (not the converted models) by its path relative to the folder; every=True: temps too."""
    found = {}
    for sub in cache.SWEPT_FOLDERS:
        for path in (folder / sub).rglob("*"):
            if path.is_file() and (every or not path.name.startswith(cache.TEMP_PREFIX)):
                found[str(path.relative_to(folder))] = path
    return found


def read_entry(path: Path) -> dict[str, bytes] | None:
    """Every array of an entry as (dtype, shape, bytes), the codec's meta without its time; None when it does not
    load (raw npz with pickle off; a result entry must also decode)."""
    try:
        if path.suffix == ".json":
            return {"json": path.read_bytes()}
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        if cache._META in arrays:
            meta = json.loads(arrays[cache._META].tobytes().decode())
            cache._decode(meta["value"], {k: v for k, v in arrays.items() if k != cache._META})
            meta.pop("computed_at")
            arrays[cache._META] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
        return {k: f"{a.dtype}{a.shape}".encode() + a.tobytes() for k, a in arrays.items()}
    except Exception:  # noqa: BLE001 - whatever does not load counts as corrupt
        return None


@dataclass
class Report:
    kills: int
    restarts: int
    corrupt_entries: int
    mismatches: int
    tracebacks: int
    other_errors: int
    temp_files: int
    entries: int
    details: list[str]

    def line(self) -> str:
        return (
            f"kills={self.kills} restarts={self.restarts} corrupt_entries={self.corrupt_entries} "
            f"mismatches={self.mismatches} tracebacks={self.tracebacks}"
        )


def check(reference: Path, folder: Path, clean: World, reopened: World, worlds: list[World], tally: Tally) -> Report:
    details: list[str] = []
    temps = [p for p in entries(folder, every=True).values() if p.name.startswith(cache.TEMP_PREFIX)]
    details += [f"temp file left: {p.relative_to(folder)}" for p in temps]
    theirs, ours = entries(reference), entries(folder)
    corrupt = 0
    loaded: dict[str, dict[str, bytes]] = {}
    for name, path in ours.items():
        got = read_entry(path)
        if got is None:
            corrupt += 1
            details.append(f"corrupt entry: {name}")
        else:
            loaded[name] = got
    mismatches = 0
    for name, path in theirs.items():
        want = read_entry(path)
        if name not in ours:
            mismatches += 1
            details.append(f"missing after the campaign: {name}")
        elif name in loaded and loaded[name] != want:
            mismatches += 1
            details.append(f"differs from the clean run: {name}")
    details += [f"only in the campaign's folder: {n}" for n in sorted(set(ours) - set(theirs))]
    for key, metrics in clean.metrics.items():
        if reopened.metrics.get(key) != metrics:
            mismatches += 1
            details.append(f"route {key} shows {reopened.metrics.get(key)} reopened, {metrics} in the clean run")
    tracebacks = [t for w in worlds for t in w.tracebacks]
    others = [t for w in worlds for t in w.other_errors]
    details += [f"traceback: {t}" for t in tracebacks] + [f"error box: {t}" for t in others]
    return Report(
        tally.kills, tally.restarts, corrupt, mismatches, len(tracebacks), len(others), len(temps), len(ours), details
    )


def run(
    kills: int,
    visitors: int,
    seed: int,
    wait_s: tuple = (3.0, 15.0),
    keep: bool = False,
    pages: tuple[str, ...] | None = None,
) -> Report:
    """The whole campaign: reference, kills, reopen, checks (see the module's docstring); `pages` names the routes
    visited (None: all)."""
    reference, folder = new_cache("tne-faults-ref-"), new_cache("tne-faults-")
    if keep:
        print(f"cache folders: reference {reference}, campaign {folder}")
    try:
        began = time.monotonic()
        server = Server(reference, free_port())
        server.start()
        try:
            clean = asyncio.run(clean_pass(server, visitors, Builder(reference), pages))
        finally:
            server.stop()
        print(f"reference: {clean.completed} routes in {time.monotonic() - began:.0f} s, errors {clean.other_errors}")
        began = time.monotonic()
        server, builder = Server(folder, free_port()), Builder(folder)
        world, tally = asyncio.run(campaign(server, builder, visitors, kills, seed, wait_s, pages))
        print(
            f"campaign: {tally.kills} kills, {tally.restarts} restarts, {world.visits} visits "
            f"({world.completed} completed, {len(world.allowed)} 'press Run again') in {time.monotonic() - began:.0f} s"
        )
        began = time.monotonic()
        server.start()
        try:
            reopened = asyncio.run(clean_pass(server, visitors, None, pages))
            builder.finish()
        finally:
            server.stop()
        print(f"reopen: {reopened.completed} routes in {time.monotonic() - began:.0f} s")
        report = check(reference, folder, clean, reopened, [clean, world, reopened], tally)
        return report
    finally:
        if not keep:
            shutil.rmtree(reference, ignore_errors=True)
            shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--visitors", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep both cache folders (printed) for a look")
    parser.add_argument("--pages", default="", help="comma-separated route names (default: all)")
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)  # the builder process
    args = parser.parse_args()
    if args.build:
        build_dashboards()
        return
    logging.getLogger("streamlit").setLevel(logging.ERROR)  # "No runtime found" per cached function read back
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `timeout` still stops the servers (finally)
    print(f"cores: {os.cpu_count()}; load average {os.getloadavg()[0]:.2f}; seed {args.seed}", flush=True)
    pages = tuple(p for p in args.pages.split(",") if p) or None
    report = run(args.kills, args.visitors, args.seed, keep=args.keep, pages=pages)
    for line in report.details:
        print(line)
    print(f"entries={report.entries} temp_files={report.temp_files} other_errors={report.other_errors}", flush=True)
    print(report.line())


if __name__ == "__main__":
    main()
