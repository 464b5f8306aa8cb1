"""Ray scale-out (local instance, 2 workers): identical scans and search rankings, also after a worker is killed."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra (requirements-scale.txt)")

from core.analyses import search  # noqa: E402
from core.corpus import distributed, scan  # noqa: E402
from core.engine.model import load_model  # noqa: E402

TEXTS = [
    "An owl is an animal that hunts at night, and a cat is a pet.",
    "I ate an apple and a pear, then an orange, in an hour or so.",
] * 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory, gpt2_folder):
    cache_dir = tmp_path_factory.mktemp("ray-cache")
    corpus = cache_dir / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    mp = pytest.MonkeyPatch()
    mp.setenv("TNE_CACHE_DIR", str(cache_dir))
    model = load_model(str(gpt2_folder), device="cpu")
    distributed.connect(workers=2)
    yield model, corpus, cache_dir
    ray.shutdown()
    mp.undo()


ARGS = dict(neurons=[(0, 3), (2, 17)], target=281, max_tokens=2000, ctx=16, batch_size=2, top_examples=5)


def die_once_after(after: int, flag: str):
    """A worker's `after_batch` that kills the first worker to finish `after` batches (once: the flag file says).

    A closure, so that Ray pickles it by value (workers cannot import this test module)."""

    def after_batch(done: int) -> None:
        if done >= after and not os.path.exists(flag):
            Path(flag).touch()
            os._exit(1)

    return after_batch


def test_ray_scan_equals_single_process_even_with_a_killed_worker(setup):
    model, corpus, cache_dir = setup
    spec = scan.ScanSpec(dataset=str(corpus), **ARGS)
    single = scan.scan(model, spec, use_cache=False).to_json()
    kill = die_once_after(2, str(cache_dir / "killed-once"))
    on_ray = distributed.ray_scan(model, spec, workers=2, after_batch=kill)
    assert (cache_dir / "killed-once").exists(), "the injected fault should have killed one worker mid-scan"
    result = on_ray.to_json()
    assert result.pop("settings")["engine"] == "ray (2 workers)"
    single.pop("settings")
    assert result == single
    # a second run reads every batch back from the disk cache: no Ray work, same answer
    again = distributed.ray_scan(model, spec, workers=2).to_json()
    again.pop("settings")
    assert again == single


def test_ray_search_rankings_equal_single_process(setup):
    model, _, _ = setup
    single = search.compute_tables(model, "W_U")
    on_ray = distributed.ray_tables(model, "W_U", workers=2, layers_per_block=1)
    np.testing.assert_array_equal(on_ray.neuron_top_ids, single.neuron_top_ids)
    np.testing.assert_array_equal(on_ray.token_top_ids, single.token_top_ids)
    np.testing.assert_allclose(on_ray.token_top_vals, single.token_top_vals, rtol=1e-5, atol=1e-5)
    for kind in (search.standout, search.mutual):
        a, b = kind(model, on_ray, 20), kind(model, single, 20)
        assert list(zip(a.layer, a.neuron, a.id)) == list(zip(b.layer, b.neuron, b.id))


def test_ray_dashboards_equal_single_process(setup):
    """Dashboards on Ray: the same parts (scan pipeline), each folded by a worker and merged; same arrays."""
    from core.corpus import dashboards

    model, corpus, _ = setup
    spec = dashboards.DashboardSpec(str(corpus), 300, top_k=4, ctx=16, batch_size=2, part_batches=2)
    single = dashboards.build(model, spec, use_cache=False)
    on_ray = dashboards.build(model, spec, use_cache=False, ray_address="local")
    for name, values in single.arrays.items():
        if name in ("vals", "win"):
            np.testing.assert_allclose(on_ray.arrays[name], values, rtol=1e-3, atol=1e-3, err_msg=name)
        elif name != "pos":  # the texts repeat: equal activations at other copies may take each other's place
            np.testing.assert_array_equal(on_ray.arrays[name], values, err_msg=name)
    token = single.arrays["token"]
    assert (np.sort(token[on_ray.arrays["pos"]], -1) == np.sort(token[single.arrays["pos"]], -1)).mean() > 0.95
