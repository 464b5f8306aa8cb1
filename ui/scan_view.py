"""Showing a corpus scan (core.corpus.scan): the post's activation-bin chart, totals, and max-activating examples."""

from __future__ import annotations

from typing import Any

import streamlit as st

from ui import charts, common, text
from ui.dashboard_view import percent_axis


def neuron_scan(label: str, result: Any, target: str, key: str) -> None:
    """One neuron's scan: bins chart, totals, correlation, and its max-activating examples."""
    totals, correlation = dict(result.totals), dict(result.correlation)
    cols = st.columns(4)
    cols[0].metric("positions scanned", f"{int(totals.get('positions', 0)):,}")
    shown = text.literal(charts.shown(target))
    cols[1].metric(f"true next token = {shown}", f"{int(totals.get('target_true_next', 0)):,}")
    cols[2].metric(f"model's top-1 = {shown}", f"{int(totals.get('target_top1', 0)):,}")
    cols[3].metric(
        "corr(activation, target logit / prob)",
        f"{correlation.get('logit', float('nan')):.2f} / {correlation.get('prob', float('nan')):.2f}",
    )
    figure = charts.scan_bins(result.bins, target, label)
    shares = [*result.bins.get("top1_share", []), *result.bins.get("true_next_share", [])]
    percent_axis(figure, max(shares, default=0.0))  # real percentages on the ticks, however small the shares
    st.plotly_chart(figure, key=f"{key}:bins")
    common.table(result.bins, f"scan_bins_{label}", key=f"{key}:bins_table", height=200)
    examples = result.examples
    if examples is None or len(examples) == 0:
        st.caption("No examples.")
        return
    st.markdown(f"**Max-activating examples** ({len(examples)}) — the outlined token is where {label} fires most")
    for row in examples.itertuples():
        pieces, values = list(row.tokens), [float(v) for v in row.token_activations]
        # `focus` (the example's own position inside its window) when the scan gives it, else the window's maximum
        focus = int(getattr(row, "focus", -1))
        peak: int | None = focus if 0 <= focus < len(values) else None
        if peak is None and values:
            peak = max(range(len(values)), key=lambda i: values[i])
        st.markdown(
            f"<div style='margin:2px 0'><code>{row.activation:+.2f}</code> · doc {row.doc}, position "
            f"{row.position} of its context (the Neuron page's dashboards locate examples in documents)</div>"
            + text.activation_text(pieces, values, highlight=peak),
            unsafe_allow_html=True,
        )
    common.table(
        examples.assign(context=["".join(t) for t in examples["tokens"]]).drop(
            columns=["tokens", "token_activations"], errors="ignore"
        ),
        f"scan_examples_{label}",
        key=f"{key}:examples_table",
        height=200,
    )
