"""Searches over every neuron × every token: stand-out tokens and mutual-exclusive neuron ↔ token pairs."""

from __future__ import annotations

import streamlit as st

from core.analyses import search
from core.analyses.congruence import MATRICES, describe
from core.analyses.search import KIND_HELP, KINDS
from core.engine.model import Model
from ui import analyses, common, navigation, params

PAGE = "search"
PARAMS = [
    params.Param("kind", "mutual", params.choice("kind", KINDS)),
    params.Param("matrix", "W_U", params.choice("matrix", MATRICES)),
]
TOP_K = 100


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


common.page("Search", body)
