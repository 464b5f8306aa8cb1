"""Searches over every neuron × every token: stand-out tokens and mutual-exclusive neuron ↔ token pairs."""

from __future__ import annotations

import streamlit as st

from core.analyses import search
from core.analyses.congruence import MATRICES, describe
from core.analyses.search import KIND_HELP, KINDS
from core.corpus import pairs
from core.corpus.dashboards import default_corpus
from core.engine.model import Model
from core.hosting import limits
from ui import analyses, common, navigation, pairs_view, params

PAGE = "search"
TOP_K = 100
PARAMS = [
    params.Param("kind", "mutual", params.choice("kind", KINDS)),
    params.Param("matrix", "W_U", params.choice("matrix", MATRICES)),
    params.Param("corpus", default_corpus()),
    params.Param(
        "budget",
        min(pairs.DEFAULT_TOKENS, limits().max_scan_tokens),
        params.whole_number("token budget", 100, limits().max_scan_tokens),
    ),
    params.Param("pairs", TOP_K, params.whole_number("pairs tested", 1, TOP_K)),
]


def key(name: str) -> str:
    return params.key(PAGE, name)


def inputs() -> tuple[str, str]:
    params.bind(PAGE, PARAMS)
    left, right = st.columns(2)
    left.selectbox(
        "Search", KINDS, key=key("kind"), persist_state="session", format_func=lambda k: f"{k}: {KIND_HELP[k]}"
    )
    common.matrix_select(right, key("matrix"))
    params.publish(PAGE, PARAMS)
    return params.value(PAGE, "kind"), params.value(PAGE, "matrix")


def pairs_section(model: Model, kind: str, matrix: str, available: int) -> None:
    """Every top-K pair tested on a corpus (the post's last figure, and the test the post did not run)."""
    st.subheader("Do the pairs predict their token on real text?")
    st.markdown(
        "The post ends with the top five pairs' corpus curves (*smooth correlations for every pair*) and *\"We have "
        'not tested the other pairs, but we expect many of them to correlate."* Here every one of the top pairs is '
        "tested: one pass over the corpus for all of them (read from built dashboards where they cover the corpus "
        "and budget)."
    )
    a, b, c = st.columns(3)
    a.text_input("Corpus (brown, bundled, a file or folder)", key=key("corpus"))
    b.number_input("Token budget", min_value=100, max_value=limits().max_scan_tokens, step=1000, key=key("budget"))
    c.number_input("Pairs tested (top K)", min_value=1, max_value=TOP_K, step=10, key=key("pairs"))
    params.publish(PAGE, PARAMS)
    corpus = str(params.value(PAGE, "corpus")).strip() or None
    budget, top_k = int(params.value(PAGE, "budget")), min(int(params.value(PAGE, "pairs")), available)
    run_key = (kind, matrix, corpus, budget, top_k)
    if not common.run_gate(
        "Test the pairs on the corpus",
        "search:test_pairs",
        armed_key="search:pairs_armed",
        token=run_key,
        waiting="Press **Test the pairs on the corpus**: one forward pass over the token budget for all pairs "
        "(≈ 1 min per 20,000 tokens on 2 CPU cores for the embedded model), or a second from built dashboards.",
    ):
        return
    result = pairs_view.pairs_test(model, model.fingerprint, kind, matrix, corpus, budget, top_k)
    pairs_view.show(model, result)


def body(model: Model) -> None:
    st.title("Search: token neurons across the whole model")
    n_neurons = model.n_layers * model.d_mlp
    st.markdown(
        f"Every neuron × every token: {n_neurons:,} × {model.d_vocab:,} congruences, streamed in blocks "
        "(never held at once). The first search of a model takes a while; after that the tables come from "
        "the disk cache."
    )
    kind, matrix = inputs()
    # a reopened link whose tables are on disk shows them without a press
    if not common.run_gate(
        "Run search",
        "search:run",
        armed_key="search:armed",
        ready=lambda: search.is_cached(model, matrix),
        waiting="Not computed yet for this model and matrix. Press **Run search** (≈ 15–40 s the "
        "first time on 2 CPU cores; afterwards it is read back from the disk cache).",
    ):
        return
    frame = analyses.search_table(model, model.fingerprint, kind, matrix, TOP_K)
    common.conventions(
        model,
        metric=False,
        extra=f"**Congruence:** {describe(model, matrix)['congruence']} · **Score:** {KIND_HELP[kind]}",
    )
    st.markdown(f"**Top {len(frame)} — click a token cell to open the token, any other cell to open the neuron**")
    columns = ["rank", "label", "token", "congruence", "gap_token", "gap_neuron", "score", "layer", "neuron", "id"]
    cell = common.table(
        frame[columns],
        f"search_{kind}_{matrix}",
        key="search:table",
        select=True,
        height=520,
        display=common.with_visible_tokens(frame[columns]),
    )
    if cell:
        picked = frame.iloc[cell["row"]]
        if cell["column"] in ("token", "id"):
            navigation.go_token(picked["token"])
        navigation.go_neuron_of(picked)
    # the same JSON as `python -m core search --json`
    common.json_download(
        {"model": model.facts(), **describe(model, matrix), **search.to_json(kind, frame)}, f"search_{kind}_{matrix}"
    )
    pairs_section(model, kind, matrix, len(frame))


common.page("Search", body)
