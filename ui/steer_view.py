"""The Steer page's pieces: generated text as coloured token strips, the dose–response chart, and finished
generations kept in the disk cache (so a rerun, a reopened link or another server shows them without generating).

Generation streams into the page as it runs (ui code draws each step), so it cannot sit inside `st.cache_data`
(which replays what a cached function drew); finished results go to core.cache instead, keyed by their inputs.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core import cache
from core.analyses.steering import DoseResponse, SteerResult
from ui.charts import shown
from ui.text import literal_html

_STRIP = "font-family:monospace;line-height:1.9;white-space:pre-wrap"
_TOKEN = "padding:1px 0;border-radius:2px"
_FIRST_CHANGE = f"{_TOKEN};background:rgba(255,196,0,0.6);outline:1px solid #b08800"
_DIVERGED = "padding:1px 0;background:rgba(255,196,0,0.14)"  # after the first change: the runs wrote different text
_MARK = "font-size:0.7em;color:#8a6d00;vertical-align:super;font-family:sans-serif"


def remembered(fingerprint: str, params: dict[str, Any]) -> SteerResult | None:
    """A finished generation for these inputs from the disk cache (any server sharing the cache folder), else None.
    Generation is deterministic for given inputs (greedy, or seeded), so a reopened link shows the same text."""
    hit = cache.load_object(cache.key_path(fingerprint, "steer", params))
    if hit is None:
        return None
    result, computed_at = hit
    object.__setattr__(result, "from_disk", computed_at)  # the page's "reopened from the disk cache" caption
    return result


def remember(fingerprint: str, params: dict[str, Any], result: SteerResult) -> None:
    try:
        cache.save_object(cache.key_path(fingerprint, "steer", params), result)
    except (cache.Unencodable, OSError):
        pass  # not storable: the page just generates again next time


def strip(rows: pd.DataFrame) -> str:
    """One continuation as HTML: the first token where it differs from the other run highlighted and marked
    "diverged from here", every later token lightly shaded (from there on the two runs continue different text);
    hover: the token's probability and what the other run wrote at the same index, with its probability.

    rows: SteerResult.frame() rows of one sample and variant, in order."""
    spans = []
    for row in rows.itertuples():
        title = f"{shown(row.token)}: P = {row.prob:.3f}"
        if row.other_token is None:
            title += "; the other run had ended"
        elif row.changed or row.diverged:
            title += f"; the other run wrote {shown(row.other_token)} (P = {row.other_prob:.3f})"
        style = _TOKEN
        if row.diverged:
            style = _DIVERGED
        elif row.changed:  # the first change: the runs part here
            style = _FIRST_CHANGE
            spans.append(f'<span style="{_MARK}">diverged from here ▸</span>')
        spans.append(f'<span title="{literal_html(title)}" style="{style}">{literal_html(row.token)}</span>')
    return f'<div class="steer-strip" style="{_STRIP}">{"".join(spans)}</div>'


def live_strip(pieces: list[str]) -> str:
    """A continuation while it is being generated (no probabilities yet)."""
    body = "".join(f'<span style="{_TOKEN}">{literal_html(p)}</span>' for p in pieces)
    return f'<div class="steer-strip" style="{_STRIP}">{body}▌</div>'


def dose_chart(dose: DoseResponse, chosen: float | None = None) -> go.Figure:
    """P(answer), P(wrong) (left axis) and the logit diff (right axis) against the clamped value; the neuron's
    natural activation on this prompt marked, and the value the page steers with."""
    frame = dose.frame()
    clamped = frame[~frame.natural]
    fig = go.Figure()
    for column, name, colour in (
        ("p_answer", f"P({shown(dose.answer)})", "#1f5fa8"),
        ("p_wrong", f"P({shown(dose.wrong)})", "#b5443b"),
    ):
        fig.add_scatter(x=clamped.value, y=clamped[column], name=name, mode="lines+markers", line_color=colour)
    fig.add_scatter(
        x=clamped.value,
        y=clamped.logit_diff,
        name="logit diff",
        yaxis="y2",
        mode="lines",
        line={"color": "#6a737d", "dash": "dot"},
    )
    fig.add_vline(x=dose.natural, line_dash="dash", line_color="#111", annotation_text=f"natural {dose.natural:+.2f}")
    if chosen is not None:
        fig.add_vline(
            x=chosen, line_color="#b08800", annotation_text=f"steer {chosen:+.2f}", annotation_position="bottom"
        )
    fig.update_layout(
        title=f"Dose–response of {dose.to_json()['neuron']['label']} (clamped at the {dose.positions} position)",
        xaxis_title="clamped activation",
        yaxis={"title": "probability", "range": [0, 1]},
        yaxis2={"title": "logit diff", "overlaying": "y", "side": "right", "showgrid": False},
        height=380,
        margin={"l": 40, "r": 40, "t": 50, "b": 40},
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


@st.cache_data(show_spinner="Negating the neuron and generating…", max_entries=8)
def negation(_model, fingerprint: str, prompt: str, layer: int, neuron: int, new_tokens: int = 4) -> dict:
    """The post's decisive experiment on the picked model: the neuron negated at every position, greedy text and the
    first token's probability before and after (for the Home story)."""
    from core.analyses import steering

    iv = steering.Intervention(layer, neuron, "negate", -1.0)
    result = steering.steer(_model, prompt, [iv], max_new_tokens=new_tokens)
    base, steered = result.baseline[0], result.steered[0]
    return {
        "spec": iv.spec,
        "baseline": base.text,
        "steered": steered.text,
        "baseline_first": base.pieces[0],
        "steered_first": steered.pieces[0],
        "p_baseline_first": math.exp(base.logprobs[0]),
        "p_steered_first": math.exp(steered.logprobs[0]),
    }
