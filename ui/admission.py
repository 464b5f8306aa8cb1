"""The admission gate on the page: heavy analyses wait their turn in a visible queue that the visitor can cancel.

`admitted(label)` goes inside the cached functions of ui/analyses.py, so a cache hit never queues and identical
requests still share one computation (st.cache_data's lock: the second caller waits for the first one's result,
not for a slot). While queued it shows "Queued — position k" and the wait so far, refreshed every 0.5 s: each refresh
is a Streamlit call, where Streamlit stops a run that the visitor cancelled or replaced (a rerun), and the slot is
given back in `finally`. The queue box and its Cancel button are drawn outside the cache's recording, so a later
cache hit does not replay them.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st
import torch
from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx, in_cached_function

from core.serving import admission

REFRESH_S = 0.5
# The serving process runs at most `slots` heavy jobs, each with this many torch threads (core/serving/admission.py).
torch.set_num_threads(admission.threads_per_job())

_holding: contextvars.ContextVar[bool] = contextvars.ContextVar("holding_heavy_slot", default=False)


def session_id() -> str:
    """The browser session running this script (the thread, outside Streamlit)."""
    ctx = get_script_run_ctx(suppress_warning=True)
    return ctx.session_id if ctx is not None else f"thread-{threading.get_ident()}"


def cancel() -> None:
    """The Cancel button's callback: disarm the page's heavy actions so the rerun it triggers shows their Run
    buttons instead of queueing again (pages keep "<page>:armed"-style keys)."""
    for name in [k for k in st.session_state if str(k).endswith("armed")]:
        del st.session_state[name]


def queue_text(ticket: admission.Ticket) -> str:
    gate = ticket.gate
    return (
        f"**Queued — position {ticket.position()}** for {ticket.label}: waited {ticket.waited_s():.0f} s. "
        f"This server runs {gate.slots} heavy job{'s' if gate.slots > 1 else ''} at a time "
        f"(now: {len(gate.running())}, waiting: {gate.queued()}); light pages are not held up."
    )


def _wait_visibly(ticket: admission.Ticket) -> None:
    """Show the queue box until the ticket is admitted (or Streamlit stops this run)."""
    recording = in_cached_function.set(False)  # a queue box belongs to this run only: never replay it from cache
    try:
        box = st.empty()
        with box.container():
            status = st.empty()
            st.button(
                "Cancel",
                key=f"admission:cancel:{ticket.id}",
                on_click=cancel,
                help="Leave the queue; nothing is computed",
            )
        while not ticket.wait(REFRESH_S):
            status.info(queue_text(ticket), icon=":material/hourglass_top:")
        box.empty()
    finally:
        in_cached_function.reset(recording)


@contextmanager
def admitted(label: str) -> Iterator[None]:
    """Run the body once this session's heavy job holds a slot of the process-wide gate (re-entrant)."""
    if _holding.get():  # a heavy job calling another one already holds its slot
        yield
        return
    ticket = admission.gate().enter(session_id(), label)
    try:
        if not ticket.wait(0):
            _wait_visibly(ticket)
        holding = _holding.set(True)
        try:
            yield
        finally:
            _holding.reset(holding)
    finally:
        ticket.release()
