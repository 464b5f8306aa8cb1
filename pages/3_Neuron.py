"""One neuron (?layer=L&neuron=N): the tokens it writes (congruence), its activation on a prompt, what drives it
(its input split over upstream components, path patching with a corrupted prompt, attention patterns), and a
corpus scan."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from core import story
from core.analyses import atlas
from core.analyses.congruence import MATRICES, check_neuron, describe, label
from core.analyses.drivers import Drivers, head_label, parse_head
from core.engine.model import Model
from ui import analyses, charts, common, dashboard_view, navigation, params, text
from ui.common import Section

PAGE = "neuron"
TOP_K = 20


def key(name: str) -> str:
    return params.key(PAGE, name)


def page_params(model: Model) -> list[params.Param]:
    return [
        params.Param("layer", None, params.whole_number("layer", 0, model.n_layers - 1)),
        params.Param("neuron", None, params.whole_number("neuron", 0, model.d_mlp - 1)),
        params.Param("matrix", "W_U", params.choice("matrix", MATRICES)),
        params.Param("prompt", story.pair(model.name)[0]),
        params.Param("position", None, params.whole_number("position", 0)),
        params.Param("corrupted", ""),
        params.Param("answer", story.ANSWER),
        params.Param("wrong", story.WRONG),
        params.Param("head", None, lambda text: parse_head(model, text), lambda value: head_label(*value)),
        params.Param("mlp", None, params.whole_number("mlp", 0, model.n_layers - 1)),
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
        known = story.KNOWN_NEURONS.get(model.name)
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
                navigation.go_token(frame.iloc[clicked["row"]]["token"])
    st.plotly_chart(charts.congruence_histogram(result.values, result.top, result.bottom), key="neuron:histogram")
    return result.to_json(), best["token"]


def activation_section(model: Model, layer: int, neuron: int) -> dict:
    st.subheader("Activation on a prompt")
    st.text_area("Prompt", key=key("prompt"), height=80, persist_state="session")
    prompt = params.value(PAGE, "prompt")
    frame = analyses.neuron_activations(model, model.fingerprint, prompt, layer, neuron)
    peak = int(frame["activation"].abs().idxmax())  # a neuron may do its job firing negative (Gemma 3's L13.N1278)
    st.markdown(
        text.activation_text(list(frame["token"]), list(frame["activation"]), highlight=peak), unsafe_allow_html=True
    )
    st.caption(
        f"Blue = positive, red = negative, hover for values; outlined: the largest in magnitude "
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


def clicked_component(event: Any) -> tuple[str, int, int] | None:
    """(kind, layer, head) of a clicked bar of charts.drivers_bar (customdata [kind, layer, head, …])."""
    selection = (event or {}).get("selection") or {}
    for point in selection.get("points", []) or []:
        data = point.get("customdata")
        if isinstance(data, dict):
            data = [data[k] for k in sorted(data, key=int)]
        if isinstance(data, (list, tuple)) and len(data) >= 3:
            return str(data[0]), int(data[1]), int(data[2])
    return None


def select(kind: str, layer: int, head: int) -> None:
    """A clicked component: a head opens its attention pattern, an MLP its neurons that drive this one."""
    if kind == "head":
        st.session_state[key("head")] = (layer, head)
    elif kind == "mlp":
        st.session_state[key("mlp")] = layer


def drivers_inputs() -> tuple[int | None, str | None, str, str]:
    """The section's own inputs: an optional corrupted prompt, the position, the answer and wrong tokens."""
    cols = st.columns([4, 1, 1, 1])
    cols[0].text_area(
        "Corrupted prompt (optional)",
        key=key("corrupted"),
        height=80,
        persist_state="session",
        help="Same number of tokens as the prompt above; e.g. apple → lemon",
    )
    cols[1].number_input(
        "Position", key=key("position"), min_value=0, step=1, persist_state="session", placeholder="last"
    )
    cols[2].text_input("Answer token", key=key("answer"), persist_state="session", help="for the logit-diff score")
    cols[3].text_input("Wrong token", key=key("wrong"), persist_state="session")
    position, corrupted = params.value(PAGE, "position"), params.value(PAGE, "corrupted") or None
    return position, corrupted, params.value(PAGE, "answer"), params.value(PAGE, "wrong")


def decomposition_view(model: Model, result: Drivers, layer: int, neuron: int, corrupted: str | None) -> None:
    """The neuron's input split over upstream components: headline metrics, the bar chart and the table (a click
    on a head or an MLP selects it)."""
    p = result.position
    metrics = st.columns(2 + len(result.inputs))
    metrics[0].metric("activation", f"{result.post_activation:+.3f}", help=f"at position {p}")
    for column, (name, value) in zip(metrics[1:], result.inputs.items()):
        column.metric(f"{name} pre-activation", f"{value:+.3f}")
    metrics[-1].metric("input norm scale (frozen)", f"{result.norm_scale:.3f}")
    common.conventions(
        model,
        metric=corrupted is not None,
        extra=f"position {p} ({text.literal(charts.shown(result.prompt.pieces[p]))}); "
        f"{result.conventions['position_convention']}; {result.conventions['norm_note']}; "
        f"{result.conventions['share_note']}",
    )
    left, right = st.columns([3, 2])
    with left:
        event = st.plotly_chart(
            charts.drivers_bar(result.components, f"What drives {label(layer, neuron)} at position {p}"),
            key="neuron:drivers_chart",
            on_select="rerun",
            selection_mode="points",
        )
        if clicked := clicked_component(event):
            select(*clicked)
        st.caption("Click a head to see its attention pattern, an MLP to see its neurons that drive this one.")
    with right:
        select_row(result.components, f"{label(layer, neuron)}_drivers", "neuron:drivers", 420)


def path_patching_view(result: Drivers, layer: int, neuron: int) -> None:
    """Each component's clean output put back only on its direct path into the neuron (when a pair is given)."""
    facts = result.pair or {}
    st.markdown(
        f"**Path patching into {label(layer, neuron)}** — activation at position {result.position}: clean "
        f"{facts['clean_activation']:+.3f}, corrupted {facts['corrupted_activation']:+.3f}. "
        "neuron_restored = (patched − corrupted) / (clean − corrupted) activation; logit_diff_restored = the "
        "logit-diff score with the neuron so patched at every position."
    )
    if "neuron_restored_note" in facts:
        st.info(facts["neuron_restored_note"])
    select_row(result.path_patching, f"{label(layer, neuron)}_path_patching", "neuron:paths", 320)


def select_row(frame: pd.DataFrame, name: str, table_key: str, height: int) -> None:
    """A table of components; a click on a row selects its head or MLP."""
    row = common.table(frame, name, key=table_key, select=True, height=height)
    if row:
        picked = frame.iloc[row["row"]]
        select(str(picked["kind"]), int(picked["layer"]), int(picked["head"]))


def drivers_section(model: Model, layer: int, neuron: int) -> dict:
    st.subheader("What drives it")
    st.markdown(
        "The neuron's input at one position, split over every upstream component: the embedding, each head, "
        "each earlier MLP and the biases. Give a corrupted prompt (same number of tokens) for **path patching**: "
        "each component's clean output put back *only* on its direct path into this neuron."
    )
    prompt = params.value(PAGE, "prompt")
    position, corrupted, answer, wrong = drivers_inputs()
    side_by_side = dashboard_view.clean_vs_corrupted(model, layer, neuron, prompt, corrupted)
    result = analyses.drivers_view(model, model.fingerprint, prompt, layer, neuron, position, corrupted, answer, wrong)
    analyses.reopened_caption(result)
    decomposition_view(model, result, layer, neuron, corrupted)
    payload: dict = {"drivers": result.to_json(), **side_by_side}
    if result.path_patching is not None:
        path_patching_view(result, layer, neuron)
    params.publish(PAGE, page_params(model))
    head, mlp = params.value(PAGE, "head"), params.value(PAGE, "mlp")
    if head is not None:
        payload.update(head_view(model, prompt, head, (layer, neuron), result.position))
    if mlp is not None:
        payload.update(mlp_view(model, prompt, layer, neuron, result.position, mlp))
    return payload


def head_view(model: Model, prompt: str, head: tuple[int, int], neuron: tuple[int, int], position: int) -> dict:
    name = head_label(*head)
    st.markdown(
        f"**Head {name}** — its attention pattern on the prompt, and where it reads from at position {position}"
    )
    pattern = analyses.attention_view(model, model.fingerprint, prompt, *head)
    left, right = st.columns(2)
    left.plotly_chart(
        charts.attention_heatmap(pattern.pattern, pattern.prompt.pieces, f"{name} attention pattern", position),
        key="neuron:pattern",
    )
    out: dict = {"attention": pattern.to_json()}
    with right:
        frame = analyses.reads_from_view(model, model.fingerprint, prompt, head, neuron, position)
        st.plotly_chart(
            charts.reads_from_bar(frame, f"{name} at position {position}: reads from, and moves into the neuron"),
            key="neuron:reads_from",
        )
        common.table(
            frame, f"{name}_reads_from", key="neuron:reads_from_table", display=common.with_visible_tokens(frame)
        )
        out["reads_from"] = frame
    return out


def mlp_view(model: Model, prompt: str, layer: int, neuron: int, position: int, mlp: int) -> dict:
    st.markdown(f"**MLP {mlp}'s neurons that drive {label(layer, neuron)}** (first-order share) — click one to open it")
    frame = analyses.upstream_view(model, model.fingerprint, prompt, layer, neuron, position, mlp)
    common.neuron_table(frame, f"mlp{mlp}_drivers_of_{label(layer, neuron)}", key="neuron:upstream")
    return {"upstream_neurons": frame}


def corpus_section(model: Model, layer: int, neuron: int, target: str) -> dict:
    """Max-activating examples, density and histogram from the built dashboards (a Build button when none are),
    and a link to the Corpus page's scan with every option."""
    payload = dashboard_view.dashboard_section(model, layer, neuron)
    name = label(layer, neuron)
    st.page_link(
        navigation.path("corpus"),
        label=f"Corpus page for {name}: the post's chart (activation bins vs top-1 {charts.shown(target)!r})",
        icon=":material/menu_book:",
        query_params=navigation.with_model({"neurons": name, "target": target}),
    )
    return payload


def atlas_line(model: Model, layer: int, neuron: int) -> dict:
    """The neuron's class in the atlas and its vocabulary moments, from the disk cache only (never computes)."""
    entry = atlas.cached_neuron(model, layer, neuron)
    if entry is None:
        st.caption("Atlas class: not computed yet for this model (Atlas page or `python -m core atlas`).")
        return {}
    label_text = f" · {text.literal(entry['label'])}" if entry["label"] else ""
    st.markdown(
        f"**Atlas:** {', '.join(entry['classes']) or 'no class'}{label_text} · kurtosis {entry['kurtosis']:.2f}, "
        f"skew {entry['skew']:+.2f}, σ {entry['std']:.4f}, stand-out gap {entry['gap']:.2f} σ, "
        f"null-space share {entry['null_space_share']:.3f}, ‖w‖ {entry['norm']:.2f}"
    )
    return {"atlas": entry}


def body(model: Model) -> None:
    title = st.empty()  # filled once the neuron is known: the inputs below decide it
    title.title("Neuron")
    chosen = chosen_neuron(model)
    if chosen is None:
        return
    layer, neuron = chosen
    matrix = params.value(PAGE, "matrix")
    title.title(f"Neuron {label(layer, neuron)}")
    navigation.steer_link(layer, neuron, params.value(PAGE, "prompt"))
    # the head is `python -m core congruence --neuron … --json`; the page adds the activations and the scan
    congruence, target = congruence_section(model, layer, neuron, matrix)
    payload: dict = {"model": model.facts(), **describe(model, matrix), **congruence}
    payload.update(atlas_line(model, layer, neuron))
    with Section():
        payload.update(activation_section(model, layer, neuron))
    with Section():
        payload.update(drivers_section(model, layer, neuron))
    with Section():
        payload.update(corpus_section(model, layer, neuron, target))
    common.json_download(payload, f"neuron_{label(layer, neuron)}_{matrix}")


common.page("Neuron", body)
