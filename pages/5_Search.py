"""Searches over every neuron × every token: stand-out tokens and mutual-exclusive neuron ↔ token pairs."""

from __future__ import annotations

import streamlit as st

from core.congruence import MATRICES, MATRIX_HELP, describe
from core import search
from core.search import KINDS
from ui import analyses, common, params
from ui.export import jsonable

PAGE = "search"
KIND_HELP = {
    "standout": "for every token, its most congruent neuron; ranked by the gap to the token's second neuron "
                "(score = gap_neuron)",
    "mutual": "pairs where the neuron's top token is t AND t's top neuron is the neuron; score = the neuron's "
              "top-2 token gap × the token's top-2 neuron gap",
}
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
    left.selectbox("Search", KINDS, key=key("kind"), persist_state="session",
                   format_func=lambda k: f"{k}: {KIND_HELP[k]}")
    right.selectbox("Token vectors", MATRICES, key=key("matrix"), persist_state="session",
                    format_func=lambda m: f"{m}: {MATRIX_HELP[m]}")
    params.publish(PAGE, PARAMS)
    return params.value(PAGE, "kind"), params.value(PAGE, "matrix")


def body() -> None:
    st.title("Search: token neurons across the whole model")
    n_neurons = model.n_layers * model.d_mlp
    st.markdown(f"Every neuron × every token: {n_neurons:,} × {model.d_vocab:,} congruences, streamed in blocks "
                "(never held at once). The first search of a model takes a while; after that the tables come from "
                "the disk cache.")
    kind, matrix = inputs()
    if st.button("Run search", type="primary", key="search:run"):
        st.session_state["search:armed"] = True
    if not st.session_state.get("search:armed"):
        if search.is_cached(model, matrix):  # a reopened link whose tables are on disk: show them
            st.session_state["search:armed"] = True
        else:
            st.info("Not computed yet for this model and matrix. Press **Run search** (≈ 15–40 s the first time on "
                    "2 CPU cores; afterwards it is read back from the disk cache).")
            return
    frame = analyses.search_table(model, model.fingerprint, kind, matrix, TOP_K)
    common.conventions(model, metric=False, extra=f"**Congruence:** {describe(model, matrix)['congruence']} · "
                                                  f"**Score:** {KIND_HELP[kind]}")
    st.markdown(f"**Top {len(frame)} — click a token cell to open the token, any other cell to open the neuron**")
    columns = ["rank", "label", "token", "congruence", "gap_token", "gap_neuron", "score", "layer", "neuron", "id"]
    cell = common.table(frame[columns], f"search_{kind}_{matrix}", key="search:table", select=True, height=520,
                        display=common.with_visible_tokens(frame[columns]))
    if cell:
        picked = frame.iloc[cell["row"]]
        if cell["column"] in ("token", "id"):
            common.go_token(picked["token"])
        common.go_neuron(int(picked["layer"]), int(picked["neuron"]))
    common.json_download(jsonable({
        "model": model.facts(), **describe(model, matrix), "kind": kind, "score": KIND_HELP[kind],
        "results": frame[["layer", "neuron", "token", "id", "congruence", "score", "gap_token", "gap_neuron"]],
    }), f"search_{kind}_{matrix}")


model = common.setup_page("Search")
if model is not None:
    common.run_page(body)
