"""Attribution patching equals finite differences of exact patching; verification equals the batched engine."""

import dataclasses

import numpy as np
import pytest
import torch

from core.analyses import attribution, patching
from core.engine import forward as fw
from core.engine import tokens
from core.errors import UserError
from core.story import CLEAN, CORRUPTED

EPS = 1e-4


def in_double(model):
    w = model.weights
    converted = {
        f.name: getattr(w, f.name).double()
        for f in dataclasses.fields(w)
        if isinstance(getattr(w, f.name), torch.Tensor)
    }
    return dataclasses.replace(model, weights=dataclasses.replace(w, **converted))


@pytest.fixture()
def setup(tiny):
    model = in_double(tiny)  # float64: finite differences at EPS are exact to ~1e-8
    c, k = tokens.pair(model, CLEAN, CORRUPTED)
    return patching.prepare(model, c, k, tokens.single_token(model, " an"), tokens.single_token(model, " a"))


def finite_difference(setup, layer, stage, delta):
    """(metric(corrupted + EPS·delta) − corrupted) / EPS / gap, delta: [1, S, d] at positions start_pos.."""
    w, base, start = setup.model.weights, setup.corrupted_trace, setup.start_pos
    resid = (
        {"pre": base.resid_pre, "mid": base.resid_mid}[stage][layer][:, start:]
        if layer < w.n_layers
        else base.resid_final[:, start:]
    )
    final = fw.resume(w, resid + EPS * delta, layer, stage, start, base)
    return (
        (float(setup.metric(w, final)[0]) - setup.corrupted_logit_diff)
        / EPS
        / (setup.clean_logit_diff - setup.corrupted_logit_diff)
    )


@torch.no_grad()
def test_neuron_attribution_equals_finite_differences(setup):
    attr = attribution.attribute(setup)
    w, start = setup.model.weights, setup.start_pos
    for layer in range(w.n_layers):
        d_post = (setup.clean_trace.mlp_post[layer] - setup.corrupted_trace.mlp_post[layer])[0, start:]
        for n in (0, 3, w.d_mlp - 1):
            delta = (d_post[:, n, None] * w.W_out[layer, n])[None]
            expected = finite_difference(setup, layer + 1, "pre", delta)
            assert attr.neurons[layer, n] == pytest.approx(expected, rel=1e-3, abs=1e-7)


@torch.no_grad()
def test_head_and_layer_attribution_equal_finite_differences(setup):
    attr = attribution.attribute(setup)
    w, start = setup.model.weights, setup.start_pos
    P = len(setup.clean.ids)
    for layer in range(w.n_layers):
        dz = (setup.clean_trace.z[layer] - setup.corrupted_trace.z[layer])[0, start:]
        for head in range(w.n_heads):
            delta = torch.einsum("sh,hd->sd", dz[:, head], w.W_O[layer, head])[None]
            expected = finite_difference(setup, layer, "mid", delta)
            assert attr.heads[layer, head] == pytest.approx(expected, rel=1e-3, abs=1e-7)
        d_attn = (setup.clean_trace.attn_out[layer] - setup.corrupted_trace.attn_out[layer])[:, start:]
        one = torch.zeros_like(d_attn)
        one[:, -1] = d_attn[:, -1]
        assert attr.layers["attn_out"][layer, P - 1] == pytest.approx(
            finite_difference(setup, layer, "mid", one), rel=1e-3, abs=1e-7
        )
        assert attr.layers_all_positions["attn_out"][layer] == pytest.approx(
            finite_difference(setup, layer, "mid", d_attn), rel=1e-3, abs=1e-7
        )
    # before the first differing position nothing differs: attribution exactly 0
    assert np.all(attr.layers["resid_pre"][:, :start] == 0)


def test_verification_equals_the_batched_engine(setup):
    attr = attribution.attribute(setup)
    top = attribution.verify_top(setup, attr, top_k=12)
    assert list(top.attribution) == sorted(top.attribution, reverse=True)
    for layer in top.layer.unique():
        sweep = patching.patch_neurons(setup, int(layer))
        rows = top[top.layer == layer]
        np.testing.assert_allclose(rows.exact, sweep.scores[rows.neuron.to_numpy()], rtol=1e-6, atol=1e-9)
    with pytest.raises(UserError, match="top-k 0"):
        attribution.verify_top(setup, attr, top_k=0)


def test_only_clean_patching_has_an_attribution(tiny):
    c, k = tokens.pair(tiny, CLEAN, CORRUPTED)
    s = patching.prepare(tiny, c, k, tokens.single_token(tiny, " an"), tokens.single_token(tiny, " a"), "zero")
    with pytest.raises(UserError, match="clean"):
        attribution.attribute(s)


def test_embedded_attribution_ranks_the_an_neuron_first(embedded):
    c, k = tokens.pair(embedded, CLEAN, CORRUPTED)
    setup = patching.prepare(embedded, c, k, 354, 253)
    attr = attribution.attribute(setup)
    top = attribution.verify_top(setup, attr, top_k=10)
    assert top.label[0] == "L25.N1527"
    assert top.attribution[0] == pytest.approx(0.659, abs=0.02) and top.exact[0] == pytest.approx(0.613, abs=0.02)
    assert attribution.spearman(top.attribution, top.exact) > 0.7
    exact = patching.patch_neurons(setup, 25).scores
    assert attribution.spearman(attr.neurons[25], exact) > 0.99


def test_attribution_equals_exact_patching_where_the_model_is_linear_after_the_patch(tiny):
    """After the last layer's neurons only the final norm remains. With a huge eps and the norm weights scaled by
    sqrt(eps), every norm becomes x ↦ x·w (scale constant to ~1e-8): the model is linear after the patched point,
    so the first-order approximation must equal exact patching."""

    def gap(model) -> tuple[float, float, float]:
        c, k = tokens.pair(model, CLEAN, CORRUPTED)
        setup = patching.prepare(model, c, k, tokens.single_token(model, " an"), tokens.single_token(model, " a"))
        last = model.n_layers - 1
        approx = attribution.attribute(setup)
        neurons = np.abs(approx.neurons[last] - patching.patch_neurons(setup, last).scores).max()
        layer = abs(
            approx.layers_all_positions["mlp_out"][last] - patching.patch_layers(setup).all_positions["mlp_out"][last]
        )
        return neurons, layer, np.abs(approx.neurons[last]).max()

    model = in_double(tiny)
    w, root = model.weights, 1e6
    linear = dataclasses.replace(
        model,
        weights=dataclasses.replace(
            w,
            arch=dataclasses.replace(w.arch, eps=root**2),
            ln1_w=w.ln1_w * root,
            ln2_w=w.ln2_w * root,
            lnf_w=w.lnf_w * root,
        ),
    )
    neurons, layer, scale = gap(linear)
    assert neurons < 2e-5 and layer < 2e-5 and scale > 1e-3  # equal up to the scores' float32 rounding
    assert gap(model)[0] > 1e-4  # the same comparison on the real (nonlinear) final norm does differ


def plant_gated_pair(model, neuron: int):
    """A copy of `model` where neuron A = (n_layers − 2, neuron) opens a gate for neuron B = (last layer, neuron).

    A is off (pre-activation −8) on the corrupted prompt's last position and on (+8) on the clean one. It writes
    a direction u orthogonal to everything the final norm and the metric read at the corrupted run (ones,
    answer − wrong, the corrupted final residual), so its direct effect is zero to first order; the last layer's
    attention output and its other neurons are switched off, so its only other path is B. B is off (−8) in both
    runs and on (+8) only when A's clean activation is patched into the corrupted run; B writes answer − wrong.
    Exact patching of A therefore moves the logit diff a lot, while attribution patching sees A through B's GELU
    at −8, whose slope is ~1e-14: the nonlinearity AtP* warns about, planted. The other neurons of earlier
    layers keep 0.1 % of their output: attribution has real (small) candidates to rank above A, too small to flip A."""
    w = model.weights
    layer_a, layer_b = w.n_layers - 2, w.n_layers - 1
    clean, corrupted = tokens.pair(model, CLEAN, CORRUPTED)
    answer, wrong = tokens.single_token(model, " an"), tokens.single_token(model, " a")
    metric = w.W_U[:, answer] - w.W_U[:, wrong]
    W_in, b_in = w.W_in.clone(), w.b_in.clone()
    W_out, W_O = w.W_out * 1e-3, w.W_O.clone()
    W_out[layer_b] = 0
    W_O[layer_b] = 0

    def mlp_input(weights, resid_mid, layer):
        return fw.norm(weights, resid_mid, weights.ln2_w[layer], weights.ln2_b[layer])

    def threshold(on, offs):
        """A direction d and bias b with d·on + b = 8 and d·off + b = −8 for each off (least-norm solution)."""
        points = torch.stack([on] + offs)
        targets = torch.tensor([8.0] + [-8.0] * len(offs), dtype=points.dtype)
        lifted = torch.cat([points, torch.ones(len(points), 1, dtype=points.dtype)], 1)
        solution = torch.linalg.lstsq(lifted, targets[:, None]).solution[:, 0]
        return solution[:-1], solution[-1]

    def runs(weights):
        return [fw.run(weights, p.tensor(model.device)) for p in (clean, corrupted)]

    W_out[layer_a, neuron] = 0
    traces = runs(dataclasses.replace(w, W_out=W_out, W_O=W_O))
    W_in[layer_a, :, neuron], b_in[layer_a, neuron] = threshold(
        mlp_input(w, traces[0].resid_mid[layer_a][0, -1], layer_a),
        [mlp_input(w, traces[1].resid_mid[layer_a][0, -1], layer_a)],
    )
    u = torch.randn(w.d_model, dtype=metric.dtype, generator=torch.Generator().manual_seed(0))
    read = torch.linalg.qr(torch.stack([torch.ones_like(metric), metric, traces[1].resid_final[0, -1]], 1))[0]
    u = u - read @ (read.T @ u)
    W_out[layer_a, neuron] = 20 * u / u.norm()
    planted = dataclasses.replace(w, W_in=W_in, b_in=b_in, W_out=W_out, W_O=W_O)
    traces = runs(planted)
    # B's input in the corrupted run with A's clean activation patched in (the last layer's attention is off)
    d_post = traces[0].mlp_post[layer_a][0, -1, neuron] - traces[1].mlp_post[layer_a][0, -1, neuron]
    patched = traces[1].resid_mid[layer_b][0, -1] + d_post * W_out[layer_a, neuron]
    W_in[layer_b, :, neuron], b_in[layer_b, neuron] = threshold(
        mlp_input(planted, patched, layer_b), [mlp_input(planted, t.resid_mid[layer_b][0, -1], layer_b) for t in traces]
    )
    W_out[layer_b, neuron] = 3 * metric
    return dataclasses.replace(model, weights=dataclasses.replace(planted, W_in=W_in, b_in=b_in, W_out=W_out))


def test_the_headline_is_the_best_exact_score_even_where_attribution_misses_it(gpt2_folder):
    from core.engine.model import load_model

    planted_neuron = 7
    model = plant_gated_pair(in_double(load_model(str(gpt2_folder), device="cpu")), planted_neuron)
    layer_a = model.n_layers - 2
    c, k = tokens.pair(model, CLEAN, CORRUPTED)
    setup = patching.prepare(model, c, k, tokens.single_token(model, " an"), tokens.single_token(model, " a"))
    approx = attribution.attribute(setup)
    every = {layer: patching.patch_neurons(setup, layer).scores for layer in range(model.n_layers)}
    assert every[layer_a][planted_neuron] == max(s.max() for s in every.values()) > 1  # A is the true winner
    assert abs(every[layer_a + 1][planted_neuron]) < 1e-6  # B alone does nothing: off in both runs
    proposed = attribution.top_neurons(model, approx, 3)
    assert (layer_a, planted_neuron) not in set(zip(proposed.layer, proposed.neuron))  # attribution misses A
    assert abs(approx.neurons[layer_a, planted_neuron]) < 0.05

    found = attribution.find_top_neurons(setup, approx, top_k=3)
    best = found.best
    assert (best.layer, best.neuron) == (layer_a, planted_neuron)
    assert best.exact == found.table.exact.max()  # the headline is the best exact score in the table
    assert best.exact == pytest.approx(every[layer_a][planted_neuron], abs=1e-6)  # and the engine's number
    assert best.source == f"sweep of MLP {layer_a}" and best.disagree
    assert layer_a in found.swept_layers and 0 not in found.swept_layers
    assert list(found.table.exact) == sorted(found.table.exact, reverse=True)
    assert found.to_json()["top_neuron"]["label"] == f"L{layer_a}.N{planted_neuron}"


def test_embedded_headline_on_the_orange_pair_is_the_exact_winner(embedded):
    """The pair where attribution ranks L29.N1326 (exact 0.083) first; the MLP 21 sweep holds L21.N29 (0.330)."""
    c, k = tokens.pair(
        embedded,
        "I ate an orange for breakfast and an apple for lunch. For dinner I ate",
        "I ate a banana for breakfast and a pear for lunch. For dinner I ate",
    )
    setup = patching.prepare(embedded, c, k, 354, 253)
    approx = attribution.attribute(setup)
    assert attribution.top_neurons(embedded, approx, 1).label[0] == "L29.N1326"
    found = attribution.find_top_neurons(setup, approx, top_k=20)
    assert found.best.label == "L21.N29" and found.best.exact == pytest.approx(0.330, abs=0.01)
    assert 21 in found.swept_layers
    # the page screens its sweeps in bfloat16: the same headline, and every table row still the fp32 number
    screened = attribution.find_top_neurons(setup, approx, top_k=20, screen=True)
    assert screened.best.label == "L21.N29" and screened.best.exact == pytest.approx(found.best.exact, abs=1e-5)
    exact_sweep = patching.patch_neurons(setup, 21).scores
    for row in screened.table.itertuples():
        reference = exact_sweep[row.neuron] if row.layer == 21 else found.table.set_index("label").exact.get(row.label)
        if reference is not None:
            assert row.exact == pytest.approx(reference, abs=1e-5), row.label
