"""Heavy jobs in worker processes (hosted mode): the same numbers, progress relayed, errors kept, stops honoured."""

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.analyses.patching import PatchInputs
from core.errors import UserError
from core.serving import jobs, worker
from core.story import ANSWER, CLEAN, CORRUPTED, WRONG

ROOT = Path(__file__).resolve().parents[1]
KEY = PatchInputs(CLEAN, CORRUPTED, ANSWER, WRONG, "clean")


@pytest.fixture(scope="module")
def workers_on(embedded):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TNE_WORKERS", "1")
        patch.setenv("TNE_SERVER_NICE", "0")  # the test process keeps its priority
        worker.warm_up(embedded)
        yield embedded
    worker._reset()


def test_a_job_in_the_worker_equals_the_job_here(workers_on, monkeypatch):
    model = workers_on
    seen = []
    there = worker.run(jobs.patch_heads, model, KEY, False, progress=lambda d, t: seen.append((d, t)))
    monkeypatch.setenv("TNE_WORKERS", "0")
    here = worker.run(jobs.patch_heads, model, KEY, False)
    np.testing.assert_allclose(there.all_positions, here.all_positions, atol=1e-6)
    assert seen and seen[-1][0] == seen[-1][1]  # the worker's progress reached the caller, up to done
    assert len(worker._workers) >= 1


def shares_the_servers_weights(model, progress=None) -> bool:
    """A job run in the worker: are its weights the server's shared memory (no second copy)?"""
    return model.weights.W_in.is_shared() and model.weights.W_U.is_shared()


def test_the_worker_reads_the_servers_weights_and_a_dead_worker_is_replaced(workers_on):
    assert worker.run(shares_the_servers_weights, workers_on)
    first = worker._workers[0].process
    first.kill()
    first.join()
    assert worker.run(shares_the_servers_weights, workers_on)  # a fresh worker, the same shared weights
    assert worker._workers[0].process.pid != first.pid


def test_the_jobs_user_error_reaches_the_caller(workers_on):
    with pytest.raises(UserError, match="same number of tokens"):
        worker.run(jobs.patch_layer_totals, workers_on, dataclasses.replace(KEY, clean="I climbed up the lemon tree"))


def test_a_stopped_job_frees_its_worker(workers_on):
    """Streamlit stops a run by raising inside a Streamlit call: here, inside the progress relay."""
    model = workers_on
    zero = PatchInputs(CLEAN, CORRUPTED, ANSWER, WRONG, "zero")

    class Stopped(Exception):
        pass

    def stop(done, total):
        raise Stopped

    began = time.perf_counter()
    mean = PatchInputs(CLEAN, CORRUPTED, ANSWER, WRONG, "mean")
    full = worker.run(jobs.patch_layers, model, mean)  # ~10 s here, uncut
    uncut = time.perf_counter() - began
    with pytest.raises(Stopped):
        worker.run(jobs.patch_layers, model, zero, progress=stop)
    began = time.perf_counter()
    worker.run(jobs.patch_layer_totals, model, KEY)  # the next job: the worker is free within one batch
    assert time.perf_counter() - began < uncut / 2
    assert full.scores["mlp_out"].shape == (model.n_layers, len(full.scores["mlp_out"][0]))


def test_search_and_scan_jobs_cross_the_process_boundary(workers_on, gpt2_folder, monkeypatch):
    from core.corpus import scan
    from core.engine import tokens
    from core.engine.model import load_model

    tiny = load_model(str(gpt2_folder), device="cpu")  # the worker loads it by its folder, replacing the model
    there = worker.run(jobs.search_table, tiny, "standout", "W_U", 5)
    spec = scan.ScanSpec(((2, 3), (3, 7)), tokens.single_token(workers_on, ANSWER), max_tokens=300, top_examples=3)
    scanned = worker.run(jobs.corpus_scan, workers_on, spec)
    monkeypatch.setenv("TNE_WORKERS", "0")
    here = worker.run(jobs.search_table, tiny, "standout", "W_U", 5)
    assert there.equals(here)
    assert scanned.to_json() == scan.scan(workers_on, spec).to_json()


def test_a_steered_generation_in_the_worker_streams_its_tokens_and_equals_one_here(workers_on, monkeypatch):
    """The Steer page's generation runs in the worker (its own GIL: under load in the server it held the gate for
    minutes); every step's tokens come back as events, in order, before the result."""
    from core.analyses import steering

    model = workers_on
    args = (CLEAN, ["L25.N1527:negate"], "all", 6, 0.0, 1.0, (0,))
    events: list = []
    there = worker.run(jobs.steer, model, *args, on_event=events.append)
    assert [e.step for e in events] == list(range(len(there.baseline[0].token_ids)))
    assert [e.token_ids[1] for e in events] == there.steered[0].token_ids  # row 1: the steered run, as it came
    monkeypatch.setenv("TNE_WORKERS", "0")
    here_events: list = []
    here = worker.run(jobs.steer, model, *args, on_event=here_events.append)
    assert here.baseline[0].token_ids == there.baseline[0].token_ids
    assert here.steered[0].token_ids == there.steered[0].token_ids != there.baseline[0].token_ids
    assert [e.token_ids for e in here_events] == [e.token_ids for e in events]
    direct = steering.steer(model, CLEAN, [steering.parse_intervention(model, "L25.N1527:negate")], 6)
    assert direct.steered[0].token_ids == there.steered[0].token_ids


def test_the_server_keeps_its_priority_unless_told_and_yields_by_the_setting(monkeypatch):
    monkeypatch.delenv("TNE_SERVER_NICE", raising=False)
    assert worker.server_nice() == 0
    monkeypatch.setenv("TNE_SERVER_NICE", "99")
    assert worker.server_nice() == 19
    monkeypatch.setenv("TNE_SERVER_NICE", "-3")
    with pytest.raises(UserError, match="whole number from 0 to 19"):
        worker.server_nice()
    # every thread of the serving process moves (in a child: renicing this test process would stay for good)
    code = (
        "import os, threading\n"
        "from core.serving import worker\n"
        "base = os.getpriority(os.PRIO_PROCESS, 0)\n"
        "done = threading.Event(); seen = []\n"
        "t = threading.Thread(target=lambda: (done.wait(), seen.append(os.getpriority(os.PRIO_PROCESS, 0))))\n"
        "t.start(); worker.yield_to_workers(); done.set(); t.join()\n"
        "print(os.getpriority(os.PRIO_PROCESS, 0) - base, seen[0] - base)\n"
    )
    env = {**os.environ, "TNE_SERVER_NICE": "3"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["3", "3"]
