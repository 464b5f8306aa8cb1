"""Batches sized by memory (issue #27 item 3): the budget's parser and sources, and that a small budget gives
smaller batches whose results equal the default budget's (patching sweeps, the search, prompt effects, the dose
curve, generation's prefill)."""

import numpy as np
import pytest
import torch

from core.analyses import effects, patching, search, steering
from core.analyses import generate as gen
from core.engine import memory
from core.engine import tokens as tok
from core.errors import UserError
from core.story import CLEAN, CORRUPTED


@pytest.mark.parametrize("raw", ["lots", "-5", "0", "nan", "inf"])
def test_a_bad_budget_is_one_line_naming_the_variable_and_what_is_valid(monkeypatch, raw):
    monkeypatch.setenv(memory.BUDGET_VAR, raw)
    with pytest.raises(UserError) as err:
        memory.budget_bytes(torch.device("cpu"))
    message = str(err.value)
    assert "\n" not in message and memory.BUDGET_VAR in message and "positive number of megabytes" in message


def test_the_budget_is_a_share_of_free_memory_capped_by_the_setting_minus_the_weights(monkeypatch):
    monkeypatch.delenv(memory.BUDGET_VAR, raising=False)
    monkeypatch.setattr(memory, "free_bytes", lambda device: 10 << 30)
    assert memory.budget_bytes(torch.device("cpu")) == int((10 << 30) * memory.CPU_SHARE)
    monkeypatch.setenv(memory.BUDGET_VAR, "3000")  # the whole process: the weights held count against it
    assert memory.budget_bytes(torch.device("cpu"), held=1000 << 20) == (2000 << 20)
    monkeypatch.setenv(memory.BUDGET_VAR, "500")  # less than the weights: nothing left, batches of one row
    assert memory.budget_bytes(torch.device("cpu"), held=1000 << 20) == 0
    assert memory.rows_that_fit(4096, 0) == 1 and memory.rows_that_fit(4096, 40960, cap=3) == 3


def test_on_a_gpu_the_budget_is_free_device_memory_plus_torchs_unused_cache(monkeypatch):
    monkeypatch.delenv(memory.BUDGET_VAR, raising=False)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (6 << 30, 80 << 30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 3 << 30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1 << 30)
    assert memory.free_bytes(torch.device("cuda:0")) == 8 << 30
    assert memory.budget_bytes(torch.device("cuda:0")) == int((8 << 30) * memory.GPU_SHARE)


def test_a_small_budget_gives_smaller_patching_batches_and_the_same_scores(tiny, monkeypatch):
    c, k = tok.pair(tiny, CLEAN, CORRUPTED)
    setup = patching.prepare(tiny, c, k, tok.single_token(tiny, " an"), tok.single_token(tiny, " a"), "clean")
    layer = tiny.n_layers - 1
    monkeypatch.delenv(memory.BUDGET_VAR, raising=False)
    roomy = patching.default_batch_tokens(tiny, len(c.ids))
    expected = patching.patch_neurons(setup, layer).scores
    # a budget only a few tokens above the weights: the batch shrinks to a handful of row-positions
    per_token = memory.forward_bytes_per_token(tiny.weights, len(c.ids), unembed_columns=2)
    held = memory.held_bytes(tiny.weights)
    monkeypatch.setenv(memory.BUDGET_VAR, str((held + 5 * per_token) / 2**20))
    tight = patching.default_batch_tokens(tiny, len(c.ids))
    assert tight == 5 < roomy
    np.testing.assert_allclose(patching.patch_neurons(setup, layer).scores, expected, atol=5e-5)


def test_a_small_budget_gives_smaller_search_blocks_and_the_same_tables(tiny, monkeypatch):
    monkeypatch.delenv(memory.BUDGET_VAR, raising=False)
    roomy_rows = search.chunk_rows(tiny)
    expected = search.compute_tables(tiny)
    held = memory.held_bytes(tiny.weights)
    monkeypatch.setenv(memory.BUDGET_VAR, str((held + 3 * 2 * 4 * tiny.d_vocab) / 2**20))  # 3 rows of 2 copies
    tight_rows = search.chunk_rows(tiny)
    assert tight_rows == 3 < roomy_rows
    got = search.compute_tables(tiny)
    np.testing.assert_array_equal(got.neuron_top_ids, expected.neuron_top_ids)
    np.testing.assert_array_equal(got.token_top_ids, expected.token_top_ids)
    np.testing.assert_allclose(got.token_top_vals, expected.token_top_vals, atol=1e-6)


def test_prompt_effects_verified_in_small_batches_equal_one_batch(tiny, monkeypatch):
    prompt = tok.prompt(tiny, CLEAN)
    monkeypatch.delenv(memory.BUDGET_VAR, raising=False)
    expected = effects.top_neurons(tiny, prompt, " an", " a", top_k=6)
    calls: list[int] = []
    resume = effects.fw.resume_joined

    def counted(w, joins, start, trace):
        calls.append(sum(j.resid.shape[0] for j in joins))
        return resume(w, joins, start, trace)

    monkeypatch.setattr(effects.fw, "resume_joined", counted)
    held = memory.held_bytes(tiny.weights)
    per_row = memory.forward_bytes_per_token(tiny.weights, len(prompt.ids), unembed_columns=2)
    monkeypatch.setenv(memory.BUDGET_VAR, str((held + 4 * per_row) / 2**20))  # 4 rows per resumed pass
    got = effects.top_neurons(tiny, prompt, " an", " a", top_k=6)
    assert len(calls) > 1 and max(calls) == 4  # the verification ran in several passes of ≤ 4 rows
    np.testing.assert_allclose(got.neurons.total.to_numpy(), expected.neurons.total.to_numpy(), atol=5e-5)


def test_a_dose_curve_in_small_batches_equals_one_batch(tiny, monkeypatch):
    prompt = tok.prompt(tiny, CLEAN)
    layer = tiny.n_layers // 2
    monkeypatch.delenv(memory.BUDGET_VAR, raising=False)
    expected = steering.dose_response(tiny, prompt, layer, 3, " an", " a", values=np.linspace(-4, 4, 9))
    calls: list[int] = []
    resume = steering.fw.resume

    def counted(w, resid, *args):
        calls.append(resid.shape[0])
        return resume(w, resid, *args)

    monkeypatch.setattr(steering.fw, "resume", counted)
    held = memory.held_bytes(tiny.weights)
    per_row = memory.forward_bytes_per_token(tiny.weights, len(prompt.ids), unembed_columns=tiny.d_vocab)
    monkeypatch.setenv(memory.BUDGET_VAR, str((held + 3 * per_row) / 2**20))  # 3 rows per resumed pass
    got = steering.dose_response(tiny, prompt, layer, 3, " an", " a", values=np.linspace(-4, 4, 9))
    assert calls == [3, 3, 3, 1]  # 9 clamps + the natural row
    np.testing.assert_allclose(got.logit_diff, expected.logit_diff, atol=1e-5)
    assert got.natural_logit_diff == pytest.approx(expected.natural_logit_diff, abs=1e-5)
    assert np.ptp(got.logit_diff) > 0.01  # the clamp moves the metric: a row left unclamped would show


def test_generation_prefills_in_chunks_when_memory_is_short_and_continues_the_same(tiny, monkeypatch):
    ids = tok.prompt(tiny, CLEAN).ids
    rows, new = 4, 6
    edits = [gen.Edit(1, 5, "post", "set", 3.0, "all", (2, 3))]
    sampling = [gen.Sampling()] * rows
    monkeypatch.delenv(memory.BUDGET_VAR, raising=False)
    expected = gen.generate(tiny, ids, new, sampling, edits=edits, keep_logits=True)
    assert gen.prefill_positions(tiny.weights, rows, len(ids), len(ids) + new) == len(ids)  # roomy: one pass
    held = memory.held_bytes(tiny.weights)
    kv = rows * memory.kv_cache_bytes_per_row(tiny.weights, len(ids) + new)
    per_position = rows * memory.forward_bytes_per_token(tiny.weights, keys=len(ids) + new)
    monkeypatch.setenv(memory.BUDGET_VAR, str((held + kv + 2 * per_position) / 2**20))
    assert gen.prefill_positions(tiny.weights, rows, len(ids), len(ids) + new) == 2
    calls: list[int] = []
    step = gen.forward_step

    def counted(w, tokens, cache, plan=None):
        calls.append(tokens.shape[1])
        return step(w, tokens, cache, plan)

    monkeypatch.setattr(gen, "forward_step", counted)
    got = gen.generate(tiny, ids, new, sampling, edits=edits, keep_logits=True)
    assert calls == [2] * (len(ids) // 2) + [len(ids) % 2] * (len(ids) % 2)  # the prompt, 2 positions a pass
    assert got.token_ids == expected.token_ids
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-4, rtol=0)
    assert got.token_ids[0] != got.token_ids[2] or not torch.equal(got.logits[:, 0], got.logits[:, 2])  # edit seen
    # a key/value cache past the budget: refused before any work, in one line
    monkeypatch.setenv(memory.BUDGET_VAR, str((held + kv // 2) / 2**20))
    with pytest.raises(UserError, match="key/value cache") as err:
        gen.generate(tiny, ids, new, sampling)
    assert "\n" not in str(err.value) and "fewer samples" in str(err.value)
