"""Steer: change neurons and watch what the model then writes — baseline and steered text side by side, streamed as
they are generated, and one neuron's dose–response curve. The post's decisive experiment: negate the an-neuron and
" an" becomes " a"."""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from core import story
from core.analyses import generate, steering
from core.analyses.congruence import label, parse_neuron
from core.engine import tokens
from core.engine.model import Model
from core.errors import UserError
from core.serving import jobs, worker
from ui import analyses, common, params, steer_view
from ui.admission import admitted

PAGE = "steer"
OPS = list(steering.OPS)
MAX_SAMPLES = 4
DEFAULT_NEW_TOKENS = 24
# A strip's styles: the first token where the runs part (strong), and everything after it (a light shade: the
# runs have diverged, so comparing them index by index no longer means anything).


def key(name: str) -> str:
    return params.key(PAGE, name)


def finite(what: str):
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise UserError(f"{what} {raw!r} is not a number") from None
        if not math.isfinite(value):
            raise UserError(f"{what} {raw!r} must be a finite number")
        return value

    return parse


def page_params(model: Model) -> list[params.Param]:
    """The inputs; the defaults follow the model: its story prompt and its known an-neuron (core/story.py)."""
    clean, _ = story.STORY_PAIRS.get(model.name, (story.CLEAN, story.CORRUPTED))
    known = story.KNOWN_NEURONS.get(model.name)
    return [
        params.Param("prompt", clean),
        params.Param("neuron", label(*known) if known else "L0.N0"),
        params.Param("op", "negate", params.choice("op", OPS)),
        params.Param("value", 0.0, finite("value"), lambda v: f"{v:g}"),
        params.Param("more", ""),  # further interventions as specs, ';'-separated
        params.Param("positions", "all"),
        params.Param("new", DEFAULT_NEW_TOKENS, params.whole_number("new tokens", 1, generate.new_token_cap())),
        params.Param("temperature", 0.0, finite("temperature"), lambda v: f"{v:g}"),
        params.Param("top_p", 1.0, finite("top-p"), lambda v: f"{v:g}"),
        params.Param("samples", 1, params.whole_number("samples", 1, MAX_SAMPLES)),
        params.Param("answer", story.ANSWER),
        params.Param("wrong", story.WRONG),
    ]


def interventions_table(model: Model) -> str:
    """The extra interventions as an editable table (rows can be added); returns them as ';'-separated specs."""
    seeded = st.session_state.get(key("more_seeded"))
    if seeded != params.value(PAGE, "more"):  # first run, or the URL changed from outside: (re)seed the table
        rows = [s for s in str(params.value(PAGE, "more")).split(";") if s.strip()]
        frame = pd.DataFrame([_row(s) for s in rows], columns=["neuron", "op", "value"])
        st.session_state[key("more_frame")] = frame
        st.session_state[key("more_editor_version")] = st.session_state.get(key("more_editor_version"), 0) + 1
    edited = st.data_editor(
        st.session_state.get(key("more_frame"), pd.DataFrame(columns=["neuron", "op", "value"])),
        num_rows="dynamic",
        key=f"{key('more_editor')}:{st.session_state.get(key('more_editor_version'), 0)}",
        column_config={
            "neuron": st.column_config.TextColumn("neuron", help="L20.N33"),
            "op": st.column_config.SelectboxColumn("op", options=OPS),
            "value": st.column_config.NumberColumn("value", help="ignored by negate"),
        },
        hide_index=True,
    )
    specs = []
    for row in edited.itertuples():
        if not str(row.neuron or "").strip() or not row.op:
            continue
        value = 0.0 if pd.isna(row.value) else float(row.value)
        specs.append(f"{str(row.neuron).strip()}:{row.op}" + ("" if row.op == "negate" else f"={value:g}"))
    joined = ";".join(specs)
    st.session_state[key("more")] = joined
    st.session_state[key("more_seeded")] = joined
    return joined


def _row(spec: str) -> tuple[str, str | None, float | None]:
    head, _, rest = spec.partition(":")
    op, _, value = rest.partition("=")
    try:
        number = float(value) if value else None
    except ValueError:
        number = None
    return head.strip(), op.strip() or None, number


def inputs(model: Model) -> dict:
    all_params = page_params(model)
    params.bind(PAGE, all_params)
    st.text_area("Prompt", key=key("prompt"), height=80, persist_state="session")
    left, mid, right = st.columns([1, 1, 2])
    left.text_input("Neuron", key=key("neuron"), persist_state="session", help="L25.N1527 or 25.1527")
    mid.selectbox(
        "Operation",
        OPS,
        key=key("op"),
        persist_state="session",
        help="; ".join(f"{op}: {what}" for op, what in steering.OP_HELP.items()),
    )
    with right:
        value_slider(model)
    with st.expander(
        "More interventions (applied together with the one above)", expanded=bool(params.value(PAGE, "more"))
    ):
        interventions_table(model)
    cols = st.columns(5)
    cols[0].text_input(
        "Positions",
        key=key("positions"),
        persist_state="session",
        help="all (the prompt and every new token), prompt, new, or prompt indices such as 3,5,-1",
    )
    cols[1].number_input("New tokens", 1, generate.new_token_cap(), key=key("new"), persist_state="session")
    cols[2].number_input(
        "Temperature", 0.0, 5.0, step=0.1, key=key("temperature"), persist_state="session", help="0 = greedy"
    )
    cols[3].number_input("Top-p", 0.01, 1.0, step=0.05, key=key("top_p"), persist_state="session")
    cols[4].number_input(
        "Samples (seeds)", 1, MAX_SAMPLES, key=key("samples"), persist_state="session", help="when sampling"
    )
    params.publish(PAGE, all_params)
    return {p.name: params.value(PAGE, p.name) for p in all_params}


def value_slider(model: Model) -> None:
    """The value, on a slider spanning the neuron's observed range (built dashboards) or ±2× its activation here."""
    op = params.value(PAGE, "op")
    if op == "negate":
        st.caption("negate takes no value: the activation is multiplied by −1 at the chosen positions.")
        return
    try:
        layer, neuron = parse_neuron(model, params.value(PAGE, "neuron"))
        acts = analyses.neuron_activations(model, model.fingerprint, params.value(PAGE, "prompt"), layer, neuron)
    except UserError:
        return  # the neuron or prompt is wrong: the run below says what
    natural = float(acts.activation.iloc[-1])
    seen = observed(model, layer, neuron)
    if op == "scale":
        lo, hi = -5.0, 5.0
    else:
        grid = steering.value_range(natural, seen)
        lo, hi = float(grid[0]), float(grid[-1])
        if op == "direction":
            lo, hi = -max(abs(lo), abs(hi)), max(abs(lo), abs(hi))
    st.session_state[key("value")] = min(max(float(params.value(PAGE, "value")), lo), hi)  # the slider's range
    st.slider("Value", lo, hi, key=key("value"), step=(hi - lo) / 200)
    where = "its range over the built dashboards' corpus" if seen else "±2× its activation here (no dashboards)"
    st.caption(f"natural activation at the last position: **{natural:+.3f}**; slider: {where} ({lo:+.2f}..{hi:+.2f})")


@st.cache_data(show_spinner=False, max_entries=64)
def _observed(_model: Model, fingerprint: str, layer: int, neuron: int) -> tuple[float, float] | None:
    from core.cli.steer import observed_range

    return observed_range(_model, layer, neuron)


def observed(model: Model, layer: int, neuron: int) -> tuple[float, float] | None:
    return _observed(model, model.fingerprint, layer, neuron)


def parsed(model: Model, inp: dict) -> tuple[tokens.Prompt, list[steering.Intervention]]:
    prompt = tokens.prompt(model, inp["prompt"])
    first = inp["neuron"] + ":" + inp["op"] + ("" if inp["op"] == "negate" else f"={float(inp['value']):g}")
    specs = [first, *[s for s in inp["more"].split(";") if s.strip()]]
    return prompt, [steering.parse_intervention(model, s, inp["positions"], len(prompt.ids)) for s in specs]


def generation(model: Model, inp: dict) -> steering.SteerResult:
    """The finished generation for these inputs: from the store, or generated now with both runs streamed."""
    prompt, interventions = parsed(model, inp)
    seeds = tuple(range(int(inp["samples"])))
    run_key = {
        "prompt": prompt.text,
        "interventions": [iv.to_json() for iv in interventions],
        "new": int(inp["new"]),
        "temperature": float(inp["temperature"]),
        "top_p": float(inp["top_p"]),
        "seeds": list(seeds),
    }
    hit = steer_view.remembered(model.fingerprint, run_key)
    if hit is not None:
        return hit
    live = st.empty()  # both strips while they are generated; cleared once the result is drawn below
    with live.container():
        left, right = st.columns(2)
        left.markdown("**Baseline** (generating…)")
        right.markdown("**Steered** (generating…)")
        boxes = (left.empty(), right.empty())
    pieces: tuple[list[str], list[str]] = ([], [])
    rows = len(seeds) if inp["temperature"] > 0 else 1

    def on_token(event) -> None:  # rows 0..n-1 baseline, n..2n-1 steered: show the first sample of each
        for variant, row in ((0, 0), (1, rows)):
            if not event.finished[row] or len(pieces[variant]) == event.step:
                pieces[variant].append(model.token_str(event.token_ids[row]))
            boxes[variant].markdown(steer_view.live_strip(pieces[variant]), unsafe_allow_html=True)

    with admitted("steered generation"):  # in a worker process on a hosted server; its tokens stream back
        result = worker.run(
            jobs.steer,
            model,
            prompt.text,
            [iv.spec for iv in interventions],
            inp["positions"],
            int(inp["new"]),
            float(inp["temperature"]),
            float(inp["top_p"]),
            seeds,
            on_event=on_token,
        )
    live.empty()
    steer_view.remember(model.fingerprint, run_key, result)
    return result


def show_generation(model: Model, result: steering.SteerResult) -> None:
    analyses.reopened_caption(result)
    frame = result.frame()
    change = result.first_change()
    if change is None:
        st.info("The steered text is the same as the baseline: this change does not alter what the model writes here.")
    else:
        base, steered = result.baseline[0], result.steered[0]
        before = base.pieces[change] if change < len(base.pieces) else "(end)"
        after = steered.pieces[change] if change < len(steered.pieces) else "(end)"
        st.success(
            f"First change at new token {change}: {steer_view.shown(before)} → {steer_view.shown(after)} "
            "(highlighted below; hover a token for its probability and what the other run wrote)."
        )
        st.caption(
            "From the first change on the two runs continue different text, so their later tokens are not compared "
            "one by one: they are shaded lightly as *diverged*. Hover still shows both runs' token at each index."
        )
    for sample in range(len(result.baseline)):
        seed = result.baseline[sample].seed
        if seed is not None:
            st.markdown(f"**Sample {sample + 1}** (seed {seed}: both runs draw the same random numbers)")
        left, right = st.columns(2)
        for column, variant in ((left, "baseline"), (right, "steered")):
            rows = frame[(frame["sample"] == sample) & (frame.variant == variant)]
            column.markdown(f"**{variant.capitalize()}**")
            column.markdown(steer_view.strip(rows), unsafe_allow_html=True)
    specs = ", ".join(f"`{iv.spec}`" for iv in result.interventions)
    decoding = "greedy" if result.temperature == 0 else f"T={result.temperature:g}, top-p={result.top_p:g}"
    common.conventions(
        model,
        metric=False,
        extra=f"**Interventions:** {specs} at {result.interventions[0].positions} positions · "
        "**Neuron activation:** the MLP hidden value that multiplies W_out (direction: value × W_out added to the "
        f"residual) · **Decoding:** {decoding}"
        ", KV-cached (equal to recomputing the whole sequence at every step)",
    )
    common.table(frame, "steer_tokens", key="steer:tokens", height=200)
    # the same JSON as `python -m core steer … --json`
    common.json_download({"model": model.facts(), **result.to_json()}, "steer")


def dose_section(model: Model, inp: dict) -> None:
    st.subheader("Dose–response")
    left, right = st.columns(2)
    left.text_input("Answer token", key=key("answer"), persist_state="session", help="with its leading space: ' an'")
    right.text_input("Wrong token", key=key("wrong"), persist_state="session", help="the alternative: ' a'")
    layer, neuron = parse_neuron(model, inp["neuron"])
    dose = analyses_dose(model, inp["prompt"], layer, neuron, params.value(PAGE, "answer"), params.value(PAGE, "wrong"))
    chosen = float(inp["value"]) if inp["op"] == "set" else None
    st.plotly_chart(steer_view.dose_chart(dose, chosen), key="steer:dose")
    st.caption(
        f"{label(layer, neuron)} clamped to each value at the last position (where the metric is read), all "
        "values in one batched forward; the dashed line is its natural activation on this prompt."
    )
    common.table(dose.frame(), "steer_dose", key="steer:dose_table", height=200)
    # the same JSON as `python -m core dose … --json` (its range_source aside)
    common.json_download({"model": model.facts(), **dose.to_json()}, "dose", label="⬇ JSON of the curve")


@st.cache_data(show_spinner="Clamping the neuron over its range…", max_entries=64)
def _dose(_model: Model, fingerprint: str, text: str, layer: int, neuron: int, answer: str, wrong: str):
    return steering.dose_response(
        _model, text, layer, neuron, answer, wrong, observed=_observed(_model, fingerprint, layer, neuron)
    )


def analyses_dose(model: Model, text: str, layer: int, neuron: int, answer: str, wrong: str):
    return _dose(model, model.fingerprint, text, layer, neuron, answer, wrong)


def body(model: Model) -> None:
    st.title("Steer")
    st.markdown(
        "Change neurons and watch what the model writes. The baseline and the steered run are generated together "
        "(same prompt, same random numbers when sampling); the first token where they part is highlighted. The post's "
        "decisive experiment: negate the an-neuron and *an apple* becomes *a pear*."
    )
    inp = inputs(model)
    with common.Section():
        show_generation(model, generation(model, inp))
    with common.Section():
        dose_section(model, inp)


common.page("Steer", body)
