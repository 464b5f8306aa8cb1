"""Activation patching: which layers, positions, heads and single neurons carry the clean/corrupted difference.

The page renders progressively, cheapest first: both runs, each layer patched whole (the first chart), the neurons
(the top one anywhere, verified exactly, and the sweep of one layer, screened in bfloat16 where that pays), the heads
(on request where they would take more than HEADS_AUTO_S here: prompts that differ early, ablations; per position only
on request: it costs P times as much), then the layer × position grids (on request where they would take more than
GRID_AUTO_S here).
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pandas as pd
import streamlit as st

from core import story
from core.analyses import attribution, patching
from core.analyses.patching import ABLATION_HELP, ABLATIONS, PatchInputs
from core.engine.model import Model
from core.frames import by_magnitude
from core.hosting import limits
from ui import analyses, charts, common, navigation, params, text
from ui.admission import admitted
from ui.common import Section
from ui.export import jsonable

PAGE = "patching"
TOP_NEURONS = 20
VERIFY_DEFAULT = 50
# The layers × positions grid runs with the page when this machine should finish it within this many seconds;
# above (prompts that differ early, ablations: ~6-10 s here) it is one press away, shown last.
GRID_AUTO_S = 3.0
# The heads (every head patched at all positions) run with the page when this machine should finish them within this
# many seconds (the post's pair: ≈ 1 s); where every position is recomputed (ablations, prompts that differ early:
# ≈ 3-4 s here, as much as the neurons) they are one press away, so the page settles on its headline first.
HEADS_AUTO_S = 2.0
# MLP 0's all-positions score above which the page calls it "an extended embedding" (the post's reading).
EXTENDED_EMBEDDING = 0.5


def key(name: str) -> str:
    return params.key(PAGE, name)


def page_params(model: Model) -> list[params.Param]:
    return [
        params.Param("clean", story.pair(model.name)[0]),
        params.Param("corrupted", story.pair(model.name)[1]),
        params.Param("answer", story.ANSWER),
        params.Param("wrong", story.WRONG),
        params.Param("ablation", "clean", params.choice("ablation", ABLATIONS)),
        params.Param("layer", None, params.whole_number("layer", 0, model.n_layers - 1)),
    ]


def inputs(model: Model) -> PatchInputs:
    spec = page_params(model)
    params.bind(PAGE, spec)
    left, right = st.columns([3, 1])
    left.text_area("Clean prompt", key=key("clean"), height=80, persist_state="session")
    left.text_area("Corrupted prompt (same number of tokens)", key=key("corrupted"), height=80, persist_state="session")
    right.text_input(
        "Answer token", key=key("answer"), persist_state="session", help="One token with its leading space, e.g. ' an'"
    )
    right.text_input("Wrong token", key=key("wrong"), persist_state="session")
    right.selectbox(
        "Ablation",
        ABLATIONS,
        key=key("ablation"),
        persist_state="session",
        format_func=lambda a: f"{a}: {ABLATION_HELP[a]}",
        help="clean = activation patching (the post); the others modify the clean run",
    )
    right.number_input(
        "Neuron sweep layer",
        key=key("layer"),
        min_value=0,
        step=1,
        placeholder="standout MLP layer",
        persist_state="session",
        help="Empty = the MLP layer (MLP 0 aside) whose all-positions patch restores most",
    )
    params.publish(PAGE, spec)
    return PatchInputs(*(params.value(PAGE, n) for n in ("clean", "corrupted", "answer", "wrong", "ablation")))


def verify_cap() -> int:
    """The verify slider's maximum: never more than the hosted top-k cap would accept."""
    cap = limits().max_top_k
    return 200 if cap is None else max(10, min(200, cap))


def seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 1.5 else "about a second"


# ---------------------------------------------------------------- sections


def summary_section(model: Model, summary: dict, inputs: PatchInputs) -> None:
    """Both runs; summary is the setup's to_json() (the JSON download's head, as `python -m core patch --json`)."""
    answer, wrong = text.literal(charts.shown(inputs.answer)), text.literal(charts.shown(inputs.wrong))
    cols = st.columns(6)
    cols[0].metric("clean logit diff", f"{summary['clean_logit_diff']:.3f}")
    cols[1].metric("corrupted logit diff", f"{summary['corrupted_logit_diff']:.3f}")
    cols[2].metric(f"clean P({answer})", f"{summary['clean_probs']['answer']:.3f}")
    cols[3].metric(f"clean P({wrong})", f"{summary['clean_probs']['wrong']:.3f}")
    cols[4].metric(f"corrupted P({answer})", f"{summary['corrupted_probs']['answer']:.3f}")
    cols[5].metric(f"corrupted P({wrong})", f"{summary['corrupted_probs']['wrong']:.3f}")
    common.conventions(
        model,
        extra=f"**Score:** {summary['score']} ({summary['ablation_meaning']}); "
        "1 = this activation carries the whole difference",
    )


def totals_section(totals: dict[str, np.ndarray], standout: int) -> None:
    st.subheader("Each layer patched whole")
    left, right = st.columns([3, 2])
    left.plotly_chart(charts.layer_totals(totals), key="patching:totals")
    mlp = totals["mlp_out"]
    mlp0 = (
        f"MLP 0 scores {mlp[0]:.3f}: it acts as an extended embedding (the post's reading) and is left out"
        if abs(mlp[0]) >= EXTENDED_EMBEDDING
        else f"MLP 0 scores {mlp[0]:.3f}"
    )
    depth = patching.depth_word(standout, len(mlp))
    right.markdown(
        f"**Standout {depth} MLP layer: {standout}** of {len(mlp)} (all-positions score {mlp[standout]:.3f}; {mlp0})."
    )
    frame = pd.DataFrame({"layer": range(len(mlp)), "attn_out": totals["attn_out"], "mlp_out": mlp})
    order = np.argsort(-np.maximum(np.abs(frame.attn_out), np.abs(frame.mlp_out)), kind="stable")
    with right:
        common.table(frame.iloc[order], "patching_layer_totals", key="patching:totals_table", height=250)


def effect_text(model: Model, effect: patching.Effect, what: str, ablation: str) -> str:
    """A sentence, computed from the numbers, of what the patch does in absolute terms."""
    verb = "patched into the corrupted run" if ablation == "clean" else f"{ablation}-ablated in the clean run"
    before, after = model.token_str(effect.base_top), model.token_str(effect.patched_top)
    change = (
        f"the top-1 prediction changes from `{text.literal(charts.shown(before))}` to "
        f"`{text.literal(charts.shown(after))}`"
        if effect.base_top != effect.patched_top
        else f"the top-1 prediction stays `{text.literal(charts.shown(before))}`"
    )
    return f"{what} {verb}: logit diff {effect.base_logit_diff:.3f} → **{effect.patched_logit_diff:.3f}**; {change}."


def headline_section(model: Model, view: analyses.NeuronsView, inp: PatchInputs, top_k: int) -> dict:
    """The top neuron anywhere: attribution proposes candidates, exact patching ranks them."""
    st.subheader("The top neuron anywhere (every neuron of every layer)")
    found = view.top
    if found is None:
        st.info(
            "Attribution patching approximates clean patching only: for ablations the page sweeps one layer "
            "(below). Choose the ablation 'clean' to rank every neuron of every layer."
        )
        return {}
    st.caption(
        f"**{attribution.CAVEAT}** Attribution = (clean − corrupted activation) × gradient of the logit diff, "
        f"normalised like the exact score; 2 forwards + 1 backward for all neurons at once. {found.rule()}"
    )
    best = found.best
    a, b, c = st.columns(3)
    a.metric("top neuron anywhere", best.label, help="the highest *exact* score among the verified candidates")
    b.metric("its exact score", f"{best.exact:.3f}", help=f"attribution estimated {best.attribution:.3f}")
    c.metric(f"Spearman ρ, attribution vs exact (top {top_k})", f"{found.spearman:.3f}")
    flagged = int(found.table.disagree.sum())
    if flagged:
        st.caption(
            f"{flagged} of {len(found.table)} candidates differ between attribution and exact by more than "
            f"{attribution.DISAGREE_RATIO:g}× (column 'disagree'); swept layers: "
            f"{', '.join(map(str, found.swept_layers)) or 'none'}."
        )
    prompt = {"prompt": params.value(PAGE, "clean")}
    navigation.steer_link(int(best.layer), int(best.neuron), prompt["prompt"])
    common.neuron_chart(
        charts.neuron_grid(
            view.attribution,
            found.table.head(20),
            "attribution",
            "Attribution score of every neuron; red = the top verified candidates (click to open)",
        ),
        "patching:all_layers",
        **prompt,
    )
    common.neuron_table(
        found.table, "all_neurons_exact_vs_attribution", key="patching:all_layers_table", query=prompt, height=300
    )
    return found.to_json()


def sweep_section(model: Model, view: analyses.NeuronsView, ablation: str) -> None:
    sweep = view.sweep
    st.subheader(f"Neuron sweep of MLP {sweep.layer}")
    frame = sweep.frame()
    best = sweep.winners(1).iloc[0]  # the best fp32 row (a screened row never heads the page)
    a, b, c = st.columns(3)
    a.metric("top neuron", best["label"], help="click its point or its row to open its page")
    b.metric("its score", f"{best['score']:.3f}")
    c.metric(
        f"whole MLP {sweep.layer} (all neurons at once)",
        f"{sweep.layer_score:.3f}",
        help="the neurons' deltas are exact and add up: this is mlp_out of the layer patched at all positions",
    )
    st.markdown(
        effect_text(model, view.effect, best["label"], ablation)
        + "  \n"
        + effect_text(model, view.layer_effect, f"The whole MLP {sweep.layer}", ablation)
    )
    st.caption(f"**Precision:** {sweep.precision()} (column 'exact').")
    prompt = {"prompt": params.value(PAGE, "clean")}
    navigation.steer_link(int(best.layer), int(best.neuron), prompt["prompt"])
    common.neuron_chart(charts.neuron_sweep(frame), "patching:sweep", **prompt)
    st.markdown(f"**Top {TOP_NEURONS} neurons by |score|** — click a row to open the neuron's page")
    by_size = by_magnitude(frame, "score")
    common.neuron_table(
        by_size.head(TOP_NEURONS), f"neuron_sweep_L{sweep.layer}_top", key="patching:top_neurons", query=prompt
    )
    with st.expander(f"All {len(frame)} neurons"):
        common.table(by_size, f"neuron_sweep_L{sweep.layer}_all", key="patching:all_neurons", height=300)


def grid_wanted(model: Model, key_: PatchInputs, grid_s: float) -> bool:
    """The layers × positions grid runs by itself when it is cheap here, when it is cached, or once asked for."""
    if grid_s <= GRID_AUTO_S or analyses.was_completed(model.fingerprint, ("grid", key_)):
        return True
    if st.session_state.get("patching:grid_on") == key_:
        return True
    st.subheader("Layers × positions")
    st.caption(
        f"Each of the {model.n_layers} layers' resid_pre, attn_out and mlp_out patched at each position alone: "
        f"≈ {seconds(grid_s)} on this machine for these prompts (the rest of the page is shown first)."
    )
    if st.button(f"Compute layers × positions (≈ {seconds(grid_s)})", key="patching:grid"):
        st.session_state["patching:grid_on"] = key_
        st.rerun()
    return False


def heads_wanted(model: Model, key_: PatchInputs, heads_s: float) -> bool:
    """The heads run by themselves when they are cheap here, when they are cached, or once asked for."""
    if heads_s <= HEADS_AUTO_S or analyses.was_completed(model.fingerprint, ("heads", key_)):
        return True
    if st.session_state.get("patching:heads_on") == key_:
        return True
    st.subheader("Attention heads")
    st.caption(
        f"Each of the {model.n_layers * model.n_heads} heads' output patched at all positions: ≈ {seconds(heads_s)} "
        "on this machine for these inputs (every position is recomputed; the rest of the page is shown first)."
    )
    if st.button(f"Compute the heads (≈ {seconds(heads_s)})", key="patching:heads"):
        st.session_state["patching:heads_on"] = key_
        st.rerun()
    return False


def grid_section(layers: patching.LayerPatching, summary: dict) -> None:
    st.subheader("Layers × positions")
    pieces, corrupted_pieces = summary["tokens"], summary["corrupted_tokens"]
    st.plotly_chart(charts.position_heatmaps(layers.scores, pieces, corrupted_pieces), key="patching:positions")
    frame = layers.frame(charts.position_labels(pieces, corrupted_pieces))
    frame = by_magnitude(frame, "score")
    common.table(frame, "patching_layers_positions", key="patching:layers_table", height=250)


def heads_section(heads: patching.HeadPatching, summary: dict, per_position_s: float) -> bool:
    """The heads at all positions; returns True when the per-position heads were asked for."""
    st.subheader("Attention heads (each head's output patched at all positions)")
    frame = heads.frame()
    st.plotly_chart(
        charts.heads_heatmap(frame, "score", "Head patching score (all positions)", "score"), key="patching:heads"
    )
    common.table(
        frame,
        "patching_heads",
        key="patching:heads_table",
        height=250,
    )
    if heads.per_position is None:
        return st.button(f"Heads at each position (≈ {seconds(per_position_s)} here)", key="patching:heads_pp")
    grid = heads.per_position.reshape(-1, heads.per_position.shape[-1])  # [L·H, P]
    labels = [f"L{l}H{h}" for l in range(heads.per_position.shape[0]) for h in range(heads.per_position.shape[1])]
    st.plotly_chart(
        charts.grid_heatmap(
            grid,
            list(range(grid.shape[1])),
            charts.position_labels(summary["tokens"], summary["corrupted_tokens"]),
            "Each head patched at one position",
            "score",
            y_labels=labels,
        ),
        key="patching:heads_pp_chart",
    )
    return False


# ---------------------------------------------------------------- the page


def sections(model: Model, inp: PatchInputs, key_: PatchInputs, estimates: dict[str, float]) -> bool:
    """Every section of the page, cheapest first; True when all of them ran to the end."""
    summary = analyses.patch_summary(model, model.fingerprint, key_)
    summary_section(model, summary, inp)
    # The JSON download: the keys of `python -m core patch --json` (tests/test_app.py checks they are equal); each
    # section below adds its results' to_json() to it.
    payload: dict = {"model": model.facts(), **summary}
    finished = []  # the sections that ran to the end: only a complete page is reopened from the cache
    results: list = []  # the phases' results: a caption says when they were read back from the disk cache
    with Section():
        totals = analyses.patch_layer_totals(model, model.fingerprint, key_)
        standout = patching.standout_mlp_layer(totals["mlp_out"])
        payload.update(all_positions=jsonable(totals), standout_mlp_layer=standout)
        totals_section(totals, standout)
        finished.append("totals")
    with Section():
        chosen = params.value(PAGE, "layer")
        sweep_layer = standout if chosen is None else patching.check_layer(model, int(chosen))
        top_k = st.slider(
            "Candidates to verify exactly (attribution top-k)",
            10,
            verify_cap(),
            min(VERIFY_DEFAULT, verify_cap()),
            step=10,
            key="patching:verify_k",
        )
        view = analyses.patch_top_neurons(model, model.fingerprint, key_, sweep_layer, top_k)
        results.append(view)
        payload.update(headline_section(model, view, inp, top_k))
        sweep_section(model, view, inp.ablation)
        payload.update(
            layer_choice="user" if chosen is not None else "standout",
            **view.sweep.to_json(),
            effect=view.effect.to_json(),
            layer_effect=view.layer_effect.to_json(),
        )
        finished.append("neurons")
    with Section():
        if heads_wanted(model, key_, estimates["heads"]):
            wants = st.session_state.get("patching:heads_pp_on") == key_
            heads = analyses.patch_heads(model, model.fingerprint, key_, per_position=wants)
            results.append(heads)
            payload.update(heads.to_json())
            analyses.mark_completed(model.fingerprint, ("heads", key_))
            if heads_section(heads, summary, estimates["heads per position"]):
                st.session_state["patching:heads_pp_on"] = key_
                st.rerun()
        else:
            payload.update(
                heads_all_positions=None, heads_per_position=None, heads="not computed: press 'Compute the heads'"
            )
        finished.append("heads")
    # Last: where prompts differ early (or under an ablation) every position is patched at every layer, the page's
    # largest job; above GRID_AUTO_S it waits for a press (the JSON then says so).
    with Section():
        if grid_wanted(model, key_, estimates["layers × positions"]):
            layers = analyses.patch_layers(model, model.fingerprint, key_)
            results.append(layers)
            payload.update(layers.to_json())
            grid_section(layers, summary)
            analyses.mark_completed(model.fingerprint, ("grid", key_))
        else:
            payload.update(scores=None, layers_positions="not computed: press 'Compute layers × positions'")
        finished.append("layers")
    analyses.reopened_caption(*results)
    common.json_download(payload, "patching")
    return len(finished) == 4


def disarm() -> None:
    st.session_state.pop("patching:armed", None)


def body(model: Model) -> None:
    st.title("Activation patching")
    st.markdown(
        "Run the corrupted prompt, put back one activation from the clean run, and see how much of the "
        "answer comes back: each layer whole, every neuron, layers × positions, heads."
    )
    inp = inputs(model)
    key_ = inp
    run, stop = st.columns([1, 5])
    common.run_button("Run patching", "patching:run", armed_key="patching:armed", container=run)
    estimates = analyses.estimate_seconds(model, key_, per_position_heads=True)  # bad inputs: their message, here
    on_run = {k: v for k, v in estimates.items() if k != "heads per position"}
    if on_run["layers × positions"] > GRID_AUTO_S:
        on_run.pop("layers × positions")
    if on_run["heads"] > HEADS_AUTO_S:
        on_run.pop("heads")
    waiting = (
        f"Not computed yet for these inputs. Press **Run patching**: ≈ {seconds(sum(on_run.values()))} "
        "on this machine (" + ", ".join(f"{k} {seconds(v)}" for k, v in on_run.items()) + "), "
        "estimated from the work's size and this machine's matmul rate. Afterwards changed inputs "
        "recompute by themselves and results are cached."
    )
    # a reopened link whose results are cached shows them without a press
    if not common.armed(
        "patching:armed", ready=lambda: analyses.was_completed(model.fingerprint, key_), waiting=waiting
    ):
        return
    stop.button("Stop", key="patching:stop", on_click=disarm, help="Stop the computation (finished parts stay cached)")
    # One admission for the whole page, not one per phase: with one slot, per-phase admission interleaved the
    # sessions' phases and every visitor's page finished last (bench/load.py). A reopened page is all cache hits.
    whole_page = nullcontext() if analyses.was_completed(model.fingerprint, key_) else admitted("the Patching page")
    with whole_page:
        finished = sections(model, inp, key_, estimates)
    if finished:
        analyses.mark_completed(model.fingerprint, key_)


common.page("Patching", body)
