"""Logit lens: the prompt's tokens, the top predictions, the logit diff after every sublayer, and its direct
attribution to each component and head (click a head: its attention pattern)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from core import story
from core.analyses.drivers import head_label, parse_head
from core.engine.model import Model
from ui import analyses, charts, common, navigation, params, text
from ui.export import jsonable

PAGE = "lens"
PARAMS = [params.Param("prompt", story.CLEAN), params.Param("answer", story.ANSWER), params.Param("wrong", story.WRONG)]


def page_params(model: Model) -> list[params.Param]:
    """The inputs, plus the head whose attention pattern is shown (set by a click on the per-head map)."""
    return [*PARAMS, params.Param("head", None, lambda text: parse_head(model, text), lambda v: head_label(*v))]


def key(name: str) -> str:
    return params.key(PAGE, name)


def inputs(model: Model) -> tuple[str, str, str]:
    params.bind(PAGE, page_params(model))
    left, right = st.columns([3, 1])
    left.text_area("Prompt", key=key("prompt"), height=100, persist_state="session")
    right.text_input(
        "Answer token",
        key=key("answer"),
        persist_state="session",
        help="One token, with its leading space: ' an' (spaces matter)",
    )
    right.text_input("Wrong token", key=key("wrong"), persist_state="session", help="The alternative, e.g. ' a'")
    params.publish(PAGE, page_params(model))
    return params.value(PAGE, "prompt"), params.value(PAGE, "answer"), params.value(PAGE, "wrong")


def body(model: Model) -> None:
    st.title("Logit lens")
    st.markdown(
        "Where in depth does the model come to prefer the answer? Each sublayer's residual stream is put "
        "through the final norm and the unembedding; direct logit attribution splits the final logit diff "
        "into one term per component."
    )
    prompt, answer, wrong = inputs(model)
    view = analyses.lens_view(model, model.fingerprint, prompt, answer, wrong)
    analyses.reopened_caption(view)
    result = view.result
    lines, dla, heads = analyses.lens_figures(view, model.fingerprint, prompt, answer, wrong)

    st.markdown(f"**Tokenization** — {len(view.prompt.ids)} tokens (␣ = space, small number = token id)")
    st.markdown(text.chips(view.prompt.pieces, view.prompt.ids), unsafe_allow_html=True)
    common.conventions(model)

    last = result.layers.iloc[-1]
    left, right = st.columns([1, 1])  # at 2:3 the table's columns were cut off in a 1400 px window
    with left:
        st.subheader("Top predictions")
        clicked = common.table(
            view.top,
            "top_predictions",
            key="lens:top",
            select=True,
            display=common.with_visible_tokens(view.top),
            column_config={"prob": st.column_config.ProgressColumn("prob", format="%.3f", min_value=0, max_value=1)},
        )
        if clicked:
            navigation.go_token(view.top.iloc[clicked["row"]]["token"])
        st.caption("Click a token to see which neurons write it.")
    with right:
        a, b, c = st.columns(3)
        a.metric(f"P({text.literal(charts.shown(answer))})", f"{last['answer_prob']:.3f}")
        b.metric(f"P({text.literal(charts.shown(wrong))})", f"{last['wrong_prob']:.3f}")
        c.metric("logit diff", f"{result.logit_diff:.3f}")
        st.plotly_chart(lines, key="lens:lines")

    st.subheader("Direct logit attribution")
    common.conventions(model, extra="final norm's scale frozen at its value on the real residual")
    st.plotly_chart(dla, key="lens:dla")
    event = st.plotly_chart(heads, key="lens:heads", on_select="rerun", selection_mode="points")
    if clicked := clicked_head(event):
        st.session_state[key("head")] = clicked
        params.publish(PAGE, page_params(model))
    st.caption("Click a head to see its attention pattern on the prompt.")
    head = params.value(PAGE, "head")
    pattern_json = None
    if head is not None:
        pattern = analyses.attention_view(model, model.fingerprint, prompt, *head)
        name = head_label(*head)
        dla = result.heads[(result.heads.layer == head[0]) & (result.heads["head"] == head[1])].logit_diff.iloc[0]
        st.markdown(f"**Head {name}** — direct logit attribution {dla:+.3f}; its attention pattern (query × key)")
        st.plotly_chart(
            charts.attention_heatmap(pattern.pattern, pattern.prompt.pieces, f"{name} attention pattern", None),
            key="lens:pattern",
        )
        pattern_json = pattern.to_json()

    with st.expander("Tables"):
        for name, frame in (
            ("logit_lens_layers", result.layers),
            ("dla_components", result.components),
            ("dla_heads", result.heads),
        ):
            st.markdown(f"**{name}**")
            common.table(frame, name, key=f"lens:{name}")
    # the same JSON as `python -m core lens --json` (tests/test_app.py checks)
    payload = {"model": model.facts(), **result.to_json(), "top": jsonable(view.top)}
    if pattern_json is not None:  # an extra key: the rest equals `python -m core lens --json`
        payload["attention"] = pattern_json
    common.json_download(payload, "logit_lens")


def clicked_head(event: Any) -> tuple[int, int] | None:
    """(layer, head) of a clicked cell of the per-head map (x = head, y = layer)."""
    selection = (event or {}).get("selection") or {}
    for point in selection.get("points", []) or []:
        if point.get("x") is not None and point.get("y") is not None:
            return int(point["y"]), int(point["x"])
    return None


common.page("Logit lens", body)
