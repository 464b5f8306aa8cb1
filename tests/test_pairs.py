"""pairs (#26): every top-K pair of a search tested on a corpus — a planted pair found and judged, totals equal the
single-neuron scan, dashboards and the scan pass agree, verdict thresholds, bad input, the Search page's JSON."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from core.cache import cache_root
from core.corpus import pairs, scan
from core.corpus.dashboards import DashboardSpec, build
from core.corpus.sources import load_corpus
from core.engine.model import load_model
from core.errors import UserError
from tests.conftest import gpt2_tokenizer

TRIGGER, TARGET = (
    " red",
    " apple",
)  # planted: L0.N0 fires on ' red' and writes ' apple'; ' red' is always followed by it
OTHER_TRIGGER, OTHER = " blue", " banana"  # planted: L1.N1 fires on ' blue' and writes ' banana' too weakly to matter
WORDS = [" the", " a", " big", " small", " dog", " cat", " house", " tree", " car", " runs", " sees", " and", " green"]


def corpus_texts(seed: int = 0, docs: int = 12, words: int = 160) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(docs):
        parts = ["Once"]
        while len(parts) < words:
            r = rng.random()
            if r < 0.08:
                parts += [TRIGGER, TARGET]
            elif r < 0.16:
                parts.append(OTHER_TRIGGER)
            elif r < 0.22:
                parts.append(OTHER)
            else:
                parts.append(rng.choice(WORDS))
        out.append("".join(parts))
    return out


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A 2-layer GPT-2 whose attention writes nothing, whose other neurons write almost nothing, with planted
    neurons (W_in along the trigger's normalised embedding, a bias that keeps them silent elsewhere, W_out along
    the token's (tied) unembedding)."""
    from transformers import AutoModelForCausalLM, GPT2Config

    folder = tmp_path_factory.mktemp("planted")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=50257)
    hf = AutoModelForCausalLM.from_config(config)
    tok = gpt2_tokenizer()
    emb = hf.transformer.wte.weight.detach()
    with torch.no_grad():
        for block in hf.transformer.h:
            block.attn.c_proj.weight.zero_()
            block.attn.c_proj.bias.zero_()
            block.mlp.c_proj.weight.mul_(0.01)
            block.mlp.c_proj.bias.zero_()
        other = emb[tok.encode(OTHER)[0]] / emb[tok.encode(OTHER)[0]].norm()
        planted = (
            (0, 0, TRIGGER, TARGET, 2.0),
            (1, 1, OTHER_TRIGGER, OTHER, 0.05),
            (0, 2, TARGET, " the", 1.0),  # at ' apple' itself the top-1 is ' the', not ' apple' (tied embeddings)
        )
        for layer, neuron, trigger, token, gain in planted:
            t_id, w_id = tok.encode(trigger)[0], tok.encode(token)[0]
            out = emb[w_id] if token == OTHER else emb[w_id] - (emb[w_id] @ other) * other  # ' banana' stays L1.N1's
            x = emb[t_id] - emb[t_id].mean()
            mlp = hf.transformer.h[layer].mlp
            mlp.c_fc.weight[:, neuron] = 3.0 * x / x.norm()
            mlp.c_fc.bias[neuron] = -12.0
            mlp.c_proj.weight[neuron] = gain * out
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return load_model(str(folder), device="cpu")


# The cache folder the session started with (CI's TNE_CACHE_DIR, or the user's): where the embedded models were
# converted. Read at import, before any fixture points TNE_CACHE_DIR at a temporary folder.
SESSION_CACHE = cache_root()


@pytest.fixture()
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("TNE_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "planted.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus_texts()))
    return str(path)


def ids(model, text: str) -> int:
    return model.encode(text)[0]


def test_the_planted_pair_comes_first_and_correlates_the_other_is_none(planted, corpus):
    result = pairs.pairs(planted, pairs.PairsSpec("mutual", 5, corpus, 1500, ctx=64))
    rows = {(p["layer"], p["neuron"]): p for p in result.pairs}
    first = result.pairs[0]
    assert (first["layer"], first["neuron"], first["id"]) == (0, 0, ids(planted, TARGET))
    assert first["verdict"] == "correlates" and first["auc"] > 0.95 and first["spearman"] > 0.3
    assert first["token_top1"] >= pairs.MIN_TOP1 and first["token_next"] > 0
    other = rows[(1, 1)]
    assert other["id"] == ids(planted, OTHER) and other["verdict"] == "none", other
    assert other["token_top1"] >= pairs.MIN_TOP1  # testable: the token is the top-1 often, just not where it fires
    frame = result.frame()
    assert list(frame.columns) == pairs.PairsResult.COLUMNS and len(frame) == 5
    payload = result.to_json()
    assert payload["thresholds"]["correlates_auc"] == pairs.CORRELATES_AUC
    for key in ("rank", "layer", "neuron", "token", "positions", "token_top1", "token_next", "spearman", "curve"):
        assert key in payload["pairs"][0]
    s = payload["summary"]
    assert s["pairs"] == 5 and sum(s[v] for v in pairs.VERDICTS) == 5 and s["correlates"] >= 1


def test_totals_equal_the_single_neuron_scan_and_the_dashboards(planted, corpus):
    spec = pairs.PairsSpec("mutual", 5, corpus, 1500, ctx=64)
    scanned = pairs.pairs(planted, spec, use_dashboards=False)
    for p in scanned.pairs[:2]:
        one = scan.scan(
            planted, scan.ScanSpec(((p["layer"], p["neuron"]),), p["id"], corpus, 1500, ctx=64, spread=True)
        )
        totals = one.neurons[p["label"]].totals
        assert (p["positions"], p["token_top1"], p["token_next"]) == (
            totals["positions"],
            totals["target_top1"],
            totals["target_true_next"],
        )
    # the whole corpus fits the budget: spread or not, the same positions as a plain scan
    p = scanned.pairs[0]
    plain = scan.scan(planted, scan.ScanSpec(((0, 0),), p["id"], corpus, 10_000, ctx=64))
    whole = pairs.pairs(planted, pairs.PairsSpec("mutual", 1, corpus, 10_000, ctx=64)).pairs[0]
    assert whole["token_top1"] == plain.neurons["L0.N0"].totals["target_top1"]
    assert whole["positions"] == plain.positions
    # built dashboards of the same corpus and budget: the mutual W_U pairs are read from them, to the same counts
    build(planted, DashboardSpec(corpus, 1500, ctx=64))
    from_dash = pairs.pairs(planted, spec)
    assert {p["source"] for p in from_dash.pairs} == {"dashboards"}
    for a, b in zip(from_dash.pairs, scanned.pairs):
        assert a["curve"] == b["curve"] and a["verdict"] == b["verdict"] and a["spearman"] is None


def test_scan_pass_counts_do_not_depend_on_the_forward_batch(planted, corpus, monkeypatch):
    """Forwards sized by the memory budget (None), of one context, or of three, with logits unembedded 7 rows at a
    time across contexts: the same per-bin counts and ρ."""
    contexts = scan.cut(planted, load_corpus(corpus).texts, 64, 1500, spread=True)
    neurons, tokens = [(0, 0), (1, 1), (0, 2)], [ids(planted, TARGET), ids(planted, OTHER), ids(planted, " the")]
    reference = pairs.scan_pass(planted, contexts, neurons, tokens)
    monkeypatch.setattr(scan, "logit_rows", lambda model: 7)
    for batch in (1, 3):
        other = pairs.scan_pass(planted, contexts, neurons, tokens, batch_size=batch)
        for name in ("hist", "top1", "nxt"):
            np.testing.assert_array_equal(getattr(other, name), getattr(reference, name), err_msg=name)
        np.testing.assert_allclose(other.spearman, reference.spearman, rtol=1e-6)
        assert (
            other.positions
            == reference.positions
            == sum(len(c) for _, _, c in contexts) - (1 if planted.prepend_bos else 0) * len(contexts)
        )
    assert reference.hist.sum(0).tolist() == [reference.positions] * 3


@pytest.mark.parametrize(
    "top1, auc, expected",
    [
        (pairs.MIN_TOP1 - 1, 0.99, "too rare to tell"),
        (pairs.MIN_TOP1, float("nan"), "too rare to tell"),
        (pairs.MIN_TOP1, pairs.CORRELATES_AUC, "correlates"),
        (pairs.MIN_TOP1, np.nextafter(pairs.CORRELATES_AUC, 0), "weak"),
        (pairs.MIN_TOP1, pairs.WEAK_AUC, "weak"),
        (pairs.MIN_TOP1, np.nextafter(pairs.WEAK_AUC, 0), "none"),
        (500, 0.2, "none"),
    ],
)
def test_verdict_thresholds(top1, auc, expected):
    assert pairs.verdict(top1, auc) == expected


def test_auc_from_bins():
    # top-1 only in the highest bin: 1; only in the lowest: 0; the same share everywhere: 0.5
    counts = np.array([10, 10, 10])
    assert pairs.auc_of(counts, np.array([0, 0, 10])) == 1.0
    assert pairs.auc_of(counts, np.array([0, 0, 5])) == pytest.approx((20 + 0.5 * 5) / 25)  # ties in its bin: half
    assert pairs.auc_of(counts, np.array([5, 0, 0])) < 0.2
    assert pairs.auc_of(counts, np.array([2, 2, 2])) == pytest.approx(0.5)
    assert np.isnan(pairs.auc_of(counts, np.zeros(3)))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--top-k", "0"], "top-k 0 is out of range"),
        (["--top-k", "100000"], "top-k 100000 is out of range; the mutual search"),
        (["--kind", "sideways"], "invalid choice: 'sideways'"),
        (["--corpus", "/no/such/corpus.jsonl"], "corpus"),
    ],
)
def test_bad_input_is_one_line(planted, corpus, capsys, argv, message):
    from core.cli import main

    assert main(["pairs", "--model", planted.name, "--corpus", corpus, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_budget_beyond_the_hosted_cap(planted, corpus, monkeypatch):
    monkeypatch.setenv("TNE_HOSTED", "1")  # (a hosted demo refuses local folders first; the CLI prints the line)
    with pytest.raises(UserError, match=r"^token budget 10,000,000 is out of range; use 1\.\.50,000$"):
        pairs.pairs(planted, pairs.PairsSpec("mutual", 5, corpus, 10_000_000))


def test_search_page_json_equals_the_cli(planted, corpus, capsys, monkeypatch):
    from tests.test_app import assert_clean, cli_json, downloaded_json, open_page

    real = SESSION_CACHE
    tmp = Path(corpus).parent / "page-cache"
    tmp.mkdir()
    for shared in ("models", "gguf"):  # the converted embedded model (Home loads it), not converted again
        if (real / shared).exists():
            (tmp / shared).symlink_to(real / shared)
    monkeypatch.setenv("TNE_CACHE_DIR", str(tmp))
    folder = planted.name
    expected = cli_json(capsys, "pairs", "--model", folder, "--corpus", corpus, "--max-tokens", "800", "--top-k", "5")
    at = open_page("5_Search.py", model=folder, corpus=corpus, budget="800", pairs="5")
    at.button(key="search:run").click().run()
    assert_clean(at)
    at.button(key="search:test_pairs").click().run()
    assert_clean(at)
    page = downloaded_json(at, monkeypatch, label="⬇ JSON of the pairs")
    assert page == expected
