"""The admission gate (core/serving/admission.py): at most K heavy jobs at once, one per session, first come first
served;
a queued job starts when a running one ends or a queued one ahead of it is cancelled. And on a page: a heavy
analysis waits for the slot instead of running past the cap."""

import threading
import time

import pytest

from core.errors import UserError
from core.serving import admission
from core.serving.admission import Gate


def test_admits_at_most_k_in_arrival_order():
    gate = Gate(2)
    tickets = [gate.enter(f"session-{i}", f"job {i}") for i in range(5)]
    assert [t.admitted for t in tickets] == [True, True, False, False, False]
    assert [t.position() for t in tickets] == [0, 0, 1, 2, 3]
    assert gate.running() == ["job 0", "job 1"] and gate.queued() == 3
    tickets[1].release()  # a job ends: the oldest queued one starts, the others move up
    assert [t.admitted for t in tickets[2:]] == [True, False, False]
    assert [t.position() for t in tickets[3:]] == [1, 2]


def test_a_cancelled_job_leaves_the_queue_and_the_next_one_takes_the_free_slot():
    gate = Gate(1)
    running, cancelled, waiting = (gate.enter(s, s) for s in ("a", "b", "c"))
    cancelled.release()  # cancel while queued: no slot is taken, c moves up
    assert not cancelled.admitted and waiting.position() == 1 and gate.running() == ["a"]
    running.release()
    assert waiting.admitted and gate.queued() == 0
    running.release()  # releasing twice changes nothing
    assert gate.running() == ["c"]


def test_one_running_job_per_session_without_blocking_other_sessions():
    gate = Gate(2)
    first, second, other = gate.enter("s", "1"), gate.enter("s", "2"), gate.enter("t", "3")
    # a slot is free, but s already runs a job: t (behind s's second job) gets it
    assert first.admitted and not second.admitted and other.admitted
    first.release()
    assert second.admitted


def test_a_queued_job_starts_when_another_thread_ends_one():
    gate = Gate(1)
    holder, queued = gate.enter("a", "a"), gate.enter("b", "b")
    assert not queued.wait(0.05)  # still queued after the timeout
    threading.Timer(0.2, holder.release).start()
    started = time.monotonic()
    assert queued.wait(5)
    assert 0.15 < time.monotonic() - started < 2 and queued.waited_s() >= 0.15


def test_concurrent_jobs_never_exceed_k():
    gate, lock = Gate(2), threading.Lock()
    active, peak, done = [0], [0], []

    def job(i: int) -> None:
        ticket = gate.enter(f"session-{i}", str(i))
        try:
            assert ticket.wait(10)
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.05)
            with lock:
                active[0] -= 1
            done.append(i)
        finally:
            ticket.release()

    threads = [threading.Thread(target=job, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert peak[0] == 2 and sorted(done) == list(range(8)) and gate.running() == [] and gate.queued() == 0


def test_slots_come_from_cores_and_threads_per_job(monkeypatch):
    monkeypatch.setattr(admission, "cores", lambda: 16)
    monkeypatch.delenv("TNE_HEAVY_JOBS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("TNE_JOB_THREADS", raising=False)
    assert (admission.threads_per_job(), admission.heavy_slots()) == (4, 4)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert (admission.threads_per_job(), admission.heavy_slots()) == (1, 16)
    monkeypatch.setenv("TNE_JOB_THREADS", "8")
    monkeypatch.setenv("TNE_HEAVY_JOBS", "3")
    assert (admission.threads_per_job(), admission.heavy_slots()) == (8, 3)
    monkeypatch.setenv("TNE_HEAVY_JOBS", "0")
    with pytest.raises(UserError, match="TNE_HEAVY_JOBS='0' must be a whole number of at least 1"):
        admission.heavy_slots()
    with pytest.raises(ValueError):
        Gate(0)


def test_a_page_waits_for_the_slot_and_leaves_no_queue_box(monkeypatch):
    """Search holds no slot of its own while all are taken by others: it starts only after one is released."""
    from tests.test_app import assert_clean, open_page

    monkeypatch.setenv("TNE_NO_CACHE", "1")  # a real computation (tables read back from disk need no slot)
    gate = admission.gate()
    others = [gate.enter(f"other-{i}", "someone else's job") for i in range(gate.slots)]
    at = open_page("5_Search.py", kind="standout", matrix="W_E")
    threading.Timer(1.5, lambda: [t.release() for t in others]).start()
    started = time.monotonic()
    at.button(key="search:run").click().run()
    assert time.monotonic() - started >= 1.4  # it waited for the slot
    assert_clean(at)
    assert len(at.dataframe[0].value) == 100
    assert not [i.value for i in at.info if "Queued" in i.value]  # the box is gone once admitted
    assert gate.running() == [] and gate.queued() == 0  # the slot was given back


def test_the_patching_page_takes_one_slot_for_the_whole_page(monkeypatch):
    """All phases of one Run pass the gate once (per-phase admission interleaved sessions, so every visitor's page
    finished last): while others hold every slot the page waits, then runs to the end."""
    from core.story import CLEAN, CORRUPTED
    from tests.test_app import assert_clean, metrics, open_page

    gate = admission.gate()
    others = [gate.enter(f"other-{i}", "someone else's job") for i in range(gate.slots)]
    entered = []
    enter = gate.enter
    monkeypatch.setattr(gate, "enter", lambda session, label: entered.append(label) or enter(session, label))
    at = open_page("2_Patching.py", clean=CLEAN, corrupted=CORRUPTED.replace("lemon", "plum"))
    threading.Timer(1.5, lambda: [t.release() for t in others]).start()
    started = time.monotonic()
    at.button(key="patching:run").click().run()
    assert time.monotonic() - started >= 1.4  # it waited for the slot
    assert_clean(at)
    assert metrics(at)["top neuron anywhere"].startswith("L")  # and every phase ran after that one admission
    assert entered == ["the Patching page"]
    assert gate.running() == [] and gate.queued() == 0
