"""Neuron dashboards: streamed top-k / histograms / next-token counts equal a dense computation for several batch
and part sizes; an interrupted build resumes to the same result; examples are locatable in their documents; the
Brown detokeniser turns real tagged sentences into readable text; bad input gets one line."""

import json

import numpy as np
import pytest
import torch

from core.cli import main as cli_main
from core.corpus import dashboards as dash
from core.corpus import scan
from core.corpus.sources import BROWN, brown_text, brown_words, installed, load_corpus
from core.engine import forward as fw
from core.errors import UserError

TEXTS = [
    "I climbed up the apple tree and picked an apple. Then I ate an orange and a pear.",
    "An owl is an animal that hunts at night. A cat is a pet; an elephant is not.",
    "The quick brown fox jumps over the lazy dog, again and again, until an hour has passed.",
    "Résumé: naïve café owners—who said “hello”—ate 3½ croissants at 10:45, didn't they?",
    "Short one.",
]


@pytest.fixture()
def corpus_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TNE_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "docs.jsonl"
    rows = [{"text": t, "title": f"text {i}", "genre": "test" if i % 2 else "other"} for i, t in enumerate(TEXTS)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


@torch.no_grad()
def dense(model, work):
    """Every counted position's activations [positions, L, m] and top-1, one context at a time."""
    acts, top1, nxt, ctx = [], [], [], []
    for c, (_, _, ids) in enumerate(work.contexts):
        trace = fw.run(model.weights, torch.tensor([ids]), record={"mlp_post"})
        acts.append(torch.stack([p[0, work.skip :] for p in trace.mlp_post], 1))
        top1.append(fw.unembed(model.weights, trace.resid_final[0, work.skip :]).argmax(-1))
        nxt.append(torch.tensor(ids[work.skip + 1 :] + [-1]))
        ctx.append(torch.full((len(ids) - work.skip,), c))
    return torch.cat(acts).numpy(), torch.cat(top1).numpy(), torch.cat(nxt).numpy(), torch.cat(ctx).numpy()


@pytest.mark.parametrize("batch_size,part_batches", [(1, 1), (2, 3), (5, 1)])
def test_streamed_dashboards_equal_a_dense_computation(tiny, corpus_file, batch_size, part_batches):
    spec = dash.DashboardSpec(corpus_file, 400, top_k=4, ctx=10, batch_size=batch_size, part_batches=part_batches)
    built = dash.build(tiny, spec)
    work = dash.plan(tiny, spec)
    acts, top1, nxt, ctx = dense(tiny, work)
    a = built.arrays
    assert len(a["token"]) == len(acts) and (a["top1"] == top1).all()
    tokens = a["neuron_top_token"]
    for layer in range(tiny.n_layers):
        column = acts[:, layer]  # [positions, m]
        order = np.argsort(-column, axis=0, kind="stable")[:4].T  # [m, k]
        np.testing.assert_allclose(a["vals"][layer], np.take_along_axis(column.T, order, 1), rtol=1e-4, atol=1e-5)
        # positions hold those values (equal activations — a context's first token after BOS — may swap places)
        picked = a["pos"][layer].astype(np.int64)
        np.testing.assert_allclose(np.take_along_axis(column.T, picked, 1), a["vals"][layer], rtol=1e-4, atol=1e-5)
        assert (np.sort(picked, 1) == np.sort(order, 1)).mean() > 0.95
        np.testing.assert_array_equal(a["pred"][layer], top1[picked])
        bins = np.clip(np.searchsorted(dash.EDGES, column, side="right") - 1, 0, dash.HIST_BINS - 1)
        for n in range(tiny.d_mlp):
            hist = np.bincount(bins[:, n], minlength=dash.HIST_BINS)
            # the bin arithmetic may put a value within float error of an edge on the other side
            assert np.abs(a["hist"][layer, :, n] - hist).sum() <= 2
            assert a["hist"][layer, :, n].sum() == len(column)
            hits = np.bincount(bins[top1 == tokens[layer, n], n], minlength=dash.HIST_BINS)
            assert a["hit_top1"][layer, :, n].sum() == hits.sum()
            assert a["hit_next"][layer, :, n].sum() == (nxt == tokens[layer, n]).sum()
        # each example's window: the neuron's activations around it, cut at its context's ends
        for n in (0, tiny.d_mlp - 1):
            for rank in range(4):
                p = picked[n, rank]
                same = np.nonzero(ctx == ctx[p])[0]
                lo, hi = max(p - dash.LEFT, same[0]), min(p + dash.RIGHT, same[-1])
                window = a["win"][layer, n, rank].astype(np.float32)
                np.testing.assert_allclose(window[~np.isnan(window)], column[lo : hi + 1, n], rtol=2e-3, atol=2e-3)


def test_interrupted_build_resumes_to_the_uninterrupted_result(tiny, corpus_file, tmp_path, monkeypatch):
    spec = dash.DashboardSpec(corpus_file, 400, top_k=3, ctx=10, batch_size=2, part_batches=1)
    whole = dash.build(tiny, spec, use_cache=False)
    calls = []

    def stop_after_two(done, total):
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dash.build(tiny, spec, stop_after_two)
    work = dash.plan(tiny, spec)
    assert (work.folder / "state.npz").exists() and not (work.folder / "dashboards.npz").exists()
    seen = []
    resumed = dash.build(tiny, spec, lambda done, total: seen.append(done))
    assert seen[0] > calls[-1]  # it went on from the saved parts
    for name, values in whole.arrays.items():
        np.testing.assert_array_equal(resumed.arrays[name], values, err_msg=name)
    assert dash.is_built(tiny, spec) and not (work.folder / "state.npz").exists()


def test_examples_are_located_in_their_documents(tiny, corpus_file):
    spec = dash.DashboardSpec(corpus_file, 400, top_k=6, ctx=10, batch_size=4)
    built = dash.build(tiny, spec)
    corpus = load_corpus(corpus_file)
    for layer, neuron in ((0, 0), (tiny.n_layers - 1, 7)):
        examples = dash.examples(tiny, built, layer, neuron)
        assert [e["activation"] for e in examples] == sorted((e["activation"] for e in examples), reverse=True)
        for e in examples:
            text = corpus.texts[e["doc"]]
            assert text[e["char_start"] : e["char_end"]] == e["token"], e
            decoded = tiny.token_str(tiny.encode(text)[e["token_index"]])
            assert e["token"] == decoded or "\ufffd" in decoded  # a token holding part of a character: see _spans
            assert e["title"] == f"text {e['doc']}" and e["genre"] in ("test", "other")
            ctx = e["context"]
            assert ctx["tokens"][ctx["focus"]] == decoded
            assert ctx["activations"][ctx["focus"]] == pytest.approx(e["activation"], abs=2e-2)
    view = dash.neuron_view(tiny, built, 0, 0, top_k=2)
    assert len(view["examples"]) == 2 and sum(view["histogram"]["count"]) == built.positions
    assert 0 <= view["density"]["share"] <= view["density"]["positive_share"] <= 1


def test_the_budget_is_spread_over_documents(tiny):
    texts = [f"Document number {i} says something about topic {i} and then some more words." for i in range(40)]
    contexts = scan.cut(tiny, texts, 10, 60, spread=True)
    docs = [d for d, _, _ in contexts]
    assert (
        docs[0] == 0
        and max(docs) >= 30
        and sum(len(ids) - (1 if tiny.prepend_bos else 0) for *_, ids in contexts) <= 60
    )
    assert [d for d, _, _ in scan.cut(tiny, texts, 10, 60)][-1] < 10  # the scan's first-N reading, for contrast


# Real sentences of the Brown Corpus (ca01, the Atlanta Constitution), in its word/TAG form.
SENTENCES = [
    (
        "The/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd Friday/nr an/at investigation/nn "
        "of/in Atlanta's/np$ recent/jj primary/nn election/nn produced/vbd ``/`` no/at evidence/nn ''/'' "
        "that/cs any/dti irregularities/nns took/vbd place/nn ./."
    ),
    (
        "The/at September-October/np term/nn jury/nn had/hvd been/ben charged/vbn by/in Fulton/np-tl "
        "Superior/jj-tl Court/nn-tl Judge/nn-tl Durwood/np Pye/np to/to investigate/vb reports/nns of/in "
        "possible/jj ``/`` irregularities/nns ''/'' in/in the/at hard-fought/jj primary/nn which/wdt was/bedz "
        "won/vbn by/in Mayor-nominate/nn-tl Ivan/np Allen/np Jr./np ./."
    ),
    (
        "``/`` Only/rb a/at relative/jj handful/nn of/in such/jj reports/nns was/bedz received/vbn ''/'' ,/, "
        "the/at jury/nn said/vbd ,/, ``/`` considering/in the/at widespread/jj interest/nn in/in the/at "
        "election/nn ''/'' ./."
    ),
    ("They/ppss didn't/dod* know/vb (/( or/cc care/vb )/) ;/. ;/. it/pps was/bedz 1/2/cd past/in ten/cd !/."),
]
TAGGED = "\n\n" + "\n\n\n".join("\t" + sentence for sentence in SENTENCES) + "\n"

READABLE = (
    "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary election produced "
    '"no evidence" that any irregularities took place. The September-October term jury had been charged by '
    'Fulton Superior Court Judge Durwood Pye to investigate reports of possible "irregularities" in the '
    'hard-fought primary which was won by Mayor-nominate Ivan Allen Jr. "Only a relative handful of such '
    'reports was received", the jury said, "considering the widespread interest in the election". '
    "They didn't know (or care); it was 1/2 past ten!"
)


def test_brown_detokeniser_round_trips_real_tagged_sentences():
    assert brown_text(TAGGED) == READABLE
    words = [w for w in brown_words(TAGGED) if w not in ("``", "''")]
    kept = [
        w for i, w in enumerate(words) if not (w in (".", ";") and (words[i - 1] == w or words[i - 1].endswith(".")))
    ]
    # nothing but spaces and quote marks is added or lost: the words, in order, are the text's characters
    assert "".join(kept) == READABLE.replace(" ", "").replace('"', "")


@pytest.mark.skipif(not installed(BROWN), reason="the Brown Corpus is fetched by scripts/setup.sh (needs npm)")
def test_brown_corpus_is_installed_readable_and_varied():
    corpus = load_corpus(BROWN)
    assert len(corpus.texts) == 500 and len(set(corpus.genres)) == 15
    assert corpus.title(0).startswith("ca01: The Atlanta Constitution")
    assert corpus.texts[0].startswith("The Fulton County Grand Jury said Friday an investigation")
    assert "/at " not in corpus.texts[0] and "``" not in corpus.texts[0]
    assert 5e6 < sum(len(t) for t in corpus.texts) < 7e6


def test_bad_input_gets_one_line(tiny, corpus_file, capsys):
    with pytest.raises(UserError, match="token budget"):
        dash.plan(tiny, dash.DashboardSpec(corpus_file, 0))
    with pytest.raises(UserError, match="top-k"):
        dash.plan(tiny, dash.DashboardSpec(corpus_file, 100, top_k=0))
    with pytest.raises(UserError, match="does not exist"):
        dash.plan(tiny, dash.DashboardSpec("/nonexistent/corpus.jsonl", 100))
    built = dash.build(tiny, dash.DashboardSpec(corpus_file, 200, top_k=3, ctx=10))
    with pytest.raises(UserError, match="out of range"):
        dash.examples(tiny, built, 0, 0, top_k=9)
    folder = tiny.name
    for argv, needle in (
        (["examples", "--model", folder, "--neuron", "L99.N1", "--corpus", corpus_file], "layer"),
        (
            ["examples", "--model", folder, "--neuron", "L0.N1", "--corpus", corpus_file, "--max-tokens", "7"],
            "no dashboards built",
        ),
        (
            ["dashboards", "build", "--model", folder, "--corpus", corpus_file, "--max-tokens", "x"],
            "not a whole number",
        ),
    ):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and needle in err and "\n" not in err


def test_cli_examples_json(tiny, corpus_file, capsys):
    folder = tiny.name
    assert (
        cli_main(["dashboards", "build", "--model", folder, "--corpus", corpus_file, "--max-tokens", "300", "--json"])
        == 0
    )
    capsys.readouterr()
    assert (
        cli_main(
            [
                "examples",
                "--model",
                folder,
                "--neuron",
                "L1.N3",
                "--corpus",
                corpus_file,
                "--max-tokens",
                "300",
                "--top-k",
                "5",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert len(out["examples"]) == 5
    assert set(out["examples"][0]) >= {
        "activation",
        "doc",
        "title",
        "char_start",
        "char_end",
        "token",
        "context",
        "prediction",
    }


def test_share_axes_show_real_percentages():
    from ui.dashboard_view import percent_format

    # the Corpus chart's shares of 0.1–1.2 %: ticks every ~0.2 % must read differently (not 0%, 0%, 1%, 1%)
    fmt = percent_format(0.012)
    digits = int(fmt[1 : fmt.index("~")])
    ticks = [f"{t * 100:.{digits}f}%" for t in (0.002, 0.004, 0.006, 0.008, 0.010, 0.012)]
    assert len(set(ticks)) == len(ticks) and ticks[0] == "0.20%"
    assert percent_format(0.0005) == ".3~%" and percent_format(0.5) == ".0~%"


def _dashboard_page(folder: str, corpus: str) -> None:
    import streamlit as st

    from core.engine.model import load_model
    from ui import dashboard_view

    model = load_model(folder, device="cpu")
    dashboard_view.dashboard_section(model, 1, 3, corpus, 300)
    if st.session_state.get("show_pair", True):
        dashboard_view.clean_vs_corrupted(model, 1, 3, "I picked an apple", "I picked a lemon")


def test_neuron_page_section_reads_built_dashboards(tiny, corpus_file):
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_function(_dashboard_page, args=(tiny.name, corpus_file), default_timeout=60).run()
    assert not app.exception
    assert any("Build dashboards" in b.label for b in app.button)  # none built yet: a button, no examples
    built = dash.build(tiny, dash.DashboardSpec(corpus_file, 300))
    app = AppTest.from_function(_dashboard_page, args=(tiny.name, corpus_file), default_timeout=60).run()
    assert not app.exception
    assert [m.label for m in app.metric][:2] == [
        "positions",
        f"density (≥ {dash.EDGES[np.searchsorted(dash.EDGES, 1.0)]:.2f})",
    ]
    assert app.metric[0].value == f"{built.positions:,}"
    assert sum("predicts" in m.value for m in app.markdown) == dash.TOP_K
    assert any("clean:" in c.value for c in app.caption) and any("corrupted:" in c.value for c in app.caption)
