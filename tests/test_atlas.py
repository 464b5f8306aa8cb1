"""The neuron atlas: moments equal a float64 reference, streamed = dense for any block size, planted neurons get
their classes, the embedded model's an-neuron, bad layer ranges, the cache and the CLI's JSON."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from core import cache
from core.analyses import atlas
from core.analyses.congruence import neuron_vectors, token_vectors
from core.engine.model import load_model
from core.errors import UserError


@pytest.fixture(scope="module")
def gpt2(gpt2_folder):
    return load_model(str(gpt2_folder), device="cpu")


def reference(model, layers):
    """The dense composition cos(w, W_U[:, t]) in float64 and scipy.stats' moments written out (scipy is not a
    dependency): skew(bias=True) = m3 / m2^1.5, kurtosis(fisher=False, bias=True) = m4 / m2²."""
    first, last = layers
    w = neuron_vectors(model)[first * model.d_mlp : (last + 1) * model.d_mlp].double().numpy()
    u = token_vectors(model, "W_U").double().numpy()
    x = (w / np.linalg.norm(w, axis=1, keepdims=True)) @ (u / np.linalg.norm(u, axis=0, keepdims=True))
    mean = x.mean(axis=1)
    d = x - mean[:, None]
    m2, m3, m4 = (d**2).mean(axis=1), (d**3).mean(axis=1), (d**4).mean(axis=1)
    return x, {"mean": mean, "std": np.sqrt(m2), "skew": m3 / m2**1.5, "kurtosis": m4 / m2**2}


def test_moments_equal_the_float64_reference_on_a_dense_slice(gpt2):
    x, expected = reference(gpt2, (1, 1))
    arrays = atlas.compute_stats(gpt2, "1", rows_per_block=100)
    got = atlas.moments(arrays)
    for name in ("mean", "std"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-7)
    for name in ("skew", "kurtosis"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-3, atol=1e-3)
    order = np.argsort(-x, axis=1, kind="stable")
    np.testing.assert_array_equal(arrays["top_ids"][:, 0], order[:, 0])
    np.testing.assert_allclose(arrays["top_vals"], np.take_along_axis(x, order[:, : atlas.KEEP], 1), atol=1e-6)
    np.testing.assert_allclose(arrays["bottom_vals"], np.sort(x, axis=1)[:, : atlas.TOP_K], atol=1e-6)
    # null-space share against numpy's SVD: the k bottom left singular vectors of W_U
    u_svd = np.linalg.svd(token_vectors(gpt2, "W_U").double().numpy(), full_matrices=False)[0]
    k = atlas.null_space_size(gpt2.weights.d_model)
    w = neuron_vectors(gpt2)[gpt2.d_mlp : 2 * gpt2.d_mlp].double().numpy()
    share = ((w @ u_svd[:, -k:]) ** 2).sum(axis=1) / (w**2).sum(axis=1)
    np.testing.assert_allclose(arrays["null_space_share"], share, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 100, 767, 5000])
def test_streamed_equals_dense_for_any_block_size(gpt2, rows):
    arrays = atlas.compute_stats(gpt2, rows_per_block=rows)
    whole = atlas.compute_stats(gpt2, rows_per_block=10_000)  # one block: the dense computation
    for name in ("mean", "m2", "m3", "m4", "top_vals", "bottom_vals", "norm", "null_space_share"):
        np.testing.assert_allclose(arrays[name], whole[name], rtol=1e-4, atol=1e-9, err_msg=name)  # fp32 sums
    np.testing.assert_array_equal(arrays["top_ids"][:, :3], whole["top_ids"][:, :3])
    x, expected = reference(gpt2, (2, 2))
    got = atlas.moments(atlas._slice(gpt2, arrays, (2, 2)))
    np.testing.assert_allclose(got["kurtosis"], expected["kurtosis"], rtol=1e-3)


def synthetic(base, d=512, vocab=20_000, layers=2, d_mlp=64, seed=0):
    """A model with random weights of chosen sizes (the tokenizer of `base`): d_model 512 so that a token's own
    direction stands √512 ≈ 23 σ out of a random composition; W_U has a 6-dimensional near-null space."""
    g = torch.Generator().manual_seed(seed)
    W_U = torch.randn(d, vocab, generator=g)
    W_U[-6:] *= 0.01  # the effective null space: the last 6 residual directions barely reach any logit
    w = base.weights
    weights = dataclasses.replace(
        w,
        W_E=W_U.T.clone(),
        W_U=W_U,
        W_in=torch.zeros(layers, d, d_mlp),
        W_out=torch.randn(layers, d_mlp, d, generator=g) / d**0.5,
        W_QKV=w.W_QKV[:layers],
        mlp_post_w=None,
    )
    return dataclasses.replace(base, weights=weights, fingerprint=f"synthetic-{seed}")


def test_planted_neurons_get_their_classes(gpt2):
    model = synthetic(gpt2)
    W_U, W_out = model.weights.W_U, model.weights.W_out
    unit = W_U / W_U.norm(dim=0)
    planted = {
        (1, 3): unit[:, 281],  # writes one token's direction
        (1, 4): -unit[:, 281],  # its negative
        (1, 5): 100 * torch.eye(512)[-1],  # inside W_U's null space, with a large norm
        (0, 7): unit[:, [100, 200, 300]].sum(dim=1),  # a handful of tokens
    }
    for (layer, neuron), vector in planted.items():
        W_out[layer, neuron] = vector
    result = atlas.atlas(model, use_cache=False)
    rows = {key: atlas.neuron_row(result, *key) for key in planted}
    assert rows[(1, 3)]["classes"] == "prediction, token" and rows[(1, 3)]["top_tokens"][0] == model.token_str(281)
    assert rows[(1, 4)]["classes"] == "suppression" and rows[(1, 4)]["bottom_tokens"][0] == model.token_str(281)
    assert rows[(1, 5)]["classes"] == "entropy" and rows[(1, 5)]["null_space_share"] > 0.99
    token = rows[(0, 7)]
    assert token["classes"] == "token" and token["n_standout"] == 3 and token["kurtosis"] < 10  # kurtosis misses it
    assert set(token["top_tokens"][:3]) == {model.token_str(i) for i in (100, 200, 300)}
    # random neurons stay out of the moment and norm classes; the token gap is set so that a Gaussian composition
    # passes it in one neuron of the model on expectation
    others = result.frame.drop(index=[(layer * 64 + n) for layer, n in planted])
    assert not others[["prediction", "suppression", "partition", "entropy"]].any().any()
    assert others["token"].sum() <= 3
    assert result.counts()["entropy"] == [0, 1] and result.counts()["prediction"] == [0, 1]


def test_surface_labels():
    assert atlas.surface_label([" an", "An", " An", "an", "AN"]) == "one word: an"
    assert atlas.surface_label([" the", " a", " an", " this", " that"]) == "leading space"
    assert atlas.surface_label(["1", " 2", "3", "2019", " 45"]) == "digits"
    assert atlas.surface_label([".", ",", ")", "!", " ?"]) == "punctuation"
    assert atlas.surface_label([" Paris", " London", " Rome", " Berlin", " Oslo"]) == "leading space · capitalised"
    assert atlas.surface_label(["x", " y", "Z", "7", "."]) == ""


def test_bad_layer_ranges_get_one_clear_line(gpt2):
    with pytest.raises(UserError, match=r"layers 2-5 are outside .*, which has layers 0-2"):
        atlas.atlas(gpt2, "2-5")
    with pytest.raises(UserError, match="layers 'banana' not understood; write a range like 0-2"):
        atlas.check_layers(gpt2, "banana")
    with pytest.raises(UserError, match="layers -1 are outside"):
        atlas.check_layers(gpt2, "-1")
    with pytest.raises(UserError, match="layers 2-1: the first layer is after the last; write it as 1-2"):
        atlas.check_layers(gpt2, "2-1")
    assert atlas.check_layers(gpt2, None) == (0, 2) == atlas.check_layers(gpt2, " 0 - 2 ")


def test_cache_serves_ranges_from_the_whole_atlas(gpt2, tmp_path, monkeypatch):
    monkeypatch.setenv("TNE_CACHE_DIR", str(tmp_path))
    calls = []
    whole = atlas.atlas(gpt2, progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1][0] == calls[-1][1] and atlas.is_cached(gpt2) and atlas.is_cached(gpt2, "1-2")
    monkeypatch.setattr(atlas, "compute_stats", lambda *a, **k: pytest.fail("recomputed a cached range"))
    part = atlas.atlas(gpt2, "1-2")
    assert part.layers == (1, 2) and len(part.frame) == 2 * gpt2.d_mlp
    np.testing.assert_array_equal(part.frame["kurtosis"], whole.frame["kurtosis"][gpt2.d_mlp :])
    path = atlas._cache_path(gpt2, (0, 2))
    path.write_bytes(path.read_bytes()[:100])  # a truncated entry is dropped and recomputed
    monkeypatch.undo()
    monkeypatch.setenv("TNE_CACHE_DIR", str(tmp_path))
    again = atlas.atlas(gpt2)
    np.testing.assert_array_equal(again.frame["kurtosis"], whole.frame["kurtosis"])
    assert cache.load(path) is not None


def test_cli_json_is_ranked_by_kurtosis_with_counts(gpt2_folder, tmp_path, monkeypatch, capsys):
    from core.cli import main

    monkeypatch.setenv("TNE_CACHE_DIR", str(tmp_path))
    assert main(["atlas", "--model", str(gpt2_folder), "--device", "cpu", "--top-k", "7", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["model"]) >= {"processing", "thresholds", "null_space", "layers"}
    assert out["model"]["null_space"]["k"] == 1  # ceil(0.01 · 64)
    assert set(out["counts"]) == set(atlas.CLASSES) and all(len(v) == 3 for v in out["counts"].values())
    neurons = out["neurons"]
    assert len(neurons) == 7 and [n["kurtosis"] for n in neurons] == sorted(n["kurtosis"] for n in neurons)[::-1]
    assert set(neurons[0]) == {
        *("layer", "neuron", "mean", "std", "skew", "kurtosis", "norm", "null_space_share", "gap", "n_standout"),
        *("classes", "label", "top_tokens", "bottom_tokens"),
    }
    assert len(neurons[0]["top_tokens"]) == 5 == len(neurons[0]["bottom_tokens"])
    assert main(["atlas", "--model", str(gpt2_folder), "--device", "cpu", "--layers", "1-7", "--json"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: layers 1-7 are outside {gpt2_folder}, which has layers 0-2"
    ]


def test_the_embedded_an_neuron(embedded):
    """L25.N1527's composition: the an family on top, near-Gaussian moments (kurtosis misses it), a token neuron."""
    result = atlas.atlas(embedded, "25", use_cache=False)
    row = atlas.neuron_row(result, 25, 1527)
    assert set(row["top_tokens"][:4]) == {" an", "An", " An", "an"} and row["label"] == "one word: an"
    assert row["classes"] == "token"
    assert row["kurtosis"] == pytest.approx(3.60, abs=0.01) and row["skew"] == pytest.approx(0.0014, abs=0.002)
    assert row["std"] == pytest.approx(0.03777, abs=2e-4) and row["gap"] == pytest.approx(2.525, abs=0.01)
    assert row["null_space_share"] == pytest.approx(0.0133, abs=0.001)
    assert result.counts() == {"prediction": [0], "suppression": [1], "partition": [0], "entropy": [0], "token": [9]}


# ---------------------------------------------------------------- the page (AppTest; registering it in the sidebar
# is ui/common.py's PAGES/NAV, not needed to open it by path)


def open_atlas(**query: str):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=600)
    at.run()
    at.switch_page("pages/7_Atlas.py")
    at.query_params.clear()
    at.query_params.update(query)
    return at.run()


def test_atlas_page_runs_filters_and_clicks_through(embedded):
    atlas.atlas(embedded)  # the whole atlas on disk (one pass the first time): the page reads it back
    at = open_atlas(show="token", label="one word: an")
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert {m.label: m.value for m in at.metric}["token"] == "124"
    table = at.dataframe[0].value
    assert "L25.N1527" in set(table["name"]) and set(table["classes"]) == {"token"}
    row = list(table["name"]).index("L25.N1527")
    at.session_state["atlas:table"] = {"selection": {"rows": [], "columns": [], "cells": [[row, "name"]]}}
    at.run()
    assert not at.exception
    assert at.title[0].value == "Neuron L25.N1527"


def test_atlas_page_bad_input_is_reported(embedded):
    atlas.atlas(embedded)
    at = open_atlas(show="best", layers="40-50")
    assert not at.exception
    errors = " | ".join(e.value for e in at.error)
    assert "show 'best' is unknown; valid: any class" in errors, errors
    assert "layers 40-50 are outside smollm2-135m, which has layers 0-29" in errors, errors
    at.text_input(key="atlas:layers").input("7-3").run()
    assert not at.exception
    assert any("the first layer is after the last" in e.value for e in at.error), [e.value for e in at.error]
    assert len(at.get("plotly_chart")) >= 2  # the charts stay; only the table gives way


def test_cached_neuron_reads_the_atlas_without_computing(gpt2, tmp_path, monkeypatch):
    monkeypatch.setenv("TNE_CACHE_DIR", str(tmp_path))
    assert atlas.cached_neuron(gpt2, 1, 5) is None  # nothing on disk: no pass is started
    whole = atlas.atlas(gpt2)
    entry = atlas.cached_neuron(gpt2, 1, 5)
    row = atlas.neuron_row(whole, 1, 5)
    assert entry["kurtosis"] == row["kurtosis"] and entry["classes"] == [c for c in atlas.CLASSES if row[c]]
    assert atlas.cached_neuron(gpt2, 9, 5) is None
