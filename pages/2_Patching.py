"""Activation patching: which layers, positions, heads and single neurons carry the clean/corrupted difference."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core import attribution, patching
from core.patching import ABLATION_HELP, ABLATIONS
from ui import analyses, charts, common, params, text
from ui.common import POST_ANSWER, POST_CLEAN, POST_CORRUPTED, POST_WRONG, Section
from ui.export import jsonable

PAGE = "patching"
TOP_NEURONS = 20


def key(name: str) -> str:
    return params.key(PAGE, name)


def page_params() -> list[params.Param]:
    return [
        params.Param("clean", POST_CLEAN), params.Param("corrupted", POST_CORRUPTED),
        params.Param("answer", POST_ANSWER), params.Param("wrong", POST_WRONG),
        params.Param("ablation", "clean", params.choice("ablation", ABLATIONS)),
        params.Param("layer", None, params.whole_number("layer", 0, model.n_layers - 1)),
    ]


def inputs() -> analyses.PatchInputs:
    spec = page_params()
    params.bind(PAGE, spec)
    left, right = st.columns([3, 1])
    left.text_area("Clean prompt", key=key("clean"), height=80, persist_state="session")
    left.text_area("Corrupted prompt (same number of tokens)", key=key("corrupted"), height=80,
                   persist_state="session")
    right.text_input("Answer token", key=key("answer"), persist_state="session",
                     help="One token with its leading space, e.g. ' an'")
    right.text_input("Wrong token", key=key("wrong"), persist_state="session")
    right.selectbox("Ablation", ABLATIONS, key=key("ablation"), persist_state="session",
                    format_func=lambda a: f"{a}: {ABLATION_HELP[a]}",
                    help="clean = activation patching (the post); the others modify the clean run")
    right.number_input("Neuron sweep layer", key=key("layer"), min_value=0, step=1, placeholder="standout MLP layer",
                       persist_state="session",
                       help="Empty = the late MLP layer whose all-positions patch restores most (MLP 0 excluded)")
    params.publish(PAGE, spec)
    return analyses.PatchInputs(*(params.value(PAGE, n) for n in ("clean", "corrupted", "answer", "wrong",
                                                                  "ablation")))


def summary_section(summary: analyses.PatchSummary, inputs: analyses.PatchInputs) -> None:
    answer, wrong = text.literal(charts.shown(inputs.answer)), text.literal(charts.shown(inputs.wrong))
    cols = st.columns(6)
    cols[0].metric("clean logit diff", f"{summary.clean_logit_diff:.3f}")
    cols[1].metric("corrupted logit diff", f"{summary.corrupted_logit_diff:.3f}")
    cols[2].metric(f"clean P({answer})", f"{summary.clean_probs[0]:.3f}")
    cols[3].metric(f"clean P({wrong})", f"{summary.clean_probs[1]:.3f}")
    cols[4].metric(f"corrupted P({answer})", f"{summary.corrupted_probs[0]:.3f}")
    cols[5].metric(f"corrupted P({wrong})", f"{summary.corrupted_probs[1]:.3f}")
    common.conventions(model, extra=f"**Score:** {summary.describe['score']} ({summary.describe['ablation_meaning']}); "
                                    "1 = this activation carries the whole difference")


def summary_payload(summary: analyses.PatchSummary, inputs: analyses.PatchInputs) -> dict:
    """The JSON download's head: model facts, conventions, both runs (same keys as `python -m core patch --json`)."""
    return {
        "model": model.facts(), **summary.describe,
        "answer": {"token": inputs.answer, "id": summary.answer_id},
        "wrong": {"token": inputs.wrong, "id": summary.wrong_id},
        "clean_token_ids": summary.clean_ids, "corrupted_token_ids": summary.corrupted_ids, "tokens": summary.pieces,
        "clean_logit_diff": summary.clean_logit_diff, "corrupted_logit_diff": summary.corrupted_logit_diff,
        "clean_probs": dict(zip(("answer", "wrong"), summary.clean_probs)),
        "corrupted_probs": dict(zip(("answer", "wrong"), summary.corrupted_probs)),
    }


def layers_section(layers: patching.LayerPatching, pieces: list[str], standout: int) -> None:
    st.subheader("Layers × positions")
    st.plotly_chart(charts.position_heatmaps(layers.scores, pieces), key="patching:positions")
    left, right = st.columns([3, 2])
    left.plotly_chart(charts.layer_totals(layers.all_positions), key="patching:totals")
    with right:
        st.markdown(f"**Standout late MLP layer: {standout}** "
                    f"(all-positions score {layers.all_positions['mlp_out'][standout]:.3f}; MLP 0 "
                    f"{layers.all_positions['mlp_out'][0]:.3f} acts as an extended embedding and is left out).")
        frame = layers.frame(pieces)
        common.table(frame, "patching_layers_positions", key="patching:layers_table", height=250)


def neurons_section(sweep: patching.NeuronPatching) -> None:
    st.subheader(f"Neuron sweep of MLP {sweep.layer}")
    frame = sweep.frame()
    best = frame.iloc[0]
    a, b, c = st.columns(3)
    a.metric("top neuron", best["label"], help="click its point or its row to open its page")
    b.metric("its score", f"{best['score']:.3f}")
    c.metric(f"whole MLP {sweep.layer} (all neurons at once)", f"{sweep.layer_score:.3f}",
             help="the neurons' deltas are exact and add up: this is mlp_out of the layer patched at all positions")
    event = st.plotly_chart(charts.neuron_sweep(frame), key="patching:sweep", on_select="rerun",
                            selection_mode="points")
    clicked = common.neuron_from_point(event)
    if clicked:
        common.go_neuron(*clicked, prompt=params.value(PAGE, "clean"))
    st.markdown(f"**Top {TOP_NEURONS} neurons** — click a row to open the neuron's page")
    top = frame.head(TOP_NEURONS)
    row = common.table(top, f"neuron_sweep_L{sweep.layer}_top", key="patching:top_neurons", select=True)
    if row:
        picked = top.iloc[row["row"]]
        common.go_neuron(int(picked["layer"]), int(picked["neuron"]), prompt=params.value(PAGE, "clean"))
    with st.expander(f"All {len(frame)} neurons"):
        common.table(frame, f"neuron_sweep_L{sweep.layer}_all", key="patching:all_neurons", height=300)


def all_neurons_section(inp: analyses.PatchInputs) -> dict:
    """Every neuron of every layer: attribution patching ranks them, exact patching verifies the top ones."""
    st.subheader("All layers: every neuron")
    st.caption(f"**{attribution.CAVEAT}** Attribution = (clean − corrupted activation) × gradient of the logit diff, "
               "normalised like the exact score; 2 forwards + 1 backward for all neurons at once.")
    if inp.ablation != "clean":
        st.info("Attribution patching approximates clean patching only: choose the ablation 'clean'.")
        return {}
    top_k = st.slider("Neurons to verify exactly", 10, 200, 50, step=10, key="patching:verify_k")
    found = analyses.all_neurons(model, model.fingerprint, inp.key(), top_k)
    a, b = st.columns(2)
    a.metric("top neuron anywhere", found.top.label.iloc[0], f"exact {found.top.exact.iloc[0]:.3f}",
             delta_color="off")
    b.metric(f"Spearman ρ, attribution vs exact (top {top_k})", f"{found.spearman:.3f}")
    event = st.plotly_chart(
        charts.neuron_grid(found.attribution, found.top.head(20), "attribution",
                           "Attribution score of every neuron — click a ringed point to open its neuron"),
        key="patching:all_layers", on_select="rerun", selection_mode="points")
    clicked = common.neuron_from_point(event)
    if clicked:
        common.go_neuron(*clicked, prompt=params.value(PAGE, "clean"))
    row = common.table(found.top, "all_neurons_attribution_vs_exact", key="patching:all_layers_table", select=True,
                       height=300)
    if row:
        picked = found.top.iloc[row["row"]]
        common.go_neuron(int(picked["layer"]), int(picked["neuron"]), prompt=params.value(PAGE, "clean"))
    return {"all_neurons": found.top[["layer", "neuron", "attribution", "exact"]], "spearman_top_k": found.spearman,
            "caveat": attribution.CAVEAT}


def heads_section(heads: patching.HeadPatching) -> None:
    st.subheader("Attention heads (each head's output patched at all positions)")
    frame = pd.DataFrame([(layer, head, float(heads.all_positions[layer, head]))
                          for layer in range(heads.all_positions.shape[0])
                          for head in range(heads.all_positions.shape[1])], columns=["layer", "head", "score"])
    st.plotly_chart(charts.heads_heatmap(frame, "score", "Head patching score (all positions)", "score"),
                    key="patching:heads")
    common.table(frame.sort_values("score", ascending=False), "patching_heads", key="patching:heads_table", height=250)


def body() -> None:
    st.title("Activation patching")
    st.markdown("Run the corrupted prompt, put back one activation from the clean run, and see how much of the "
                "answer comes back. Layers × positions, heads, then every single neuron of one MLP layer.")
    inp = inputs()
    if st.button("Run patching", type="primary", key="patching:run"):
        st.session_state["patching:armed"] = True
    if not st.session_state.get("patching:armed"):
        st.info("Press **Run patching** (≈ 10–20 s on 2 CPU cores). Afterwards, changed inputs recompute by "
                "themselves; results are cached.")
        return
    summary = analyses.patch_summary(model, model.fingerprint, inp.key())
    summary_section(summary, inp)
    payload = summary_payload(summary, inp)  # each section below adds what the engine returned to it
    with Section():
        layers = analyses.patch_layers(model, model.fingerprint, inp.key())
        standout = patching.standout_mlp_layer(layers)
        payload.update(scores=layers.scores, all_positions=layers.all_positions, standout_mlp_layer=standout)
        layers_section(layers, summary.pieces, standout)
        chosen = params.value(PAGE, "layer")
        sweep_layer = standout if chosen is None else patching.check_layer(model, int(chosen))
        sweep = analyses.patch_neurons(model, model.fingerprint, inp.key(), sweep_layer)
        payload.update(layer=sweep.layer, layer_choice="user" if chosen is not None else "standout",
                       layer_score=sweep.layer_score, neurons=sweep.frame()[["layer", "neuron", "score"]])
        neurons_section(sweep)
    with Section():
        payload.update(all_neurons_section(inp))
    with Section():
        heads = analyses.patch_heads(model, model.fingerprint, inp.key())
        payload.update(heads_all_positions=heads.all_positions, heads_per_position=heads.per_position)
        heads_section(heads)
    common.json_download(jsonable(payload), "patching")


model = common.setup_page("Patching")
if model is not None:
    common.run_page(body)
