"""The Search page's evidence: every top-K pair tested on a corpus (core.corpus.pairs) — cached call, figures, table."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.corpus import pairs
from core.engine.model import Model
from core.engine.tokens import shown
from ui import common, navigation, text
from ui.admission import admitted
from ui.analyses import progress_bar
from ui.dashboard_view import percent_axis

VERDICT_ICONS = {"correlates": "✅ correlates", "weak": "➖ weak", "none": "❌ none", "too rare to tell": "· too rare"}


@st.cache_data(show_spinner=False, max_entries=8)
def pairs_test(
    _model: Model, fingerprint: str, kind: str, matrix: str, corpus: str | None, budget: int, top_k: int
) -> pairs.PairsResult:
    spec = pairs.PairsSpec(kind, top_k, corpus, budget, matrix)
    with admitted("the pairs test"), progress_bar("testing the pairs on the corpus (positions)") as progress:
        return pairs.pairs(_model, spec, progress=progress)


def top_curves(result: pairs.PairsResult, n: int = 5, min_count: int = pairs.CURVE_MIN_COUNT) -> go.Figure:
    """The post's last figure: for the top n pairs, the share of positions whose top-1 is the pair's token, by the
    neuron's activation bin (bins with at least min_count positions; hover shows the counts)."""
    fig = go.Figure()
    curves = result.curves(n, min_count)
    for p in result.pairs[:n]:
        c = curves[curves["rank"] == p["rank"]]
        fig.add_trace(
            go.Scatter(
                x=(c["lo"] + c["hi"]) / 2,
                y=c["top1_share"],
                mode="lines+markers",
                name=f"{p['label']} · {shown(p['token'])}",
                customdata=c[["count", "top1"]].to_numpy(),
                hovertemplate="activation %{x:.3g}<br>top-1 share %{y:.1%}<br>%{customdata[1]} of %{customdata[0]} "
                "positions<extra>%{fullData.name}</extra>",
            )
        )
    fig.update_layout(
        title=f"Top {min(n, len(result.pairs))} {result.kind} pairs: share of top-1 = the pair's token, by activation",
        xaxis_title="neuron activation (bin centre)",
        yaxis_title="share with the token as top-1",
        height=380,
        margin=dict(t=50, b=40),
    )
    percent_axis(fig, float(curves["top1_share"].max()) if len(curves) else 1.0)
    return fig


def evidence(result: pairs.PairsResult) -> pd.DataFrame:
    """One row per pair: the test's columns and the curve's top-1 shares (a sparkline)."""
    frame = result.frame()
    frame.insert(
        frame.columns.get_loc("verdict") + 1,
        "curve",
        [[b["top1_share"] for b in p["curve"] if b["count"] >= pairs.CURVE_MIN_COUNT] for p in result.pairs],
    )
    return frame


def show(model: Model, result: pairs.PairsResult) -> None:
    s = result.summary()
    cols = st.columns(5)
    cols[0].metric(f"of the top {s['pairs']} pairs, correlate", s["correlates"])
    cols[1].metric("weak", s["weak"])
    cols[2].metric("none", s["none"])
    cols[3].metric("too rare to tell", s["too rare to tell"])
    share = s["share_correlating_of_testable"]
    cols[4].metric("correlate, of the testable", "—" if share is None else f"{share:.0%}")
    st.caption(
        f"{result.positions:,} positions of {text.literal(result.corpus)} · verdict: {pairs.THRESHOLDS['rule']} · "
        f"{result.settings['pairs_from_dashboards']} pairs read from built dashboards, "
        f"{result.settings['pairs_scanned']} from one scan pass (ρ = Spearman of activation with the token's "
        "probability, scan pass only)"
    )
    st.plotly_chart(top_curves(result), key="search:pairs_curves")
    st.markdown(
        "**Evidence per pair** — click the label to open the neuron; click any other cell to open the Corpus page "
        "with that neuron and token"
    )
    frame = evidence(result)
    display = common.with_visible_tokens(frame.assign(verdict=frame["verdict"].map(VERDICT_ICONS)))
    cell = common.table(
        frame,
        f"pairs_{result.kind}_{result.matrix}",
        key="search:pairs_table",
        select=True,
        height=420,
        display=display,
        column_config={
            "curve": st.column_config.LineChartColumn("top-1 share by activation", y_min=0.0),
            "spearman": st.column_config.NumberColumn("ρ", format="%.2f"),
            "auc": st.column_config.NumberColumn("AUC", format="%.2f"),
        },
    )
    if cell:
        picked = result.pairs[cell["row"]]
        if cell["column"] in ("label", "layer", "neuron", "rank"):
            navigation.go_neuron_of(picked)
        settings = result.settings
        query = {
            "neurons": picked["label"],
            "target": picked["token"],
            "budget": str(settings["max_tokens"]),
            "corpus": str(settings["corpus"]),
        }
        st.switch_page(navigation.path("corpus"), query_params=navigation.with_model(query))
    # the same JSON as `python -m core pairs --json`
    common.json_download(
        {"model": model.facts(), **result.to_json()},
        f"pairs_{result.kind}_{result.matrix}",
        label="⬇ JSON of the pairs test",
    )
