"""One token (?token=…): every neuron's congruence with it, and the neurons that write it most."""

from __future__ import annotations

import streamlit as st

from core import story
from core.analyses.congruence import MATRICES, describe, label
from core.engine.model import Model
from ui import analyses, charts, common, params, text

PAGE = "token"
TOP_K = 20


def key(name: str) -> str:
    return params.key(PAGE, name)


PARAMS = [params.Param("token", story.ANSWER), params.Param("matrix", "W_U", params.choice("matrix", MATRICES))]


def inputs() -> tuple[str, str]:
    params.bind(PAGE, PARAMS)
    left, right = st.columns([1, 2])
    left.text_input(
        "Token",
        key=key("token"),
        persist_state="session",
        help="One token with its leading space, e.g. ' an' (spaces matter)",
    )
    common.matrix_select(right, key("matrix"))
    params.publish(PAGE, PARAMS)
    return params.value(PAGE, "token"), params.value(PAGE, "matrix")


def body(model: Model) -> None:
    st.title("Token")
    st.markdown("Which neurons write this token? Congruence = a neuron's output weights · the token's vector.")
    token, matrix = inputs()
    result = analyses.token_neurons(model, model.fingerprint, token, matrix, TOP_K)
    st.markdown(text.chips([token], [result.token_id]), unsafe_allow_html=True)
    best = result.top.iloc[0]
    cols = st.columns(3)
    cols[0].metric("most congruent neuron", best["label"])
    cols[1].metric("its congruence", f"{best['congruence']:.3f}")
    cols[2].metric(
        f"rank of {text.literal(charts.shown(token))} among {best['label']}'s tokens",
        f"#{result.token_rank_for_top_neuron}",
        help="1 = the top neuron likes no token more than this one (a mutual pair)",
    )
    common.conventions(model, metric=False, extra=f"**Congruence:** {describe(model, matrix)['congruence']}")

    common.neuron_chart(charts.token_scatter(result.values, result.top), "token:scatter")
    left, right = st.columns([2, 3])
    with left:
        st.markdown(f"**Top {TOP_K} neurons** — click a row to open the neuron's page")
        common.neuron_table(result.top, f"token_{token}_{matrix}_top_neurons", key="token:top")
    with right:
        common.neuron_chart(charts.per_layer_bar(result.per_layer), "token:per_layer")
        per_layer = result.per_layer.assign(
            label=[label(layer, neuron) for layer, neuron in zip(result.per_layer["layer"], result.per_layer["neuron"])]
        )
        common.table(per_layer, f"token_{token}_{matrix}_per_layer", key="token:per_layer_table", height=200)
    # the same JSON as `python -m core congruence --token … --json`
    common.json_download(
        {"model": model.facts(), **describe(model, matrix), **result.to_json()}, f"token_{token}_{matrix}"
    )


common.page("Token", body)
