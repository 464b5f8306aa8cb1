"""Congruence and searches: streamed = dense, planted truth is found, the embedded model's an-neuron."""

import dataclasses

import numpy as np
import pytest

from core import cache
from core.analyses import congruence, search
from core.errors import UserError


def dense(model, matrix):
    return (congruence.neuron_vectors(model) @ congruence.token_vectors(model, matrix)).float()


@pytest.mark.parametrize("rows", [100, 767, 5000])
def test_streamed_tables_equal_dense(gpt2_folder, rows):
    from core.engine.model import load_model

    model = load_model(str(gpt2_folder), device="cpu")
    for matrix in ("W_U", "W_E"):
        full = dense(model, matrix)
        t = search.compute_tables(model, matrix, rows_per_block=rows)
        vals, ids = full.topk(2, dim=1)
        np.testing.assert_allclose(t.neuron_top_vals, vals.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(t.neuron_top_ids, ids.numpy())
        vals, ids = full.topk(2, dim=0)
        np.testing.assert_allclose(t.token_top_vals, vals.T.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(t.token_top_ids, ids.T.numpy())
        # every mutual pair, from the dense matrix directly
        best_token = full.argmax(dim=1)
        best_neuron = full.argmax(dim=0)
        pairs = {(n, int(best_token[n])) for n in range(full.shape[0]) if int(best_neuron[best_token[n]]) == n}
        frame = search.mutual(model, t, top_k=len(pairs) + 5)
        assert {(l * model.d_mlp + n, i) for l, n, i in zip(frame.layer, frame.neuron, frame.id)} == pairs
        top2n = full.topk(2, dim=1).values
        top2t = full.topk(2, dim=0).values
        for row in frame.head(5).itertuples():
            flat = row.layer * model.d_mlp + row.neuron
            expected = float((top2n[flat, 0] - top2n[flat, 1]) * (top2t[0, row.id] - top2t[1, row.id]))
            assert row.score == pytest.approx(expected, rel=1e-4)
        stand = search.standout(model, t, top_k=3)
        gaps = (top2t[0] - top2t[1]).numpy()
        assert int(stand.id[0]) == int(np.argmax(gaps)) and stand.score[0] == pytest.approx(gaps.max(), rel=1e-5)


def planted(model, matrix, layer, neuron, token, scale=100.0):
    """A copy of the model whose neuron (layer, neuron) writes exactly `scale` × the token's vector."""
    w = model.weights
    W_out = w.W_out.clone()
    W_out[layer, neuron] = scale * congruence.token_vectors(model, matrix)[:, token]
    return dataclasses.replace(model, weights=dataclasses.replace(w, W_out=W_out), fingerprint="planted")


@pytest.mark.parametrize("matrix", ["W_U", "W_E"])
def test_planted_pair_comes_first_everywhere(tiny, matrix):
    layer, neuron, token = 1, 7, 281  # ' an' in GPT-2 BPE
    model = planted(tiny, matrix, layer, neuron, token)
    n2t = congruence.neuron_to_tokens(model, layer, neuron, matrix, top_k=3)
    assert int(n2t.top.id[0]) == token and n2t.top_token_rank_among_neurons == 1
    t2n = congruence.token_to_neurons(model, token, matrix, top_k=3)
    assert (int(t2n.top.layer[0]), int(t2n.top.neuron[0])) == (layer, neuron)
    assert int(t2n.per_layer.neuron[layer]) == neuron
    tables = search.compute_tables(model, matrix, rows_per_block=128)
    for frame in (search.standout(model, tables, 3), search.mutual(model, tables, 3)):
        assert (int(frame.layer[0]), int(frame.neuron[0]), int(frame.id[0])) == (layer, neuron, token)


def test_tables_are_cached_and_a_corrupt_entry_is_recomputed(gpt2_folder, tmp_path, monkeypatch):
    from core.engine.model import load_model

    monkeypatch.setenv("TNE_CACHE_DIR", str(tmp_path))
    model = load_model(str(gpt2_folder), device="cpu")
    calls = []
    first = search.tables(model, "W_U", progress=lambda d, t: calls.append((d, t)))
    path = cache.key_path(model.fingerprint, "search-tables", {"matrix": "W_U", "processing": model.processing})
    assert path.exists() and len(calls) >= 1
    again = search.tables(model, "W_U")
    np.testing.assert_array_equal(first.token_top_ids, again.token_top_ids)
    path.write_bytes(path.read_bytes()[:100])  # truncated entry
    healed = search.tables(model, "W_U")
    np.testing.assert_array_equal(first.neuron_top_ids, healed.neuron_top_ids)
    assert cache.load(path) is not None


def test_bad_congruence_inputs(tiny):
    with pytest.raises(UserError, match="write it as L31.N892"):
        congruence.parse_neuron(tiny, "banana")
    with pytest.raises(UserError, match="layer 9 is out of range"):
        congruence.parse_neuron(tiny, "L9.N1")
    with pytest.raises(UserError, match="neuron 5000 is out of range"):
        congruence.parse_neuron(tiny, "1.5000")
    assert congruence.parse_neuron(tiny, "l1.n5") == (1, 5) == congruence.parse_neuron(tiny, "1.5")
    with pytest.raises(UserError, match="matrix"):
        congruence.token_vectors(tiny, "W_Q")
    with pytest.raises(UserError, match="token id"):
        congruence.token_to_neurons(tiny, 10**6)
    with pytest.raises(UserError, match="search kind"):
        search.search(tiny, "best")


def test_the_embedded_an_neuron_is_congruent_with_an(embedded):
    for matrix in ("W_U", "W_E"):
        result = congruence.neuron_to_tokens(embedded, 25, 1527, matrix, top_k=5)
        assert result.top.token[0] == " an" and result.top_token_rank_among_neurons == 1
        assert set(result.top.token[:4]) == {" an", "An", " An", "an"}
    by_token = congruence.token_to_neurons(embedded, 354, "W_U", top_k=3)
    assert by_token.top.label[0] == "L25.N1527"
    assert by_token.top.congruence[0] == pytest.approx(12.41, abs=0.05)
    assert by_token.top.congruence[1] == pytest.approx(11.39, abs=0.05)  # L27.N554


def test_embedded_search_slice_equals_dense(embedded):
    """The full 46,080 × 49,152 search runs in bench/congruence.py; here a slice: the last 3 layers, dense-checked."""
    w = embedded.weights
    last = dataclasses.replace(w, W_out=w.W_out[-3:].clone(), W_QKV=w.W_QKV[-3:])
    model = dataclasses.replace(embedded, weights=last, fingerprint="slice")
    t = search.compute_tables(model, "W_U", rows_per_block=1000)
    full = dense(model, "W_U")
    np.testing.assert_array_equal(t.token_top_ids, full.topk(2, dim=0).indices.T.numpy())
    np.testing.assert_array_equal(t.neuron_top_ids, full.topk(2, dim=1).indices.numpy())
