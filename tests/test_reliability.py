"""Concurrency on one shared model, hosted-mode limits, bounded self-healing cache."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from core import cache
from core.analyses import congruence, patching, predict, search
from core.corpus import scan
from core.engine import tokens
from core.engine.model import load_model
from core.errors import UserError
from core.story import CLEAN, CORRUPTED


def jobs(model):
    c, k = tokens.pair(model, CLEAN, CORRUPTED)
    an, a = tokens.single_token(model, " an"), tokens.single_token(model, " a")
    return [
        lambda: patching.patch_neurons(patching.prepare(model, c, k, an, a), 25).scores,
        lambda: patching.patch_neurons(patching.prepare(model, c, k, an, a, "negate"), 28).scores,
        lambda: patching.patch_layers(patching.prepare(model, c, k, an, a)).scores["attn_out"],
        lambda: patching.patch_heads(patching.prepare(model, c, k, an, a)).all_positions,
        lambda: congruence.token_to_neurons(model, an).values,
    ]


def test_concurrent_jobs_on_one_model_equal_serial_runs(embedded):
    serial = [job() for job in jobs(embedded)]
    with ThreadPoolExecutor(max_workers=5) as pool:
        futures = [pool.submit(job) for job in jobs(embedded)]  # all at once
        concurrent = [f.result() for f in futures]
    for i, result in enumerate(concurrent):
        np.testing.assert_allclose(result, serial[i % len(serial)], rtol=1e-5, atol=1e-6)


@pytest.fixture()
def hosted(monkeypatch):
    monkeypatch.setenv("TNE_HOSTED", "1")
    monkeypatch.setenv("TNE_MODELS", "smollm2-135m")


def test_hosted_mode_limits(hosted, embedded, gpt2_folder, tmp_path):
    with pytest.raises(UserError, match="serves only smollm2-135m"):
        load_model(str(gpt2_folder))
    with pytest.raises(UserError, match="serves only"):
        load_model("gpt2-xl")
    with pytest.raises(UserError, match="at most 128 here"):
        tokens.prompt(embedded, "word " * 200)
    with pytest.raises(UserError, match=r"use 1\.\.100"):
        predict.top_k(embedded, predict.last_logits(embedded, tokens.prompt(embedded, CLEAN)), 101)
    with pytest.raises(UserError, match=r"use 1\.\.100"):
        congruence.neuron_to_tokens(embedded, 25, 1527, top_k=500)
    with pytest.raises(UserError, match="token budget 100,000 is out of range; use 1..50,000"):
        scan.scan(embedded, scan.ScanSpec([(25, 1527)], 354, None, max_tokens=100_000))
    (tmp_path / "c.txt").write_text("some text\n")
    with pytest.raises(UserError, match=r"only the installed corpora \(bundled"):
        scan.scan(embedded, scan.ScanSpec([(25, 1527)], 354, str(tmp_path / "c.txt"), max_tokens=100))
    assert patching.default_batch_tokens(embedded) == 4096
    with pytest.raises(UserError, match="top-k"):
        search.search(embedded, "mutual", top_k=1000)


def test_bad_hosted_settings_are_reported(monkeypatch, embedded):
    monkeypatch.setenv("TNE_HOSTED", "1")
    monkeypatch.setenv("TNE_MAX_TOP_K", "lots")
    with pytest.raises(UserError, match="TNE_MAX_TOP_K='lots' is not a whole number"):
        predict.top_k(embedded, predict.last_logits(embedded, tokens.prompt(embedded, CLEAN)), 5)


def test_cache_is_bounded_least_recently_used_first(tmp_path, monkeypatch):
    monkeypatch.setenv("TNE_CACHE_DIR", str(tmp_path))
    paths = [cache.key_path("fp", "test", {"i": i}) for i in range(6)]
    for i, path in enumerate(paths):
        cache.save(path, {"x": np.full(50_000, i, dtype=np.float32)})  # 200 kB each
    assert all(p.exists() for p in paths)
    cache.load(paths[0])  # touch the oldest: it becomes the most recently used
    freed = cache.prune(450_000)
    assert freed > 0
    kept = [p.exists() for p in paths]
    assert kept[0] and kept[-1] and sum(kept) == 2
    assert not list(tmp_path.rglob(".tmp-*"))  # no half-written files left behind


def test_truncated_entry_is_discarded(tmp_path, monkeypatch):
    monkeypatch.setenv("TNE_CACHE_DIR", str(tmp_path))
    path = cache.key_path("fp", "test", {})
    cache.save(path, {"x": np.arange(1000)})
    path.write_bytes(path.read_bytes()[:-200])
    assert cache.load(path) is None and not path.exists()
