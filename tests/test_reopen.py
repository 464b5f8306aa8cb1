"""Results that outlive the server (#28 item 1): the Patching phases, the logit lens, the drivers view and the
prompt-level effects are disk-cached artefacts (ui/analyses.py `on_disk`, core/cache.py's pickle-free codec), so a link
reopens from disk after a restart without computing, and the page says so."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from core import cache


def test_codec_round_trips_results_without_pickle(tmp_path):
    from core.analyses.patching import HeadPatching, PatchInputs
    from core.engine.tokens import Prompt

    frame = pd.DataFrame({"token": [" an", None, "é\u202e"], "score": [0.5, math.nan, -math.inf], "n": [1, 2, 3]})
    value = {
        "heads": HeadPatching(np.arange(6, dtype=np.float32).reshape(2, 3), None),
        "prompt": Prompt("a b", [1, 2], ["a", " b"]),
        "frame": frame,
        "tensor": torch.ones(2, dtype=torch.bfloat16),
        (3, 4): (np.float32(1.5), math.nan, [True, "x"]),
        "inputs": PatchInputs("a", "b", " an", " a"),
    }
    path = tmp_path / "entry.npz"
    cache.save_object(path, value)
    with np.load(path, allow_pickle=False) as data:  # readable with pickle off
        assert "__meta__" in data.files
    back, computed_at = cache.load_object(path)
    assert computed_at > 0
    assert np.array_equal(back["heads"].all_positions, value["heads"].all_positions)
    assert back["heads"].per_position is None
    assert back["prompt"] == value["prompt"] and back["inputs"] == value["inputs"]
    pd.testing.assert_frame_equal(back["frame"], frame)
    assert back["tensor"].dtype == torch.bfloat16 and back[(3, 4)][0] == 1.5 and math.isnan(back[(3, 4)][1])
    with pytest.raises(cache.Unencodable):
        cache.save_object(tmp_path / "other.npz", {"f": print})


def test_a_file_cannot_name_a_class_outside_the_project(tmp_path):
    import json

    path = tmp_path / "evil.npz"
    meta = {"version": cache.CODEC_VERSION, "computed_at": 0, "value": {"dataclass": "os:system", "fields": {}}}
    cache.save(path, {"__meta__": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)})
    assert cache.load_object(path) is None and not path.exists()  # refused, dropped, recomputed


def test_a_patching_link_reopens_from_disk_after_a_restart(monkeypatch):
    """Compute the page once; then forget every in-memory result (a restarted server) and make computing fail: the
    same link shows its results from disk, without Run, with the caption."""
    import streamlit as st

    from core.serving import jobs, worker
    from tests.test_app import PAIR, assert_clean, metrics, open_page
    from ui import analyses

    query = {**PAIR, "corrupted": PAIR["corrupted"].replace("lemon", "grape")}
    at = open_page("2_Patching.py", **query)
    if any(b.key == "patching:run" for b in at.button):
        at.button(key="patching:run").click().run()
    assert_clean(at)
    computed = metrics(at)
    assert computed

    st.cache_data.clear()  # the restart: memory is gone, the cache folder stays
    analyses._completed().clear()

    def no_compute(*args, **kwargs):
        raise AssertionError("computed instead of reading the disk cache")

    monkeypatch.setattr(worker, "run", no_compute)
    monkeypatch.setattr(jobs, "patch_summary", no_compute)
    again = open_page("2_Patching.py", **query)
    assert_clean(again)
    assert metrics(again) == computed
    assert any("Reopened from the disk cache" in c.value for c in again.caption)
