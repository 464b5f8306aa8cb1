"""The Neuron page's dashboard section (core.corpus.dashboards): max-activating examples over a varied corpus,
activation
density and histogram with the next-token share, read instantly from built dashboards (or a button that builds
them for every neuron at once, through the admission gate), and the neuron's clean vs corrupted activation."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.analyses.congruence import label
from core.corpus import dashboards
from core.engine.model import Model
from ui import analyses, charts, common, text
from ui.admission import admitted


def percent_format(largest: float) -> str:
    """A tick format for shares up to `largest` with enough decimals that ticks differ (0.2%, 0.4%, … rather
    than 0%, 0%, 1%, 1%)."""
    step = max(largest, 1e-9) * 100 / 5  # about five ticks, in percent
    return f".{max(0, 1 - math.floor(math.log10(step)))}~%"


def percent_axis(fig: go.Figure, largest: float, **axis: Any) -> go.Figure:
    """Set the figure's y-axis (or the one `axis` selects) to percent_format(largest)."""
    fig.update_yaxes(tickformat=percent_format(largest), **axis)
    return fig


@st.cache_resource(max_entries=2, show_spinner="Reading the built dashboards…")
def _read(_model: Model, fingerprint: str, corpus: str, budget: int) -> dashboards.Dashboards:
    return dashboards.build(_model, dashboards.DashboardSpec(corpus, budget))


def _built(model: Model, corpus: str, budget: int) -> dashboards.Dashboards | None:
    """The built dashboards (read once per server), or None: "not built" is never cached, so a build from the
    command line shows up on the next rerun."""
    if not dashboards.is_built(model, dashboards.DashboardSpec(corpus, budget)):
        return None
    return _read(model, model.fingerprint, corpus, budget)


def _build(model: Model, corpus: str, budget: int) -> None:
    bar = st.progress(0.0, text="Building dashboards for every neuron…")

    def progress(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(total, 1)), text=f"{done:,} of {total:,} positions")

    with admitted(f"dashboards of {model.name}"):
        dashboards.build(model, dashboards.DashboardSpec(corpus, budget), progress)
    bar.empty()


def histogram_chart(hist: dict, name: str, top_token: str) -> go.Figure:
    frame = pd.DataFrame(hist)
    centres = (frame["lo"] + frame["hi"]) / 2
    fig = go.Figure(
        go.Bar(
            x=centres,
            y=frame["count"],
            width=(frame["hi"] - frame["lo"]) * 0.95,
            name="positions",
            hovertemplate="activation %{x:.3f}<br>%{y:,} positions<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=centres,
            y=frame["top1_share"],
            yaxis="y2",
            mode="lines+markers",
            name=f"share with top-1 = {charts.shown(top_token)}",
            hovertemplate="%{y:.2%}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"{name}: activations over the corpus (log count) and the model's top-1",
        yaxis=dict(type="log", title="positions"),
        yaxis2=dict(
            overlaying="y",
            side="right",
            title="share of the bin",
            rangemode="tozero",
            tickformat=percent_format(max(frame["top1_share"], default=0.0)),
        ),
        xaxis=dict(title="activation (bins evenly spaced in asinh)"),
        height=360,
        legend=dict(orientation="h", y=1.1, x=1, xanchor="right"),
    )
    return fig


def dashboard_section(
    model: Model, layer: int, neuron: int, corpus: str | None = None, budget: int | None = None
) -> dict:
    """Examples, density and histogram of one neuron from the built dashboards; a Build button when none are."""
    name = label(layer, neuron)
    corpus = corpus or dashboards.default_corpus()
    budget = budget or dashboards.default_budget()
    st.subheader("Max-activating examples over a corpus")
    built = _built(model, corpus, budget)
    if built is None:
        st.caption(
            f"No dashboards built for {text.literal(model.name)} on {text.literal(corpus)} ({budget:,} tokens). One "
            "pass builds them for every neuron of every layer (then they open instantly); or on the command line: "
            f"`python -m core dashboards build --model {model.name} --corpus {corpus} --max-tokens {budget}`."
        )
        if st.button(f"Build dashboards ({budget:,} tokens of {corpus})", key="neuron:dashboards_build"):
            _build(model, corpus, budget)
            st.rerun()
        return {}
    view = dashboards.neuron_view(model, built, layer, neuron)
    density = view["density"]
    cols = st.columns(4)
    cols[0].metric("positions", f"{built.positions:,}", help=f"{built.settings['documents']} documents of {corpus}")
    cols[1].metric(
        f"density (≥ {density['threshold']:.2f})",
        f"{density['share']:.3%}",
        help="share of positions whose activation reaches the threshold (read from the histogram: a bin edge)",
    )
    cols[2].metric("density (> 0)", f"{density['positive_share']:.1%}")
    cols[3].metric(
        f"top-1 = {text.literal(charts.shown(view['top_token']))}",
        f"{view['top1_is_top_token']:,}",
        help="positions where the model's top-1 prediction is the neuron's most congruent token (W_U)",
    )
    st.caption(
        f"**Corpus:** {text.literal(built.corpus.description)} · **budget:** {budget:,} tokens, contexts spread "
        f"evenly over the corpus · {built.settings['bos']}"
    )
    st.plotly_chart(histogram_chart(view["histogram"], name, view["top_token"]), key="neuron:dashboard_hist")
    for ex in view["examples"]:
        ctx = ex["context"]
        where = f"{ex['title']}" + (f" ({ex['genre']})" if ex["genre"] else "")
        st.markdown(
            f"<div style='margin:2px 0'><code>{ex['activation']:+.2f}</code> · {text.literal(where)}, token "
            f"{ex['token_index']} (chars {ex['char_start']}–{ex['char_end']}) · predicts "
            f"{text.literal(charts.shown(ex['prediction']))}</div>"
            + text.activation_text(ctx["tokens"], ctx["activations"], highlight=ctx["focus"]),
            unsafe_allow_html=True,
        )
    return {"dashboard": view}


def clean_vs_corrupted(model: Model, layer: int, neuron: int, clean: str, corrupted: str | None) -> dict:
    """The neuron's activation on the clean and the corrupted prompt, side by side."""
    if not corrupted:
        return {}
    st.markdown(f"**{label(layer, neuron)} on the prompt pair** — clean (left) and corrupted (right)")
    out = {}
    for column, (kind, prompt) in zip(st.columns(2), (("clean", clean), ("corrupted", corrupted))):
        frame = analyses.neuron_activations(model, model.fingerprint, prompt, layer, neuron)
        peak = int(frame["activation"].abs().idxmax())
        with column:
            st.caption(
                f"{kind}: last position {frame['activation'].iloc[-1]:+.3f}, "
                f"largest {frame['activation'].iloc[peak]:+.3f}"
            )
            st.markdown(
                text.activation_text(list(frame["token"]), list(frame["activation"]), highlight=peak),
                unsafe_allow_html=True,
            )
        out[kind] = frame
    common.table(
        pd.DataFrame({"token": out["clean"]["token"], "clean": out["clean"]["activation"]}).join(
            pd.DataFrame({"corrupted token": out["corrupted"]["token"], "corrupted": out["corrupted"]["activation"]}),
            how="outer",
        ),
        f"{label(layer, neuron)}_clean_vs_corrupted",
        key="neuron:clean_vs_corrupted",
        height=200,
    )
    return {"clean_vs_corrupted": out}
