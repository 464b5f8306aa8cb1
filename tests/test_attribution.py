"""Attribution patching equals finite differences of exact patching; verification equals the batched engine."""

import dataclasses

import numpy as np
import pytest
import torch

from core import attribution, patching, tokens
from core import forward as fw
from core.errors import UserError
from tests.conftest import CLEAN, CORRUPTED

EPS = 1e-4


def in_double(model):
    w = model.weights
    converted = {f.name: getattr(w, f.name).double() for f in dataclasses.fields(w)
                 if isinstance(getattr(w, f.name), torch.Tensor)}
    return dataclasses.replace(model, weights=dataclasses.replace(w, **converted))


@pytest.fixture()
def setup(tiny):
    model = in_double(tiny)  # float64: finite differences at EPS are exact to ~1e-8
    c, k = tokens.pair(model, CLEAN, CORRUPTED)
    return patching.prepare(model, c, k, tokens.single_token(model, " an"), tokens.single_token(model, " a"))


def finite_difference(setup, layer, stage, delta):
    """(metric(corrupted + EPS·delta) − corrupted) / EPS / gap, delta: [1, S, d] at positions start_pos.."""
    w, base, start = setup.model.weights, setup.corrupted_trace, setup.start_pos
    resid = {"pre": base.resid_pre, "mid": base.resid_mid}[stage][layer][:, start:] if layer < w.n_layers \
        else base.resid_final[:, start:]
    final = fw.resume(w, resid + EPS * delta, layer, stage, start, base)
    return (float(setup.metric(w, final)[0]) - setup.corrupted_logit_diff) / EPS / (
        setup.clean_logit_diff - setup.corrupted_logit_diff)


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
            finite_difference(setup, layer, "mid", one), rel=1e-3, abs=1e-7)
        assert attr.layers_all_positions["attn_out"][layer] == pytest.approx(
            finite_difference(setup, layer, "mid", d_attn), rel=1e-3, abs=1e-7)
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
        layer = abs(approx.layers_all_positions["mlp_out"][last]
                    - patching.patch_layers(setup).all_positions["mlp_out"][last])
        return neurons, layer, np.abs(approx.neurons[last]).max()

    model = in_double(tiny)
    w, root = model.weights, 1e6
    linear = dataclasses.replace(model, weights=dataclasses.replace(
        w, eps=root**2, ln1_w=w.ln1_w * root, ln2_w=w.ln2_w * root, lnf_w=w.lnf_w * root))
    neurons, layer, scale = gap(linear)
    assert neurons < 2e-5 and layer < 2e-5 and scale > 1e-3  # equal up to the scores' float32 rounding
    assert gap(model)[0] > 1e-4  # the same comparison on the real (nonlinear) final norm does differ
