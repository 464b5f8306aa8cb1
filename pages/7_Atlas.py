"""The neuron atlas: every neuron classified by what its output weights do to the vocabulary (core/analyses/atlas)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.analyses import atlas
from core.analyses.atlas import CLASSES
from core.engine.model import EMBEDDED_MODELS, Model, installed
from ui import analyses, common, navigation, params, text
from ui.admission import admitted
from ui.charts import shown

PAGE = "atlas"
SHOW = ("any class", "all neurons", "no class", *CLASSES)
COLOURS = {
    "token": "#d62728",
    "prediction": "#1f5fa8",
    "suppression": "#e08e0b",
    "partition": "#2ca02c",
    "entropy": "#9467bd",
    "none": "#c7c7c7",
}
PRIORITY = ("token", "prediction", "suppression", "partition", "entropy")  # a point's colour: its first class here
TABLE_COLUMNS = ["name", "classes", "label", "top_token", "kurtosis", "skew", "std", "gap", "n_standout"]
TABLE_COLUMNS += ["null_space_share", "norm", "top", "bottom", "layer", "neuron"]


def key(name: str) -> str:
    return params.key(PAGE, name)


def page_params(model: Model) -> list[params.Param]:
    def layer_range(value: str) -> str:
        atlas.check_layers(model, value)  # a UserError names the model's layers
        return value.strip()

    return [
        params.Param("show", "any class", params.choice("show", SHOW)),
        params.Param("layers", "", layer_range),
        params.Param("label", ""),
        params.Param("token", ""),
    ]


@st.cache_resource(max_entries=2, show_spinner=False)
def atlas_of(_model: Model, fingerprint: str, processing: str) -> atlas.Atlas:
    """The whole-model atlas (one streamed pass the first time, then the disk cache); shared, never mutated."""
    if atlas.is_cached(_model):
        return atlas.atlas(_model)
    with admitted("the atlas"), analyses.progress_bar("cosine of every neuron × token, in blocks") as progress:
        return atlas.atlas(_model, progress=progress)


def primary(frame: pd.DataFrame) -> pd.Series:
    out = pd.Series("none", index=frame.index)
    for name in reversed(PRIORITY):
        out[frame[name]] = name
    return out


def counts_figure(counts: dict[str, list[int]], n_layers: int, title: str, relative: bool) -> go.Figure:
    x = [(layer + 0.5) / n_layers for layer in range(n_layers)] if relative else list(range(n_layers))
    fig = go.Figure(
        [go.Bar(x=x, y=counts[name], name=name, marker_color=COLOURS[name]) for name in CLASSES if any(counts[name])]
    )
    fig.update_layout(
        barmode="stack",
        title=dict(text=title, x=0, font=dict(size=15)),
        height=340,
        margin=dict(l=10, r=10, t=45, b=10),
        xaxis_title="relative depth (layer + ½) / layers" if relative else "layer",
        yaxis_title="neurons",
        legend=dict(orientation="h", y=-0.25),
    )
    if relative:
        fig.update_xaxes(range=[0, 1])
    return fig


def scatter_figure(frame: pd.DataFrame) -> go.Figure:
    colour = primary(frame)
    fig = go.Figure()
    for name in ("none", *reversed(PRIORITY)):  # the classes drawn last, on top
        part = frame[colour == name]
        if part.empty:
            continue
        fig.add_trace(
            go.Scattergl(
                x=part["skew"],
                y=part["kurtosis"],
                mode="markers",
                name=f"{name} ({len(part):,})",
                marker=dict(color=COLOURS[name], size=3 if name == "none" else 6, opacity=0.5 if name == "none" else 1),
                customdata=part[["layer", "neuron"]].to_numpy(),
                text=part["name"] + " · " + part["classes"].replace("", "no class") + " · " + part["top"],
                hovertemplate="%{text}<br>skew %{x:.2f}, kurtosis %{y:.1f}<extra></extra>",
            )
        )
    fig.update_layout(
        title=dict(text="Skew × kurtosis of every neuron's vocabulary composition — click a point", x=0),
        height=480,
        margin=dict(l=10, r=10, t=45, b=10),
        xaxis_title="skew (Fisher–Pearson)",
        yaxis_title="kurtosis (Pearson; Gaussian = 3), log scale",
        yaxis_type="log",
    )
    return fig


def filtered(frame: pd.DataFrame, model: Model) -> pd.DataFrame:
    show = params.value(PAGE, "show")
    rows = frame
    if show == "any class":
        rows = rows[rows["classes"] != ""]
    elif show == "no class":
        rows = rows[rows["classes"] == ""]
    elif show in CLASSES:
        rows = rows[rows[show]]
    layers = params.value(PAGE, "layers")
    if layers:
        first, last = atlas.check_layers(model, layers)
        rows = rows[(rows["layer"] >= first) & (rows["layer"] <= last)]
    for name, column in (("label", "label"), ("token", "top")):
        wanted = str(params.value(PAGE, name) or "")
        if wanted:
            rows = rows[rows[column].str.contains(wanted, case=False, regex=False)]
    return rows.sort_values(["kurtosis"], ascending=False, kind="stable")


def comparison(model: Model) -> None:
    """The embedded models' class counts side by side, by relative depth (from each one's cached whole atlas)."""
    names = [name for name in EMBEDDED_MODELS if installed(name)]
    if len(names) < 2:
        return
    st.subheader("The embedded models side by side, by relative depth")
    processing = model.processing["name"]
    columns = st.columns(len(names))
    for column, name in zip(columns, names):
        counts = atlas.summary(name, processing)
        with column:
            if counts is None:
                st.info(
                    f"No atlas of {name} yet ({processing} weights): pick it in the sidebar and run the atlas, or "
                    f"run `python -m core atlas --model {name}` (one streamed pass)."
                )
                continue
            n_layers = len(next(iter(counts.values())))
            st.plotly_chart(
                counts_figure(counts, n_layers, f"{name}: {n_layers} layers", relative=True),
                key=f"atlas:compare:{name}",
            )


def body(model: Model) -> None:
    st.title("Atlas: every neuron classified by what it does to the vocabulary")
    n = model.n_layers * model.d_mlp
    st.markdown(
        f"For each of the {n:,} neurons, the cosine of its output direction with each of the {model.d_vocab:,} "
        "token unembeddings (its *vocabulary composition*, Gurnee et al. 2024), its moments, its top and bottom "
        "tokens and how much of it lies in the unembedding's null space (Stolfo et al. 2024). Classes: "
        "**prediction** / **suppression** (high kurtosis, positive / negative skew), **partition** (high "
        "variance), **entropy** (a large norm written into W_U's null space) and **token** (a handful of tokens far "
        "above the rest — the post's kind, which kurtosis misses in a large vocabulary)."
    )
    spec = page_params(model)
    params.bind(PAGE, spec)
    cols = st.columns([1.2, 1, 1, 1])
    cols[0].selectbox("Show", SHOW, key=key("show"), persist_state="session")
    cols[1].text_input("Layers", key=key("layers"), placeholder=f"all (0-{model.n_layers - 1})")
    cols[2].text_input("Label contains", key=key("label"), placeholder="e.g. one word")
    cols[3].text_input("Top tokens contain", key=key("token"), placeholder="e.g. an")
    params.publish(PAGE, spec)
    if not common.run_gate(
        "Run atlas",
        "atlas:run",
        armed_key="atlas:armed",
        ready=lambda: atlas.is_cached(model),
        waiting=f"Not computed yet for this model. Press **Run atlas**: one streamed pass over {n:,} neurons × "
        f"{model.d_vocab:,} tokens (≈ 1 min for smollm2-135m on 2 CPU cores; then read from the disk cache).",
    ):
        comparison(model)
        return
    result = atlas_of(model, model.fingerprint, model.processing["name"])
    frame = result.frame.assign(
        top=result.frame["top_tokens"].map(lambda ts: " ".join(shown(t) for t in ts)),
        bottom=result.frame["bottom_tokens"].map(lambda ts: " ".join(shown(t) for t in ts)),
    )
    info = result.info
    common.conventions(
        model,
        metric=False,
        extra=f"**Composition:** {text.literal(info['composition'])} · **Null space:** the "
        f"{info['null_space']['k']} bottom singular vectors of W_U (of {info['null_space']['of']})",
    )
    with st.expander("Thresholds (and where they come from)"):
        st.markdown("\n".join(f"- **{name}**: {text.literal(rule)}" for name, rule in info["thresholds"].items()))
    totals = {name: int(frame[name].sum()) for name in CLASSES}
    metric_columns = st.columns(len(CLASSES))
    for column, name in zip(metric_columns, CLASSES):
        column.metric(name, f"{totals[name]:,}")
    st.plotly_chart(
        counts_figure(result.counts(), model.n_layers, "Neurons of each class per layer", relative=False),
        key="atlas:counts",
    )
    common.neuron_chart(scatter_figure(frame), "atlas:scatter")
    with common.Section():  # a bad filter (typed layers outside the model) stops the table only
        rows = filtered(frame, model)
        st.markdown(f"**{len(rows):,} neurons** — click a row to open the neuron")
        shown_rows = rows[TABLE_COLUMNS]
        steer = [navigation.steer_url(int(l), int(n)) for l, n in zip(shown_rows["layer"], shown_rows["neuron"])]
        common.neuron_table(
            shown_rows,
            f"atlas_{model.name}",
            key="atlas:table",
            height=420,
            display=common.with_visible_tokens(shown_rows, "top_token").assign(steer=steer),
            column_config={"steer": st.column_config.LinkColumn("steer", display_text="Steer ↗")},
        )
    comparison(model)


common.page("Atlas", body)
