"""Prompt: the app's first door. One text, no pair: its tokens, the top predictions at each position, and the
neurons (and heads) that make the model say what it says there — each one's direct effect next to its total
effect (core.analyses.effects) — plus the neurons that fire unusually on each token (built dashboards)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from core import story
from core.analyses import effects
from core.analyses.drivers import head_label
from core.corpus import dashboards
from core.engine.model import Model
from ui import analyses, charts, common, navigation, params, text

PAGE = "prompt"
PREDICTIONS = 5  # top predictions shown at each position
SHOWN = 20  # neurons in the chart (the table and the downloads hold all top-k)
HEADS_SHOWN = 10
PER_TOKEN = 5  # unusual neurons per token


def page_params(model: Model) -> list[params.Param]:
    return [
        params.Param("prompt", story.pair(model.name)[0]),
        params.Param("answer", ""),
        params.Param("wrong", ""),
        params.Param("position", None, params.whole_number("position", 0, model.n_ctx - 1)),
        params.Param("top_k", effects.DEFAULT_TOP_K, params.whole_number("top_k", 1, model.n_layers * model.d_mlp)),
        params.Param("ablation", "zero", params.choice("ablation", effects.ABLATIONS)),
    ]


def key(name: str) -> str:
    return params.key(PAGE, name)


def inputs(model: Model) -> dict[str, Any]:
    spec = page_params(model)
    params.bind(PAGE, spec)
    left, right = st.columns([3, 1])
    left.text_area("Prompt", key=key("prompt"), height=100, persist_state="session")
    right.text_input(
        "Answer token (optional)",
        key=key("answer"),
        persist_state="session",
        help="Empty: the model's own top-1 token at the position. One token with its leading space, e.g. ' an'",
    )
    right.text_input(
        "Wrong token (optional)",
        key=key("wrong"),
        persist_state="session",
        help="With an answer: the metric is logit(answer) − logit(wrong)",
    )
    a, b = right.columns(2)
    a.number_input("Top-k", key=key("top_k"), min_value=1, step=10, persist_state="session", help="totals computed")
    b.selectbox(
        "Ablation",
        effects.ABLATIONS,
        key=key("ablation"),
        persist_state="session",
        help="total effect = metric change when the neuron is set to zero, or to its corpus mean (built dashboards)",
    )
    params.publish(PAGE, spec)
    return {name: params.value(PAGE, name) for name in ("prompt", "answer", "wrong", "position", "top_k", "ablation")}


def pick_position(prompt: Any, predictions: pd.DataFrame, position: int) -> None:
    """The top predictions after every position, one row per position; a click picks that position."""
    rows = []
    for pos, group in predictions.groupby("position", sort=True):
        best = group.iloc[0]
        rows.append(
            {
                "position": int(pos),
                "token": charts.shown(best["token"]),
                "top-1 next": charts.shown(best["prediction"]),
                "p": float(best["prob"]),
                "then": "  ".join(f"{charts.shown(t)} {p:.2f}" for t, p in zip(group.prediction[1:], group.prob[1:])),
            }
        )
    frame = pd.DataFrame(rows)
    clicked = common.table(
        frame,
        "predictions_per_position",
        key="prompt:predictions",
        select=True,
        height=min(38 + 35 * len(frame), 320),
        column_config={"p": st.column_config.ProgressColumn("p", format="%.3f", min_value=0, max_value=1)},
    )
    st.caption(f"Position {position} is analysed below. Click a row to pick another position.")
    if clicked and int(frame.iloc[clicked["row"]]["position"]) != position:
        chosen = int(frame.iloc[clicked["row"]]["position"])
        st.session_state[key("position")] = None if chosen == len(prompt.ids) - 1 else chosen
        st.rerun()


def neuron_rows(model: Model, result: effects.Effects) -> pd.DataFrame:
    """The verified neurons with their atlas classes and the token each writes (W_U congruence)."""
    frame = result.frame()
    facts = analyses.neuron_facts(
        model, model.fingerprint, tuple((int(l), int(n)) for l, n in zip(frame.layer, frame.neuron))
    )
    writes = [
        top if act >= 0 else bottom for act, top, bottom in zip(frame.activation, facts.top_token, facts.bottom_token)
    ]
    return frame.assign(
        top_token=facts.top_token.to_numpy(),
        top_congruence=facts.top_congruence.to_numpy(),
        writes=writes,
        atlas=facts.atlas.to_numpy(),
    )


def neuron_links(model: Model, text_value: str, position: int, layer: int, neuron: int) -> list[tuple[str, str, dict]]:
    """Where a neuron of this prompt can be opened: (page, label, query). Pages that study one neuron on one prompt
    add their link here."""
    name = f"L{layer}.N{neuron}"
    return [
        (
            "neuron",
            f"{name} on the Neuron page",
            {"layer": str(layer), "neuron": str(neuron), "prompt": text_value, "position": str(position)},
        ),
        ("steer", f"Steer {name}: change it and watch what the model writes", {"neuron": name, "prompt": text_value}),
    ]


def neurons_section(model: Model, result: effects.Effects, text_value: str) -> None:
    metric = result.target.description
    frame = neuron_rows(model, result)
    st.subheader("The neurons that matter here")
    cancelled = int(frame.cancelled.sum())
    st.markdown(
        f"Top {len(frame)} neurons by |direct effect| on **{text.literal(metric)}** at position {result.position}; "
        f"**{cancelled}** of them are cancelled (later layers take back more than half of what they write)."
    )
    query = {"prompt": text_value, "position": str(result.position)}
    common.neuron_chart(
        charts.effects_bars(
            frame.head(SHOWN), "neuron", metric, f"Direct vs total effect, top {min(SHOWN, len(frame))} neurons"
        ),
        key="prompt:neurons_chart",
        **query,
    )
    st.caption("Click a bar or a row to open the neuron.")
    shown = frame[
        [
            "rank",
            "label",
            "layer",
            "neuron",
            "activation",
            "direct",
            "total",
            "ratio",
            "kind",
            "writes",
            "top_token",
            "atlas",
        ]
    ]
    display = shown.assign(writes=shown.writes.map(charts.shown), top_token=shown.top_token.map(charts.shown))
    common.neuron_table(shown, "top_neurons", key="prompt:neurons_table", query=query, display=display, height=320)
    if frame.atlas.isna().all():
        st.caption(
            "Atlas classes: not built for this model (the Atlas page builds them, or "
            f"`python -m core atlas --model {model.name}`)."
        )
    best = frame.iloc[0]
    columns = st.columns(4)
    for column, (page, label, link_query) in zip(
        columns, neuron_links(model, text_value, result.position, int(best.layer), int(best.neuron))
    ):
        column.page_link(
            navigation.path(page),
            label=label,
            icon=":material/arrow_forward:",
            query_params=navigation.with_model(link_query),
        )


def heads_section(model: Model, result: effects.Effects, text_value: str) -> None:
    st.subheader("Heads")
    heads = result.heads[result.heads.verified].head(HEADS_SHOWN)
    event = st.plotly_chart(
        charts.effects_bars(heads, "head", result.target.description, "Direct vs total effect, top heads"),
        key="prompt:heads_chart",
        on_select="rerun",
        selection_mode="points",
    )
    clicked = navigation.neuron_from_point(event)  # [layer, head, …]: the same customdata shape
    row = common.table(result.heads, "top_heads", key="prompt:heads_table", select=True, height=250)
    if row:
        chosen = result.heads.iloc[row["row"]]
        clicked = int(chosen.layer), int(chosen["head"])
    st.caption("Click a head to see its attention pattern on this prompt (Logit lens page).")
    if clicked:
        query = {"prompt": text_value, "head": head_label(*clicked)}
        if len(result.target.tokens) == 2:
            query |= {"answer": result.target.tokens[0], "wrong": result.target.tokens[1]}
        st.switch_page(navigation.path("lens"), query_params=navigation.with_model(query))


def unusual_section(model: Model, text_value: str) -> None:
    st.subheader("Which neurons fire unusually on each token")
    spec = analyses.built_dashboards(model)
    if spec is None:
        dataset = dashboards.plan(model, dashboards.DashboardSpec(), contexts=False).spec.dataset
        st.info(
            "Needs every neuron's corpus histogram: build the dashboards once with "
            f"`python -m core dashboards build --model {model.name} --corpus {dataset}` (or from the Neuron page)."
        )
        return
    frame = analyses.unusual_neurons(model, model.fingerprint, text_value, spec, PER_TOKEN)
    st.caption(
        f"Rarity against each neuron's own activations over {spec.max_tokens:,} tokens of "
        f"{text.literal(spec.dataset)}: the share of corpus positions where it fires at least this far out "
        "(high or low)."
    )
    common.neuron_chart(charts.unusual_strip(frame), key="prompt:unusual_chart", prompt=text_value)
    common.neuron_table(frame, "unusual_neurons", key="prompt:unusual_table", query={"prompt": text_value}, height=250)


def body(model: Model) -> None:
    st.title("Prompt")
    st.markdown(
        "Type any text: which neurons make the model say what it says? Each neuron's **direct effect** is what it "
        "writes straight into the prediction; its **total effect** is what is lost when it is switched off, after "
        "every later layer has reacted. Where the two differ, later layers cancel or amplify it."
    )
    chosen = inputs(model)
    text_value = chosen["prompt"]
    prompt, predictions = analyses.position_predictions(model, model.fingerprint, text_value, PREDICTIONS)
    st.markdown(f"**Tokenization** — {len(prompt.ids)} tokens (␣ = space, small number = token id)")
    st.markdown(text.chips(prompt.pieces, prompt.ids), unsafe_allow_html=True)
    position = effects.check_position(prompt, chosen["position"])
    pick_position(prompt, predictions, position)

    ablation = chosen["ablation"]
    spec = analyses.built_dashboards(model) if ablation == "mean" else None
    if ablation == "mean" and spec is None:
        dashboards.largest_built(model, None, "mean ablation")  # raises: one line with the build command
    result = analyses.top_neurons(
        model,
        model.fingerprint,
        text_value,
        chosen["answer"] or None,
        chosen["wrong"] or None,
        chosen["position"],
        int(chosen["top_k"]),
        ablation,
        spec,
    )
    analyses.reopened_caption(result)
    a, b, c = st.columns(3)
    a.metric("metric", f"{result.metric:.3f}", help=text.literal(result.target.description))
    b.metric("target", " − ".join(charts.shown(t) for t in result.target.tokens), help=result.target.chosen)
    c.metric("position", f"{result.position}: {charts.shown(prompt.pieces[result.position])}")
    common.conventions(
        model,
        metric=False,
        extra=f"**Metric:** {text.literal(result.target.description)} at position {result.position} "
        f"({'the model’s top-1 there' if result.target.chosen == 'top-1' else 'given'}) · **Direct effect:** "
        "activation × the neuron's output read through the final norm (and any post-MLP norm) with the norm's "
        "scale frozen at this run: all direct effects, heads, embedding and biases sum to the metric · "
        f"**Total effect:** metric − metric with the neuron at this position set to "
        f"{'zero' if ablation == 'zero' else 'its corpus mean'}, recomputed exactly through every later layer · "
        f"**Cancelled:** |total| < {effects.CANCEL_BELOW} × |direct|",
    )
    with common.Section():
        neurons_section(model, result, text_value)
    with common.Section():
        heads_section(model, result, text_value)
    with common.Section():
        unusual_section(model, text_value)
    # the same JSON as `python -m core top-neurons --json` with the same inputs (tests/test_app.py checks)
    common.json_download(result.to_json(), "top_neurons")


common.page("Prompt", body)
