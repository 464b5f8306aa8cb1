"""Every app page end to end on the families whose meaning differs most from GPT-2 and Llama (tiny checkpoints):
Gemma 3 (sandwich norms, QK-norm, local/global layers, (1 + w) norms, scaled embedding) and GPT-NeoX (parallel
attention + MLP, partial rotary, LayerNorm with biases), picked by folder path in the URL like any local model."""

import pytest

from core.story import CLEAN, CORRUPTED
from tests.conftest import save_random
from tests.test_app import assert_clean, metrics, open_page
from tests.test_families import tiny_configs

PAIR = {"clean": CLEAN, "corrupted": CORRUPTED, "answer": " an", "wrong": " a"}


@pytest.fixture(scope="module", params=["gemma3_text", "gpt_neox"])
def folder(request, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("TNE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    return str(save_random(tmp_path_factory.mktemp(request.param), tiny_configs()[request.param], seed=5))


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def run(at, key: str):
    at.button(key=key).click().run()
    assert_clean(at)
    return at


def test_lens_and_patching(folder):
    at = open_page("1_Logit_Lens.py", model=folder, **PAIR)
    assert_clean(at)
    at = run(open_page("2_Patching.py", model=folder, **PAIR), "patching:run")
    assert metrics(at)["top neuron"].startswith("L")
    at = run(open_page("2_Patching.py", model=folder, ablation="zero", **PAIR), "patching:run")


def test_neuron_and_token_pages(folder):
    at = open_page("3_Neuron.py", model=folder, layer="1", neuron="7", **PAIR)
    assert_clean(at)
    assert at.title[0].value == "Neuron L1.N7"
    assert_clean(open_page("4_Token.py", model=folder, token=" an"))


def test_search_corpus_and_atlas(folder):
    run(open_page("5_Search.py", model=folder), "search:run")
    run(open_page("6_Corpus.py", model=folder, neurons="L1.N7", target=" an", budget="300"), "corpus:run")
    run(open_page("7_Atlas.py", model=folder), "atlas:run")
