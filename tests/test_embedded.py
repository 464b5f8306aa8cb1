"""The post's story on the embedded real model (SmolLM2-135M-Instruct). Numbers measured here, Nov 2026."""

import numpy as np
import pytest

from core.analyses import lens, patching, predict
from core.engine import tokens
from core.story import CLEAN, CORRUPTED


@pytest.fixture(scope="module")
def story(embedded):
    clean, corrupted = tokens.pair(embedded, CLEAN, CORRUPTED)
    an, a = tokens.single_token(embedded, " an"), tokens.single_token(embedded, " a")
    setup = patching.prepare(embedded, clean, corrupted, an, a)
    return embedded, clean, corrupted, an, a, setup


def test_tokens_follow_the_models_convention(story):
    model, clean, corrupted, an, a, setup = story
    assert (an, a) == (354, 253)
    assert len(clean.ids) == 19 and clean.ids[0] == 57  # 'I': SmolLM2's tokenizer adds no BOS
    assert not model.prepend_bos and "no BOS" in model.bos_convention()
    assert tokens.first_difference(clean, corrupted) == 15  # ' apple' / ' lemon'


def test_an_is_top1_on_clean_and_a_on_corrupted(story):
    model, clean, corrupted, an, a, _ = story
    top_clean = predict.top_k(model, predict.last_logits(model, clean), 3)
    top_corrupted = predict.top_k(model, predict.last_logits(model, corrupted), 3)
    assert top_clean.id[0] == an and top_clean.prob[0] == pytest.approx(0.607, abs=0.01)
    assert top_corrupted.id[0] == a and top_corrupted.prob[0] == pytest.approx(0.889, abs=0.01)


def test_logit_lens_ends_at_the_logit_diff_and_dla_sums_to_it(story):
    model, clean, _, an, a, setup = story
    result = lens.logit_lens(model, clean, an, a)
    assert result.logit_diff == pytest.approx(setup.clean_logit_diff, abs=1e-4)
    assert result.logit_diff == pytest.approx(0.714, abs=0.01)
    assert result.components.logit_diff.sum() == pytest.approx(result.logit_diff, abs=1e-3)
    attn_rows = result.components[result.components.kind == "attn"].logit_diff.to_numpy()
    # heads + per-layer attention bias = the attention layer's term (bias is 0 here: bias-free Llama)
    assert np.allclose(result.heads.groupby("layer").logit_diff.sum().to_numpy(), attn_rows, atol=1e-3)
    assert len(result.layers) == 1 + 2 * model.n_layers
    # MLP 25 (the an-neuron's layer) is the largest direct contributor.
    mlps = result.components[result.components.kind == "mlp"]
    assert int(mlps.loc[mlps.logit_diff.idxmax(), "layer"]) == 25


def test_the_an_neuron_is_found(story):
    model, *_, setup = story
    layers = patching.patch_layers(setup)
    assert layers.all_positions["mlp_out"][0] == pytest.approx(1.0, abs=0.05)  # MLP 0: an extended embedding
    layer = patching.standout_mlp_layer(layers)
    assert layer == 25
    assert layers.all_positions["mlp_out"][25] == pytest.approx(0.652, abs=0.02)
    sweep = patching.patch_neurons(setup, layer)
    top = sweep.frame(2)
    assert int(top.neuron[0]) == 1527
    assert float(top.score[0]) == pytest.approx(0.613, abs=0.02)
    # One neuron restores ~94 % of what the whole layer restores; the runner-up < 2 %.
    assert float(top.score[0]) / sweep.layer_score > 0.9
    assert float(top.score[1]) < 0.02


def test_negating_the_an_neuron_flips_the_answer(embedded, story):
    model, clean, corrupted, an, a, _ = story
    setup = patching.prepare(model, clean, corrupted, an, a, ablation="negate")
    sweep = patching.patch_neurons(setup, 25, neurons=[1527])
    # Negating it removes more than the whole clean−corrupted gap.
    assert float(sweep.scores[0]) > 1.0
