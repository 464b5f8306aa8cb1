"""Heavy jobs in worker processes (hosted mode): the same numbers, progress relayed, errors kept, stops honoured."""

import time

import numpy as np
import pytest

from core import jobs, worker
from core.errors import UserError
from core.post import ANSWER, CLEAN, CORRUPTED, WRONG

KEY = (CLEAN, CORRUPTED, ANSWER, WRONG, "clean")


@pytest.fixture(scope="module")
def workers_on(embedded):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TNE_WORKERS", "1")
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
    assert worker._workers is not None and worker._workers.slots >= 1


def test_the_jobs_user_error_reaches_the_caller(workers_on):
    with pytest.raises(UserError, match="same number of tokens"):
        worker.run(jobs.patch_layer_totals, workers_on, ("I climbed up the lemon tree", *KEY[1:]))


def test_a_stopped_job_frees_its_worker(workers_on):
    """Streamlit stops a run by raising inside a Streamlit call: here, inside the progress relay."""
    model = workers_on
    zero = (CLEAN, CORRUPTED, ANSWER, WRONG, "zero")

    class Stopped(Exception):
        pass

    def stop(done, total):
        raise Stopped

    began = time.perf_counter()
    full = worker.run(jobs.patch_layers, model, (CLEAN, CORRUPTED, ANSWER, WRONG, "mean"))  # ~10 s here, uncut
    uncut = time.perf_counter() - began
    with pytest.raises(Stopped):
        worker.run(jobs.patch_layers, model, zero, progress=stop)
    began = time.perf_counter()
    worker.run(jobs.patch_layer_totals, model, KEY)  # the next job: the worker is free within one batch
    assert time.perf_counter() - began < uncut / 2
    assert full.scores["mlp_out"].shape == (model.n_layers, len(full.scores["mlp_out"][0]))
