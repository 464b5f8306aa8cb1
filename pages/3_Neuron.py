"""One neuron (?layer=L&neuron=N): the tokens it writes (congruence), its activation on a prompt, and a corpus scan."""

from __future__ import annotations

import streamlit as st

from core import post
from core.congruence import MATRICES, check_neuron, describe, label
from core.model import Model
from ui import analyses, charts, common, params, scan_view, text
from ui.common import Section

PAGE = "neuron"
TOP_K = 20
SCAN_TOKENS = 5000  # a quick look; the Corpus page sets the budget


def key(name: str) -> str:
    return params.key(PAGE, name)


def page_params(model: Model) -> list[params.Param]:
    return [
        params.Param("layer", None, params.whole_number("layer", 0, model.n_layers - 1)),
        params.Param("neuron", None, params.whole_number("neuron", 0, model.d_mlp - 1)),
        params.Param("matrix", "W_U", params.choice("matrix", MATRICES)),
        params.Param("prompt", post.CLEAN),
    ]


def chosen_neuron(model: Model) -> tuple[int, int] | None:
    spec = page_params(model)
    params.bind(PAGE, spec)
    cols = st.columns([1, 1, 2])
    cols[0].number_input(
        "Layer", key=key("layer"), min_value=0, step=1, persist_state="session", placeholder=f"0..{model.n_layers - 1}"
    )
    cols[1].number_input(
        "Neuron", key=key("neuron"), min_value=0, step=1, persist_state="session", placeholder=f"0..{model.d_mlp - 1}"
    )
    common.matrix_select(cols[2], key("matrix"))
    params.publish(PAGE, spec)
    layer, neuron = params.value(PAGE, "layer"), params.value(PAGE, "neuron")
    if layer is None and neuron is None:
        known = post.KNOWN_NEURONS.get(model.name)
        if known is None:
            st.info("Choose a layer and a neuron, or click a neuron on the Patching, Token or Search page.")
            return None
        st.caption(f"No neuron in the URL: showing {label(*known)}, the an-neuron of {text.literal(model.name)}.")
        return known
    if layer is None or neuron is None:
        st.info("Give both a layer and a neuron.")
        return None
    return check_neuron(model, int(layer), int(neuron))


def congruence_section(model: Model, layer: int, neuron: int, matrix: str) -> tuple[dict, str]:
    """The congruence of the neuron with every token; returns its JSON and its top token."""
    result = analyses.neuron_tokens(model, model.fingerprint, layer, neuron, matrix, TOP_K)
    best = result.top.iloc[0]
    n_all = model.n_layers * model.d_mlp
    cols = st.columns(3)
    top_token = text.literal(charts.shown(best["token"]))
    cols[0].metric("top token", top_token, help=f"id {best['id']}")
    cols[1].metric("its congruence", f"{best['congruence']:.3f}")
    cols[2].metric(
        f"rank among all {n_all:,} neurons for {top_token}",
        f"#{result.top_token_rank_among_neurons}",
        help="1 = no other neuron is more congruent with this neuron's top token",
    )
    common.conventions(model, metric=False, extra=f"**Congruence:** {describe(model, matrix)['congruence']}")
    left, right = st.columns(2)
    for column, frame, title, name in (
        (left, result.top, "Most congruent tokens", "top"),
        (right, result.bottom, "Least congruent tokens", "bottom"),
    ):
        with column:
            st.markdown(f"**{title}** — click one to see every neuron's congruence with it")
            clicked = common.table(
                frame,
                f"{label(layer, neuron)}_{matrix}_{name}_tokens",
                key=f"neuron:{name}",
                select=True,
                display=common.with_visible_tokens(frame),
            )
            if clicked:
                common.go_token(frame.iloc[clicked["row"]]["token"])
    st.plotly_chart(charts.congruence_histogram(result.values, result.top, result.bottom), key="neuron:histogram")
    return result.to_json(), best["token"]


def activation_section(model: Model, layer: int, neuron: int) -> dict:
    st.subheader("Activation on a prompt")
    st.text_area("Prompt", key=key("prompt"), height=80, persist_state="session")
    prompt = params.value(PAGE, "prompt")
    frame = analyses.neuron_activations(model, model.fingerprint, prompt, layer, neuron)
    peak = int(frame["activation"].idxmax())
    st.markdown(
        text.activation_text(list(frame["token"]), list(frame["activation"]), highlight=peak), unsafe_allow_html=True
    )
    st.caption(
        f"Blue = positive, red = negative, hover for values; outlined: the maximum "
        f"({frame['activation'].iloc[peak]:+.3f} on {text.literal(charts.shown(frame['token'].iloc[peak]))}). "
        f"Activation = {model.facts()['neuron_activation']}. {model.bos_convention()}."
    )
    with st.expander("Activation table"):
        common.table(
            frame,
            f"{label(layer, neuron)}_activations",
            key="neuron:activations",
            display=common.with_visible_tokens(frame),
        )
    return {"prompt": prompt, "activations": frame}


def corpus_section(model: Model, layer: int, neuron: int, target: str) -> dict:
    st.subheader("On a corpus")
    name = label(layer, neuron)
    st.caption(
        f"Scans {SCAN_TOKENS:,} tokens of the bundled corpus: {name}'s activation, binned, against how often "
        f"the model's top-1 prediction is its top token {text.literal(charts.shown(target))}. The Corpus page "
        "has every option (corpus, several neurons, token budget)."
    )
    st.page_link(
        common.PAGES["corpus"],
        label=f"Corpus page for {name}",
        icon=":material/menu_book:",
        query_params=common.with_model({"neurons": name, "target": target}),
    )
    if not common.run_gate(
        f"Scan the corpus for {name}",
        "neuron:scan",
        armed_key="neuron:scan_armed",
        token=(layer, neuron, target),
        primary=False,
    ):
        return {}
    view = analyses.corpus_scan(model, model.fingerprint, None, ((layer, neuron),), target, SCAN_TOKENS, 0.5, 10, 12)
    scan_view.neuron_scan(name, view.neurons[name], target, key="neuron:scan")
    return {"scan": view.payload}


def body(model: Model) -> None:
    title = st.empty()  # filled once the neuron is known: the inputs below decide it
    title.title("Neuron")
    chosen = chosen_neuron(model)
    if chosen is None:
        return
    layer, neuron = chosen
    matrix = params.value(PAGE, "matrix")
    title.title(f"Neuron {label(layer, neuron)}")
    # the head is `python -m core congruence --neuron … --json`; the page adds the activations and the scan
    congruence, target = congruence_section(model, layer, neuron, matrix)
    payload: dict = {"model": model.facts(), **describe(model, matrix), **congruence}
    with Section():
        payload.update(activation_section(model, layer, neuron))
    with Section():
        payload.update(corpus_section(model, layer, neuron, target))
    common.json_download(payload, f"neuron_{label(layer, neuron)}_{matrix}")


common.page("Neuron", body)
