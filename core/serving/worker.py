"""Heavy jobs in worker processes: their own interpreter and GIL, beside the serving process, sharing its weights.

Why: in one serving process a heavy job's Python (thousands of small torch calls per forward) shares the GIL with
every visitor's page run. Under load (bench/load.py, 4 sessions and a prober loading light pages) the four Patching
jobs finished at 42–95 s in one process and at 14–41 s with a worker, although the admission gate ran them one at
a time either way.

How: one worker per admission slot (core/serving/admission.py bounds the jobs running at once to the slots). A job is a
module-level function of core.serving.jobs, `fn(model, *args, progress=…)`; its arguments and result are pickled over a
pipe. The server's model reaches each worker at its start as shared memory (the weights exist once in RAM); a
worker asked for another model loads it itself and checks its fingerprint. Progress streams back on the pipe; when
the visitor stops (Streamlit stops the page's run), the worker's cancel event is set and its next progress call
raises Cancelled, freeing it within one batch. A worker that dies (out of memory, killed) is replaced and the page
says so. A host whose light traffic crowds out the heavy jobs can lower the serving process's CPU priority
(TNE_SERVER_NICE, yield_to_workers): queued heavy work then goes first, light pages run in the gaps.

On by default in hosted mode (TNE_WORKERS=0 turns it off, TNE_WORKERS=1 turns it on anywhere); otherwise jobs run
in the calling process.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

import torch

from core.engine.model import Model
from core.errors import UserError
from core.hosting import limits
from core.progress import Progress
from core.serving import admission

T = TypeVar("T")
POLL_S = 0.25
# The serving process's nice value above the workers' (TNE_SERVER_NICE; 0 = equal, the default). It was 5 while each
# page run ended in Streamlit's full gc.collect (~0.2 s of GIL); with that off (.streamlit/config.toml) a light load
# costs the server ~0.08 core-s, and at 10 sessions equal priority measured heavy ratio 0.99, light p95 3.07 s, while
# workers below the server (the other way round) gave 1.03 and 3.10: the priorities no longer decide either figure.
SERVER_NICE = 0
BASE_NICE = os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else 0  # at import, before yielding


class Cancelled(Exception):
    """Raised inside the worker when the visitor stopped the job."""


def enabled() -> bool:
    raw = os.environ.get("TNE_WORKERS", "").strip().lower()
    if raw in ("0", "false", "no", "off"):
        return False
    return raw in ("1", "true", "yes", "on") or limits().hosted


# ---------------------------------------------------------------- inside the worker

_models: dict[tuple[str, str, str, str], Model] = {}


def spec(model: Model) -> tuple[str, str, str, str]:
    """What a worker needs to load the same model: (name, device, processing, dtype)."""
    return model.name, str(model.device), str(model.processing.get("name")), model.dtype


def _model(key: tuple[str, str, str, str], fingerprint: str) -> Model:
    from core.engine.model import load_model

    model = _models.get(key)
    if model is None:
        name, device, processing, dtype = key
        _models.clear()  # one model per worker: a visitor switching models replaces it (memory stays bounded)
        model = _models[key] = load_model(name, device=device, processing=processing, dtype=dtype)  # type: ignore[arg-type]
    if model.fingerprint != fingerprint:
        raise UserError(f"the worker loaded {key[0]} with different weights than the server; restart the server")
    return model


def _serve(conn: Connection, cancel: Any, threads: int, model: Model | None) -> None:
    """A worker's life: jobs come in on `conn`; progress, then ("done", result) or ("error", exception) go out."""
    torch.set_num_threads(threads)
    if model is not None:
        _models[spec(model)] = model  # its weights arrived as shared memory
    _give_back_memory()  # what unpickling the model left behind (1.63 → 1.10 GB at rest under `streamlit run`)
    while True:
        try:
            fn, key, fingerprint, args, kwargs, streams = conn.recv()
        except (EOFError, OSError):  # the server went away
            return

        def progress(done: int, total: int) -> None:
            if cancel.is_set():
                raise Cancelled()
            conn.send(("progress", (done, total)))

        def emit(event: Any) -> None:
            if cancel.is_set():
                raise Cancelled()
            conn.send(("event", event))

        if streams:
            kwargs = {**kwargs, "on_event": emit}

        try:
            conn.send(("done", fn(_model(key, fingerprint), *args, progress=progress, **kwargs)))
        except Exception as err:  # noqa: BLE001 - every failure goes back to the page that asked
            try:
                conn.send(("error", err))
            except Exception:  # noqa: BLE001 - an exception that does not pickle: its text does
                conn.send(("error", RuntimeError(f"{type(err).__name__}: {err}")))
        _give_back_memory()


def _give_back_memory() -> None:
    """Return the job's freed heap to the OS (glibc keeps it otherwise, and the next job's peak stacks on it)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to give back this way
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# ---------------------------------------------------------------- in the serving process


class Worker:
    """One worker process (spawned: a forked torch with live OpenMP threads can hang), its pipe and cancel flag.

    `model` (the server's) is handed over at the start with its tensors in shared memory (torch's multiprocessing
    pickler sends a handle, not the bytes): the weights exist once in RAM however many processes read them, and the
    worker starts without loading anything. Other models it is asked for it loads itself.
    """

    def __init__(self, threads: int, model: Model | None) -> None:
        import torch.multiprocessing  # registers the shared-memory pickling of tensors

        context = torch.multiprocessing.get_context("spawn")
        if model is not None:
            share(model)
            model = dataclasses.replace(model, bridge=None)  # a kept TransformerLens bridge does not pickle
        self.conn, child = context.Pipe()
        self.cancel = context.Event()
        self.process = context.Process(target=_serve, args=(child, self.cancel, threads, model), daemon=True)
        self.process.start()
        child.close()
        self.lock = threading.Lock()  # held by the job using this worker, until its last message is read

    def alive(self) -> bool:
        return self.process.is_alive()

    def close(self) -> None:
        self.conn.close()
        self.process.terminate()


def share(model: Model) -> None:
    """Move the model's weights into shared memory, in place (the server keeps using them as before)."""
    for value in vars(model.weights).values():
        if isinstance(value, torch.Tensor):
            value.share_memory_()


_workers: list[Worker] = []
_lock = threading.Lock()


def workers(model: Model | None = None) -> list[Worker]:
    """One worker per admission slot, started on first use (with `model` shared into them when given); a worker
    that died (out of memory, killed) is replaced."""
    with _lock:
        if not _workers:
            threads = admission.threads_per_job()
            _workers.extend(Worker(threads, model) for _ in range(admission.heavy_slots()))
        for i, worker in enumerate(_workers):
            if not worker.alive() and not worker.lock.locked():
                worker.close()
                _workers[i] = Worker(admission.threads_per_job(), model)
        return list(_workers)


def _reset() -> None:
    """Stop every worker (tests; a server shutting down)."""
    with _lock:
        for worker in _workers:
            worker.close()
        _workers.clear()


def warm_up(model: Model) -> None:
    """Start the workers now with `model` shared into them (hosted mode, at the model's load), not on a visitor's
    first job; then let them outrank the serving process if TNE_SERVER_NICE says so (yield_to_workers)."""
    if enabled():
        workers(model)
        yield_to_workers()


def server_nice() -> int:
    raw = os.environ.get("TNE_SERVER_NICE", "").strip()
    if raw and not raw.isdigit():
        raise UserError(f"setting TNE_SERVER_NICE={raw!r} must be a whole number from 0 to 19")
    return min(int(raw), 19) if raw else SERVER_NICE


def yield_to_workers() -> None:
    """Lower the serving process's CPU priority by server_nice() (every thread; later threads inherit it).

    A visitor loading pages nonstop (bench/load.py's prober, before the post-run GC was off) kept one of two cores
    busy in the server and doubled every heavy job's time; at nice 5 a page run still gets ~25% of a core the
    workers saturate (CFS weights 335 vs 1024), and the queued heavy work goes first. Raising a nice value needs
    no privilege.
    """
    step = server_nice()
    if step == 0 or not hasattr(os, "setpriority"):
        return
    tasks = Path(f"/proc/{os.getpid()}/task")
    tids = [int(t.name) for t in tasks.iterdir()] if tasks.exists() else [0]
    for tid in tids:
        try:
            current = os.getpriority(os.PRIO_PROCESS, tid)
            if current < BASE_NICE + step:
                os.setpriority(os.PRIO_PROCESS, tid, BASE_NICE + step)
        except OSError:  # a thread that ended meanwhile
            continue


def _take(pool: list[Worker]) -> Worker:
    """A free worker (the admission gate keeps one free per running job; one still finishing a stopped job is
    waited for)."""
    for worker in pool:
        if worker.lock.acquire(blocking=False):
            return worker
    pool[0].lock.acquire()
    return pool[0]


def run(
    fn: Callable[..., T],
    model: Model,
    *args: Any,
    progress: Progress | None = None,
    on_event: Callable[[Any], None] | None = None,
    **kwargs: Any,
) -> T:
    """fn(model, *args, progress=progress, **kwargs), in a worker process where enabled, else here.

    The caller holds an admission slot. Progress is relayed as it comes; any exception of the job is raised here
    (a UserError keeps its message). If the caller is interrupted (Streamlit stopping the run raises inside the
    progress relay), the job is cancelled in the worker, which is free again after its current batch.
    on_event: a job that streams (a generation's tokens) gets `on_event=` too; every (picklable) event it emits is
    handed to this callback here, in order, as it comes.
    """
    if not enabled():
        streaming = {} if on_event is None else {"on_event": on_event}
        return fn(model, *args, progress=progress, **streaming, **kwargs)
    worker = _take(workers(model))
    handed_back = False
    try:
        worker.cancel.clear()
        worker.conn.send((fn, spec(model), model.fingerprint, args, kwargs, on_event is not None))
        while True:
            if not worker.conn.poll(POLL_S):
                if not worker.alive():
                    raise EOFError
                continue
            kind, value = worker.conn.recv()
            if kind == "progress":
                if progress is not None:
                    progress(*value)
                continue
            if kind == "event":
                if on_event is not None:
                    on_event(value)
                continue
            handed_back = True
            if kind == "error":
                raise value
            return value
    except (EOFError, OSError, BrokenPipeError) as err:
        handed_back = True
        raise UserError(
            "the worker process running this job stopped (out of memory?); it is restarted: press Run again"
        ) from err
    finally:
        if handed_back:
            worker.lock.release()
        else:  # stopped by the visitor: cancel, and read the job's last message before the worker is reused
            worker.cancel.set()
            threading.Thread(target=_drain, args=(worker,), daemon=True).start()


def _drain(worker: Worker) -> None:
    try:
        while True:
            if not worker.conn.poll(POLL_S):
                if not worker.alive():
                    return
                continue
            if worker.conn.recv()[0] not in ("progress", "event"):
                return
    except (EOFError, OSError):
        return
    finally:
        worker.lock.release()
