"""Heavy jobs in worker processes: their own interpreter, GIL and copy of the model, beside the serving process.

Why: in one serving process a heavy job's Python (thousands of small torch calls per forward) shares the GIL with
every visitor's page run. Under load (bench/load.py, 4 sessions and a prober loading light pages) a Patching job
took 23–25 s against 10 s alone although the admission gate ran the jobs one at a time. A worker process keeps only
the matmuls' two cores in common with the server.

How: one worker per admission slot (core/admission.py bounds the jobs running at once to the slots, so a job never
waits for a worker). A job is a module-level function of core.jobs, `fn(model, *args, progress=…)`; its arguments
and result are pickled. The worker loads the model itself from the same (name, device, processing) and checks the
fingerprint. Progress streams back through a queue; when the visitor stops (Streamlit stops the page's run), the
job's cancel event is set and the worker's next progress call raises Cancelled, freeing it within one batch.

On by default in hosted mode (TNE_WORKERS=0 turns it off, TNE_WORKERS=1 turns it on anywhere); otherwise jobs run
in the calling process, as do jobs whose model the worker cannot load by name (a model object built in a test).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from core import admission
from core.errors import UserError
from core.hosting import limits
from core.model import Model
from core.progress import Progress

T = TypeVar("T")
POLL_S = 0.25


class Cancelled(Exception):
    """Raised inside the worker when the visitor stopped the job."""


def enabled() -> bool:
    raw = os.environ.get("TNE_WORKERS", "").strip().lower()
    if raw in ("0", "false", "no", "off"):
        return False
    return raw in ("1", "true", "yes", "on") or limits().hosted


# ---------------------------------------------------------------- inside the worker

_models: dict[tuple[str, str, str], Model] = {}


def _initialise(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _model(spec: tuple[str, str, str], fingerprint: str) -> Model:
    from core.model import load_model

    model = _models.get(spec)
    if model is None:
        name, device, processing = spec
        _models.clear()  # one model per worker: a visitor switching models replaces it (memory stays bounded)
        model = _models[spec] = load_model(name, device=device, processing=processing)  # type: ignore[arg-type]
    if model.fingerprint != fingerprint:
        raise UserError(f"the worker loaded {spec[0]} with different weights than the server; restart the server")
    return model


def _call(fn: Callable[..., Any], spec: tuple, fingerprint: str, args: tuple, kwargs: dict, events: Any, cancel: Any):
    """Run one job in the worker; progress goes to `events`, `cancel` stops it at the next progress call."""
    model = _model(spec, fingerprint)

    def progress(done: int, total: int) -> None:
        if cancel.is_set():
            raise Cancelled()
        events.put((done, total))

    return fn(model, *args, progress=progress, **kwargs)


# ---------------------------------------------------------------- in the serving process


class Workers:
    """A pool of worker processes (spawned: a forked torch with live OpenMP threads can hang) and a manager whose
    queues and events carry progress and cancel between processes."""

    def __init__(self, slots: int, threads: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.slots, self.threads = slots, threads
        self.manager = context.Manager()
        self.pool = ProcessPoolExecutor(
            max_workers=slots, mp_context=context, initializer=_initialise, initargs=(threads,)
        )

    def submit(self, fn: Callable[..., T], model: Model, args: tuple, kwargs: dict) -> tuple[Future, Any, Any]:
        events, cancel = self.manager.Queue(), self.manager.Event()
        return self.pool.submit(_call, fn, spec(model), model.fingerprint, args, kwargs, events, cancel), events, cancel

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.manager.shutdown()


_workers: Workers | None = None
_lock = threading.Lock()


def workers() -> Workers:
    global _workers
    with _lock:
        if _workers is None:
            _workers = Workers(admission.heavy_slots(), admission.threads_per_job())
        return _workers


def _reset() -> None:
    """Drop a broken pool (a worker died: out of memory, killed); the next job starts a fresh one."""
    global _workers
    with _lock:
        broken, _workers = _workers, None
    if broken is not None:
        try:
            broken.close()
        except Exception:  # noqa: BLE001 - a dead pool may fail to shut down; it is dropped either way
            pass


def spec(model: Model) -> tuple[str, str, str]:
    """What a worker needs to load the same model: (name, device, processing)."""
    return model.name, str(model.device), str(model.processing.get("name"))


def warm_up(model: Model) -> None:
    """Start the workers and load `model` in them now (hosted mode, at server start), not on a visitor's first job."""
    if enabled():
        pool = workers()
        for _ in range(pool.slots):
            pool.pool.submit(_model, spec(model), model.fingerprint)


def run(fn: Callable[..., T], model: Model, *args: Any, progress: Progress | None = None, **kwargs: Any) -> T:
    """fn(model, *args, progress=progress, **kwargs), in a worker process where enabled, else here.

    The caller holds an admission slot. Progress is relayed every POLL_S; any exception of the job is raised here
    (a UserError keeps its message). If the caller is interrupted (Streamlit stopping the run raises inside the
    progress relay), the job is cancelled in the worker.
    """
    if not enabled():
        return fn(model, *args, progress=progress, **kwargs)
    try:
        future, events, cancel = workers().submit(fn, model, args, kwargs)
    except (BrokenProcessPool, RuntimeError):
        _reset()
        future, events, cancel = workers().submit(fn, model, args, kwargs)
    finished = False
    try:
        while True:
            try:
                result = future.result(timeout=POLL_S)
                finished = True
                _relay(events, progress)
                return result
            except TimeoutError:
                _relay(events, progress)
            except BrokenProcessPool as err:
                finished = True
                _reset()
                raise UserError(
                    "the worker process running this job stopped (out of memory?); it was restarted: press Run again"
                ) from err
    finally:
        if not finished:
            cancel.set()


def _relay(events: Any, progress: Progress | None) -> None:
    """Pass the worker's latest progress on (only the newest event matters)."""
    latest = None
    while True:
        try:
            latest = events.get_nowait()
        except (queue.Empty, EOFError, BrokenPipeError):
            break
    if latest is not None and progress is not None:
        progress(*latest)
