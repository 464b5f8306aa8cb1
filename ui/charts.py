"""Plotly figures built from the engine's DataFrames and arrays. No model and no tensor math: plotting only.

Clickable charts put `[layer, neuron]` in each point's customdata (see `ui.navigation.neuron_from_point`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.engine.tokens import shown  # noqa: F401 - tokens with visible spaces, for every label here

DIVERGING = "RdBu"  # red = negative, blue = positive; every signed map is centred on 0
ANSWER_COLOUR, WRONG_COLOUR = "#1f5fa8", "#b5443b"
KIND_COLOURS = {"embed": "#7f7f7f", "attn": "#e08e0b", "mlp": "#1f5fa8", "bias": "#bbbbbb"}


def _layout(fig: go.Figure, title: str, height: int = 380, **kwargs) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0, font=dict(size=15)), height=height, margin=dict(l=10, r=10, t=45, b=10), **kwargs
    )
    return fig


# ---------------------------------------------------------------- logit lens


def _depth_ticks(labels: list[str], every: int = 5) -> dict:
    """x-axis ticks for a sequence of per-sublayer labels ('embed', 'L0 attn', 'L0 mlp', … or 'attn L0', …):
    one tick per `every` layers, so 60+ labels stay readable (hover still names every point)."""
    values, texts = [], []
    for i, text in enumerate(labels):
        layer = next((int(part[1:]) for part in text.split() if part[:1] == "L" and part[1:].isdigit()), None)
        if layer is None or ("mlp" in text and layer % every == 0):
            values.append(i)
            texts.append(text if layer is None else f"L{layer}")
    return dict(tickmode="array", tickvals=values, ticktext=texts)


def lens_lines(layers: pd.DataFrame, answer: str, wrong: str) -> go.Figure:
    """The logit lens in one figure of two rows sharing the depth axis: the logit diff after every sublayer, and the
    two tokens' probabilities. One figure rather than two: each Plotly chart has a fixed cost in every visitor's
    browser (the page's charts took ~0.5 of its 1.6 core-seconds a load there, docs/hosting.md)."""
    labels = list(layers["label"])
    x = list(range(len(labels)))
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.6, 0.4])
    fig.add_trace(
        go.Scatter(
            x=x,
            y=layers["logit_diff"],
            mode="lines+markers",
            name="logit diff",
            showlegend=False,
            text=labels,
            customdata=np.stack([layers["answer_prob"], layers["wrong_prob"]], axis=1),
            hovertemplate="after %{text}<br>logit diff %{y:.3f}<br>P(answer) %{customdata[0]:.3f}"
            "<br>P(wrong) %{customdata[1]:.3f}<extra></extra>",
            line=dict(color=ANSWER_COLOUR),
        ),
        row=1,
        col=1,
    )
    fig.add_hline(y=0, line=dict(color="#999", width=1, dash="dot"), row=1, col=1)
    for column, name, colour in (("answer_prob", answer, ANSWER_COLOUR), ("wrong_prob", wrong, WRONG_COLOUR)):
        fig.add_trace(
            go.Scatter(
                x=x,
                y=layers[column],
                mode="lines",
                name=f"P({shown(name)})",
                text=labels,
                hovertemplate="after %{text}: %{y:.3f}<extra></extra>",
                line=dict(color=colour),
            ),
            row=2,
            col=1,
        )
    fig.update_xaxes(**_depth_ticks(labels))
    fig.update_xaxes(title="residual stream after the embedding, each attention and MLP", row=2, col=1)
    fig.update_yaxes(title="logit diff", row=1, col=1)
    fig.update_yaxes(title="probability", row=2, col=1)
    return _layout(
        fig,
        f"Logit lens: logit({shown(answer)}) − logit({shown(wrong)}) after each sublayer",
        height=520,
        legend=dict(orientation="h", y=0.38, x=1, xanchor="right", yanchor="bottom"),
    )


def dla_bar(components: pd.DataFrame) -> go.Figure:
    """Direct logit attribution per component; the bars sum to the final logit diff."""
    colours = [KIND_COLOURS.get(k, "#888") for k in components["kind"]]
    labels = list(components["component"])
    fig = go.Figure(
        go.Bar(
            x=list(range(len(labels))),
            y=components["logit_diff"],
            marker_color=colours,
            text=labels,
            textposition="none",
            hovertemplate="%{text}: %{y:.3f}<extra></extra>",
        )
    )
    fig.update_xaxes(**_depth_ticks(labels), title="component (orange: attention, blue: MLP)")
    return _layout(
        fig, "Direct logit attribution per component (sums to the logit diff)", yaxis_title="logit diff contribution"
    )


def heads_heatmap(frame: pd.DataFrame, value: str, title: str, colorbar: str) -> go.Figure:
    """layer × head map of a per-head value (DLA or patching score)."""
    grid = frame.pivot(index="layer", columns="head", values=value)
    return grid_heatmap(
        grid.to_numpy(),
        list(grid.columns),
        [str(h) for h in grid.columns],
        title,
        colorbar,
        x_title="head",
        height=max(320, 14 * len(grid) + 90),
    )


# ---------------------------------------------------------------- patching


def grid_heatmap(
    grid: np.ndarray,
    x: list,
    x_labels: list[str],
    title: str,
    colorbar: str,
    x_title: str = "position",
    height: int | None = None,
    y_labels: list[str] | None = None,
) -> go.Figure:
    """A layer (rows; or the rows named by y_labels, e.g. heads) × something (columns) map, diverging around 0."""
    rows = list(range(grid.shape[0])) if y_labels is None else y_labels
    y_title = "layer" if y_labels is None else "row"
    fig = go.Figure(
        go.Heatmap(
            z=grid,
            x=x,
            y=rows,
            colorscale=DIVERGING,
            zmid=0,
            colorbar=dict(title=colorbar),
            hovertemplate=f"{'layer ' if y_labels is None else ''}%{{y}}, {x_title} %{{x}}<br>{colorbar} %{{z:.3f}}"
            "<extra></extra>",
        )
    )
    fig.update_xaxes(tickmode="array", tickvals=x, ticktext=x_labels, title=x_title)
    fig.update_yaxes(title=y_title if y_labels is None else "head", autorange="reversed")
    return _layout(fig, title, height=height or max(320, 12 * grid.shape[0] + 110))


def position_labels(clean: list[str], corrupted: list[str] | None = None) -> list[str]:
    """Axis labels for positions: the clean token, and "clean→corrupted" where the prompts differ."""
    corrupted = corrupted or clean
    return [shown(c) if c == k else f"{shown(c)}→{shown(k)}" for c, k in zip(clean, corrupted)]


def position_heatmaps(
    scores: dict[str, np.ndarray], pieces: list[str], corrupted_pieces: list[str] | None = None
) -> go.Figure:
    """resid_pre, attn_out and mlp_out patching scores side by side: layer (rows) × position (both prompts' tokens)."""
    kinds = list(scores)
    fig = make_subplots(rows=1, cols=len(kinds), shared_yaxes=True, subplot_titles=kinds, horizontal_spacing=0.02)
    positions = list(range(len(pieces)))
    ticks = position_labels(pieces, corrupted_pieces)
    for i, kind in enumerate(kinds, start=1):
        fig.add_trace(
            go.Heatmap(
                z=scores[kind],
                x=positions,
                y=list(range(scores[kind].shape[0])),
                coloraxis="coloraxis",
                customdata=np.array([ticks] * scores[kind].shape[0]),
                hovertemplate=f"{kind}<br>layer %{{y}}, position %{{x}} (%{{customdata}})"
                "<br>score %{z:.3f}<extra></extra>",
            ),
            row=1,
            col=i,
        )
        fig.update_xaxes(tickmode="array", tickvals=positions, ticktext=ticks, tickangle=-60, row=1, col=i)
    fig.update_yaxes(title="layer", autorange="reversed", row=1, col=1)
    fig.update_layout(coloraxis=dict(colorscale=DIVERGING, cmid=0, colorbar=dict(title="score")))
    return _layout(
        fig,
        "Each activation patched at one (layer, position); x = clean token (→ corrupted where they differ)",
        height=max(420, 11 * scores[kinds[0]].shape[0] + 160),
    )


def layer_totals(all_positions: dict[str, np.ndarray]) -> go.Figure:
    """Each layer's attention / MLP output patched at all positions at once."""
    fig = go.Figure()
    for kind, colour in (("attn_out", KIND_COLOURS["attn"]), ("mlp_out", KIND_COLOURS["mlp"])):
        scores = all_positions[kind]
        fig.add_trace(
            go.Scatter(
                x=list(range(len(scores))),
                y=scores,
                mode="lines+markers",
                name=kind,
                line=dict(color=colour),
                hovertemplate=f"{kind} L%{{x}}: %{{y:.3f}}<extra></extra>",
            )
        )
    return _layout(
        fig,
        "Per layer, all positions patched at once",
        height=320,
        xaxis_title="layer",
        yaxis_title="score",
        legend=dict(orientation="h", y=1.12, x=1, xanchor="right"),
    )


def neuron_sweep(frame: pd.DataFrame, highlight: int = 10, labelled: int = 3) -> go.Figure:
    """Every neuron of one layer patched alone: score per neuron; the top ones are drawn large and labelled.

    frame: layer, neuron, label, score (highest first, as NeuronPatching.frame gives it). SVG scatter (not WebGL)
    so each point is a clickable element.
    """
    by_neuron = frame.sort_values("neuron")
    top = frame.head(highlight)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=by_neuron["neuron"],
            y=by_neuron["score"],
            mode="markers",
            name="all neurons",
            marker=dict(size=4, color="#9aa7b4"),
            customdata=np.stack([by_neuron["layer"], by_neuron["neuron"]], axis=1),
            hovertemplate="L%{customdata[0]}.N%{customdata[1]}: %{y:.4f}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=top["neuron"],
            y=top["score"],
            mode="markers+text",
            name=f"top {len(top)}",
            marker=dict(size=11, color=ANSWER_COLOUR, line=dict(color="white", width=1)),
            text=[name if i < labelled else "" for i, name in enumerate(top["label"])],
            textfont=dict(size=12),
            # labels point inwards, so that a neuron near the right edge keeps its label inside the plot
            textposition=[
                "middle left" if n > by_neuron["neuron"].max() / 2 else "middle right" for n in top["neuron"]
            ],
            customdata=np.stack([top["layer"], top["neuron"]], axis=1),
            hovertemplate="L%{customdata[0]}.N%{customdata[1]}: %{y:.4f}<br>click to open<extra></extra>",
        )
    )
    return _layout(
        fig,
        "Neuron sweep: each neuron's post-activation patched alone (all positions) — click a point",
        height=420,
        xaxis_title="neuron",
        yaxis_title="score",
        clickmode="event+select",
        legend=dict(orientation="h", y=1.1, x=1, xanchor="right"),
    )


# ---------------------------------------------------------------- congruence


def congruence_histogram(values: np.ndarray, top: pd.DataFrame, bottom: pd.DataFrame, marked: int = 5) -> go.Figure:
    """Histogram of a neuron's congruence with every token (log count), its top/bottom tokens marked."""
    counts, edges = np.histogram(values, bins=120)
    centres = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure(
        go.Bar(
            x=centres,
            y=counts,
            width=edges[1] - edges[0],
            marker_color="#9aa7b4",
            name="tokens",
            hovertemplate="congruence ≈ %{x:.2f}: %{y} tokens<extra></extra>",
        )
    )
    for frame, colour in ((top.head(marked), ANSWER_COLOUR), (bottom.head(marked), WRONG_COLOUR)):
        for i, row in enumerate(frame.itertuples()):
            fig.add_vline(x=row.congruence, line=dict(color=colour, width=1, dash="dot"))
            fig.add_annotation(
                x=row.congruence,
                y=1 - 0.07 * i,
                yref="paper",
                text=shown(row.token),
                showarrow=False,
                font=dict(color=colour, size=11),
                xanchor="left",
                yanchor="top",
            )
    fig.update_yaxes(type="log", title="tokens")
    fig.update_xaxes(title="congruence")
    return _layout(
        fig,
        "Congruence with every token of the vocabulary (top and bottom tokens marked)",
        height=340,
        showlegend=False,
    )


def token_scatter(values: np.ndarray, top: pd.DataFrame, labelled: int = 5) -> go.Figure:
    """Every neuron's congruence with one token: x neuron, y layer, colour (and size) = congruence."""
    return neuron_grid(
        values,
        top,
        "congruence",
        "Every neuron's congruence with the token — click a point to open its neuron",
        labelled,
    )


def neuron_grid(values: np.ndarray, top: pd.DataFrame, value: str, title: str, labelled: int = 5) -> go.Figure:
    """A value for every neuron of every layer: x neuron, y layer, colour = value.

    Tens of thousands of points at ~1 px each read as an empty chart when most are near 0 and near-white. So every
    neuron is a small filled grey dot (the layer's extent stays visible), the neurons with a notable value
    (≥ 5 % of the largest |value|) are drawn larger and coloured by sign and size, and the top ones are filled
    red markers with labels: those are the points that hover and click. All WebGL (an SVG overlay would be
    drawn under the WebGL canvas).
    """
    n_layers, d_mlp = values.shape
    layer_ids, neuron_ids = np.divmod(np.arange(n_layers * d_mlp), d_mlp)
    flat = values.reshape(-1)
    spread = float(np.abs(flat).max()) or 1.0
    notable = np.abs(flat) >= 0.05 * spread
    fig = go.Figure(
        go.Scattergl(
            x=neuron_ids,
            y=layer_ids,
            mode="markers",
            name="all neurons",
            marker=dict(size=3, color="#b8c0c8", opacity=0.7),
            hoverinfo="skip",  # at ~1 px per neuron a click would pick a neighbour: only the top ones react
        )
    )
    fig.add_trace(
        go.Scattergl(
            x=neuron_ids[notable],
            y=layer_ids[notable],
            mode="markers",
            name=f"|{value}| ≥ 5 % of the max",
            marker=dict(
                size=5 + 7 * np.abs(flat[notable]) / spread,
                color=flat[notable],
                colorscale=DIVERGING,
                cmin=-spread,
                cmax=spread,
                colorbar=dict(title=value),
                line=dict(width=0),
            ),
            hoverinfo="skip",
        )
    )
    fig.add_trace(
        go.Scattergl(
            x=top["neuron"],
            y=top["layer"],
            mode="markers+text",
            name=f"top {len(top)}",
            marker=dict(size=12, color=WRONG_COLOUR, line=dict(color="#111", width=1)),
            text=[name if i < labelled else "" for i, name in enumerate(top["label"])],
            textposition="top center",
            textfont=dict(size=11),
            customdata=np.stack([top["layer"], top["neuron"], top[value]], axis=1),
            hovertemplate="L%{customdata[0]}.N%{customdata[1]}: %{customdata[2]:.3f}<br>click to open<extra></extra>",
        )
    )
    fig.update_yaxes(title="layer", autorange="reversed")
    fig.update_xaxes(title="neuron")
    return _layout(fig, title, height=520, showlegend=False, clickmode="event+select")


def per_layer_bar(per_layer: pd.DataFrame) -> go.Figure:
    fig = go.Figure(
        go.Bar(
            x=per_layer["layer"],
            y=per_layer["congruence"],
            marker_color=ANSWER_COLOUR,
            customdata=np.stack([per_layer["layer"], per_layer["neuron"]], axis=1),
            hovertemplate="layer %{x}: L%{customdata[0]}.N%{customdata[1]} = %{y:.3f}<extra></extra>",
        )
    )
    return _layout(
        fig,
        "Most congruent neuron of each layer",
        height=300,
        xaxis_title="layer",
        yaxis_title="max congruence",
        clickmode="event+select",
    )


# ---------------------------------------------------------------- corpus scan


def scan_bins(bins: pd.DataFrame, target: str, label: str) -> go.Figure:
    """The post's chart: activation bins vs the share of positions where the target is the model's top-1 prediction."""
    centres = (bins["lo"] + bins["hi"]) / 2
    fig = go.Figure(
        go.Bar(
            x=centres,
            y=bins["top1_share"],
            width=(bins["hi"] - bins["lo"]) * 0.9,
            marker_color=ANSWER_COLOUR,
            text=[f"n={int(c):,}" for c in bins["count"]],
            textposition="outside",
            customdata=np.stack([bins["lo"], bins["hi"], bins["count"]], axis=1),
            hovertemplate="activation %{customdata[0]:.2f}…%{customdata[1]:.2f}<br>%{customdata[2]:,} positions"
            f"<br>top-1 = {shown(target)}: %{{y:.1%}}<extra></extra>",
        )
    )
    fig.data[0].name = f"model's top-1 is {shown(target)}"
    if "true_next_share" in bins:  # context: how often the target really comes next in that bin
        fig.add_trace(
            go.Scatter(
                x=centres,
                y=bins["true_next_share"],
                mode="lines+markers",
                name=f"true next token is {shown(target)}",
                line=dict(color=WRONG_COLOUR, dash="dot"),
                hovertemplate="true next: %{y:.1%}<extra></extra>",
            )
        )
    fig.update_yaxes(title="share of the bin's positions", tickformat=".1%", rangemode="tozero")
    fig.update_xaxes(title=f"{label} activation (bin centre)")
    return _layout(
        fig,
        f"{label}: activation vs how often the model predicts {shown(target)}",
        height=380,
        legend=dict(orientation="h", y=1.12, x=1, xanchor="right"),
    )


# ---------------------------------------------------------------- what drives a neuron


DRIVER_COLOURS = {"embed": "#7f7f7f", "pos_embed": "#aaaaaa", "head": "#e08e0b", "mlp": "#1f5fa8", "bias": "#bbbbbb"}


def drivers_bar(components: pd.DataFrame, title: str, top_k: int = 20) -> go.Figure:
    """The top components by |first-order share| as horizontal bars (largest at the top); customdata
    [kind, layer, head] so a click can open a head's pattern or an MLP's neurons."""
    top = components.head(top_k).iloc[::-1]
    keys = [c for c in ("in", "gate", "up") if c in top.columns]
    hover = "<br>".join(f"{k} %{{customdata[{3 + i}]:+.3f}}" for i, k in enumerate(keys))
    fig = go.Figure(
        go.Bar(
            x=top["first_order"],
            y=top["label"],
            orientation="h",
            marker_color=[DRIVER_COLOURS.get(k, "#888") for k in top["kind"]],
            customdata=np.stack([top["kind"], top["layer"], top["head"], *[top[k] for k in keys]], axis=1).astype(
                object
            ),
            hovertemplate="%{y}: first-order share %{x:+.3f}<br>" + hover + "<extra></extra>",
        )
    )
    fig.add_vline(x=0, line=dict(color="#999", width=1))
    fig.update_xaxes(title="first-order share of the activation (∂post/∂pre × contribution)")
    return _layout(fig, title, height=max(320, 22 * len(top) + 90))


def attention_heatmap(pattern: np.ndarray, pieces: list[str], title: str, query: int | None = None) -> go.Figure:
    """A head's attention pattern: query (rows) × key (columns), the prompt's tokens on both axes."""
    labels = [f"{i} {shown(t)}" for i, t in enumerate(pieces)]
    positions = list(range(len(pieces)))
    fig = go.Figure(
        go.Heatmap(
            z=pattern,
            x=positions,
            y=positions,
            colorscale="Blues",
            zmin=0,
            zmax=1,
            colorbar=dict(title="weight"),
            customdata=np.array([[(labels[q], labels[k]) for k in positions] for q in positions], dtype=object),
            hovertemplate="query %{customdata[0]}<br>key %{customdata[1]}<br>weight %{z:.3f}<extra></extra>",
        )
    )
    ticks = dict(tickmode="array", tickvals=positions, ticktext=labels)
    fig.update_xaxes(**ticks, title="key (attended to)", tickangle=-60)
    fig.update_yaxes(**ticks, title="query", autorange="reversed")
    if query is not None:
        fig.add_hline(y=query, line=dict(color=ANSWER_COLOUR, width=1, dash="dot"))
    return _layout(fig, title, height=max(380, 22 * len(pieces) + 140))


def reads_from_bar(frame: pd.DataFrame, title: str) -> go.Figure:
    """Where a head reads from at one query position: attention weight per source token, and what each source
    moves into the neuron (first-order share)."""
    labels = [f"{s} {shown(t)}" for s, t in zip(frame["source"], frame["token"])]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, subplot_titles=("attention weight", "moved into the neuron"))
    fig.add_trace(
        go.Bar(x=frame["attention"], y=labels, orientation="h", marker_color="#4a7fb5", name="attention"), row=1, col=1
    )
    fig.add_trace(
        go.Bar(
            x=frame["first_order"],
            y=labels,
            orientation="h",
            marker_color=[ANSWER_COLOUR if v >= 0 else WRONG_COLOUR for v in frame["first_order"]],
            name="first-order share",
        ),
        row=1,
        col=2,
    )
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.update_layout(showlegend=False)
    return _layout(fig, title, height=max(320, 20 * len(frame) + 110))


# ---------------------------------------------------------------- one prompt: direct vs total effects


EFFECT_COLOURS = {"direct": "#9ab7d8", "total": "#1f5fa8"}


def effects_bars(frame: pd.DataFrame, unit: str, metric: str, title: str) -> go.Figure:
    """Direct and total effect of each row side by side, one pair of horizontal bars per unit, largest |direct| on
    top; rows whose total is less than half the direct are marked "✕ cancelled" (later layers take it back), rows
    without a total "not verified".

    frame: effects.Effects.frame() (unit "neuron") or its heads (unit "head"): label, layer, neuron|head, direct,
    total, kind. customdata = [layer, neuron|head, kind]: a click on a neuron opens its page."""
    rows = frame.iloc[::-1]  # Plotly draws the first category at the bottom
    marks = {"cancelled": " ✕ cancelled", "reversed": " ↔ reversed", "amplified": " ▲ amplified"}
    labels = [f"{label}{marks.get(kind, '')}" for label, kind in zip(rows["label"], rows["kind"])]
    custom = np.stack([rows["layer"], rows[unit], rows["kind"]], axis=1)
    fig = go.Figure()
    for column, name in (("direct", "direct effect"), ("total", "total effect")):
        fig.add_trace(
            go.Bar(
                y=labels,
                x=rows[column],
                orientation="h",
                name=name,
                marker_color=EFFECT_COLOURS[column],
                customdata=custom,
                hovertemplate=f"%{{y}}<br>{name} %{{x:+.3f}}<br>%{{customdata[2]}}<extra></extra>",
            )
        )
    fig.update_layout(barmode="group", bargap=0.25, legend=dict(orientation="h", y=1.02, x=1, xanchor="right"))
    fig.update_yaxes(categoryorder="array", categoryarray=labels, automargin=True)
    fig.update_xaxes(title=f"effect on {metric}", zeroline=True, zerolinecolor="#888")
    return _layout(fig, title, height=max(260, 70 + 34 * len(rows)))


def unusual_strip(frame: pd.DataFrame) -> go.Figure:
    """Each prompt token's rarest neuron activations: one column per position, one cell per rank; colour = how
    rare (−log10 of the share of corpus positions at least as extreme), text = the neuron.

    frame: core.corpus.rarity.unusual_neurons. customdata = [layer, neuron]: a click opens the neuron."""
    positions = sorted(set(frame["position"]))
    ranks = sorted(set(frame["rank"]))
    cell = frame.set_index(["rank", "position"])
    rarity = np.full((len(ranks), len(positions)), np.nan)
    texts = [["" for _ in positions] for _ in ranks]
    custom = np.zeros((len(ranks), len(positions), 4), dtype=object)
    for i, rank in enumerate(ranks):
        for j, pos in enumerate(positions):
            row = cell.loc[(rank, pos)]
            share = max(float(row["share"]), 1e-7)
            rarity[i, j] = -np.log10(share)
            beyond = " (beyond the corpus)" if row["beyond_corpus"] else ""
            texts[i][j] = str(row["label"])
            custom[i, j] = [int(row["layer"]), int(row["neuron"]), f"{100 * share:.3g}%{beyond}", row["side"]]
    tokens = [shown(str(frame[frame.position == p]["token"].iloc[0])) for p in positions]
    fig = go.Figure(
        go.Heatmap(
            z=rarity,
            x=[f"{p}: {t}" for p, t in zip(positions, tokens)],
            y=[f"#{r}" for r in ranks],
            text=texts,
            texttemplate="%{text}",
            customdata=custom,
            colorscale="Oranges",
            colorbar=dict(title="−log10 share"),
            hovertemplate="%{x}<br>%{text} fires %{customdata[3]}: top %{customdata[2]} of the corpus<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed", title="rarest first")
    return _layout(fig, "Which neurons fire unusually on each token", height=120 + 40 * len(ranks))
