"""Admission control for heavy jobs (patching, search, corpus scans, reproduction): a process-wide gate.

At most `slots` heavy jobs run at once, first come first served, and one session never has two running: its next
job waits until the first ends. A job past the gate uses `threads_per_job()` torch threads, so slots × threads
matches the CPU cores instead of every visitor's job fighting for them (two jobs each using both cores of a
2-core machine ran ~25× slower than one after the other). Light work (logit lens, congruence, one prompt's
activations) never enters the gate. Pure Python, no Streamlit: ui/admission.py draws the queue.

Settings: TNE_HEAVY_JOBS (slots; default cores // threads per job, at least 1), TNE_JOB_THREADS (torch threads per
job; default OMP_NUM_THREADS when set, else min(cores, 4)).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from dataclasses import dataclass, field

from core.errors import UserError


def cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one, as in a container)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _setting(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"setting {name}={raw!r} must be a whole number of at least 1")
    return int(raw)


def threads_per_job() -> int:
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    return _setting("TNE_JOB_THREADS", int(omp) if omp.isdigit() and int(omp) > 0 else min(cores(), 4))


def heavy_slots() -> int:
    return _setting("TNE_HEAVY_JOBS", max(1, cores() // threads_per_job()))


_ids = itertools.count(1)


@dataclass(eq=False)
class Ticket:
    """One job's place: queued until admitted, then holding a slot until released."""

    gate: Gate
    session: str
    label: str
    id: int = field(default_factory=lambda: next(_ids))
    queued_at: float = field(default_factory=time.monotonic)
    admitted_at: float | None = None
    released: bool = False

    @property
    def admitted(self) -> bool:
        return self.admitted_at is not None and not self.released

    def position(self) -> int:
        """0 once admitted; else 1 + the number of jobs queued ahead of this one."""
        return self.gate.position(self)

    def waited_s(self) -> float:
        return (self.admitted_at or time.monotonic()) - self.queued_at

    def wait(self, timeout: float | None = None) -> bool:
        """Block until admitted or `timeout` seconds have passed; True when admitted."""
        return self.gate.wait(self, timeout)

    def release(self) -> None:
        """Give the slot back, or leave the queue (a cancel). Idempotent."""
        self.gate.release(self)


class Gate:
    """At most `slots` admitted tickets, at most one per session, admitted in arrival order."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"a gate needs at least 1 slot, got {slots}")
        self.slots = slots
        self._queue: list[Ticket] = []
        self._running: list[Ticket] = []
        self._changed = threading.Condition()

    def enter(self, session: str, label: str) -> Ticket:
        """Join the queue (never blocks); the ticket is admitted at once when a slot is free."""
        ticket = Ticket(self, session, label)
        with self._changed:
            self._queue.append(ticket)
            self._admit()
        return ticket

    def _admit(self) -> None:
        """Move queued tickets into free slots, oldest first, skipping a session that already runs a job."""
        busy = {t.session for t in self._running}
        for ticket in list(self._queue):
            if len(self._running) >= self.slots:
                break
            if ticket.session in busy:
                continue
            self._queue.remove(ticket)
            ticket.admitted_at = time.monotonic()
            self._running.append(ticket)
            busy.add(ticket.session)
        self._changed.notify_all()

    def wait(self, ticket: Ticket, timeout: float | None) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: ticket.admitted or ticket.released, timeout) and ticket.admitted

    def release(self, ticket: Ticket) -> None:
        with self._changed:
            if ticket.released:
                return
            ticket.released = True
            if ticket in self._running:
                self._running.remove(ticket)
            elif ticket in self._queue:
                self._queue.remove(ticket)
            self._admit()

    def position(self, ticket: Ticket) -> int:
        with self._changed:
            if ticket in self._running:
                return 0
            return self._queue.index(ticket) + 1 if ticket in self._queue else 0

    def running(self) -> list[str]:
        """Labels of the jobs holding a slot now."""
        with self._changed:
            return [t.label for t in self._running]

    def queued(self) -> int:
        with self._changed:
            return len(self._queue)


_gate: Gate | None = None
_gate_lock = threading.Lock()


def gate() -> Gate:
    """The process-wide gate (created on first use from TNE_HEAVY_JOBS / the cores)."""
    global _gate
    with _gate_lock:
        if _gate is None:
            _gate = Gate(heavy_slots())
        return _gate
