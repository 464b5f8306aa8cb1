"""Corpus check (the post's §5): bin neurons' activations over real text against how often the model's top-1
prediction is the target token."""

from __future__ import annotations

import importlib.util
import os
import re

import streamlit as st

from core import story
from core.analyses.congruence import label, parse_neuron
from core.corpus import scan
from core.engine.model import Model
from core.errors import UserError
from core.hosting import limits
from ui import analyses, common, params, scan_view, text

PAGE = "corpus"
BUNDLED = "bundled"
SHOWN_NEURONS = 16  # sections drawn (each a chart, tables and examples); the JSON download has every neuron


def key(name: str) -> str:
    return params.key(PAGE, name)


def parse_neurons(model: Model, text: str) -> tuple[tuple[int, int], ...]:
    """'L25.N1527, L27.N554' → ((25, 1527), (27, 554)), each range-checked against the model."""
    parts = [p for p in re.split(r"[,;\s]+", str(text).strip()) if p]
    if not parts:
        raise UserError("no neurons given; write them as L25.N1527, separated by commas")
    neurons = tuple(dict.fromkeys(parse_neuron(model, p) for p in parts))
    scan.check_neuron_count(len(neurons))
    return neurons


def page_params(model: Model) -> list[params.Param]:
    known = story.KNOWN_NEURONS.get(model.name)
    return [
        params.Param("corpus", BUNDLED),
        params.Param(
            "neurons",
            label(*known) if known else "",
            lambda text: ", ".join(label(*n) for n in parse_neurons(model, text)),
        ),
        params.Param("target", story.ANSWER),
        params.Param(
            "budget",
            min(20000, limits().max_scan_tokens),
            params.whole_number("token budget", 100, limits().max_scan_tokens),
        ),
    ]


def inputs(model: Model) -> dict:
    spec = page_params(model)
    params.bind(PAGE, spec)
    left, right = st.columns(2)
    left.text_input(
        "Corpus",
        key=key("corpus"),
        persist_state="session",
        help="'bundled' (State of the Union addresses 1981–2021, shipped with the app), 'brown' (the Brown Corpus: "
        "500 samples, 15 genres; fetched at set-up), a local "
        ".txt/.jsonl/.parquet/.csv file or folder, or a Hugging Face dataset name when online",
    )
    left.text_input("Neurons", key=key("neurons"), persist_state="session", help="e.g. L25.N1527, L27.N554")
    right.text_input(
        "Target token", key=key("target"), persist_state="session", help="One token with its leading space, e.g. ' an'"
    )
    right.number_input(
        "Token budget",
        key=key("budget"),
        min_value=100,
        max_value=limits().max_scan_tokens,
        step=5000,
        persist_state="session",
        help="Positions read from the corpus (more = slower, smoother bins)",
    )
    with right.expander("Binning and examples"):
        st.number_input("Bin width (activation)", key=key("bin_width"), min_value=0.01, value=0.5, step=0.1)
        st.number_input(
            "Max-activating examples per neuron",
            key=key("examples"),
            min_value=1,
            max_value=limits().max_scan_examples,
            value=min(20, limits().max_scan_examples),
            step=5,
        )
    ray_address = ray_engine(right)
    params.publish(PAGE, spec)
    values = {
        name: params.value(PAGE, name) for name in ("corpus", "neurons", "target", "budget", "bin_width", "examples")
    }
    return values | {"ray_address": ray_address}


def ray_engine(column) -> str | None:
    """Where the scan runs: this process, or Ray (a local instance or the cluster at RAY_ADDRESS / typed here).

    Offered only when Ray is installed (requirements-scale.txt) and the app is not a hosted demo."""
    if limits().hosted or importlib.util.find_spec("ray") is None:
        return None
    with column.expander("Run on Ray (scale-out)"):
        on = st.checkbox(
            "Submit the scan to Ray",
            key=key("ray"),
            help="Same results as here; batches run on Ray workers, each with its own copy of the model",
        )
        address = st.text_input(
            "Ray address",
            value=os.environ.get("RAY_ADDRESS", "local"),
            key=key("ray_address"),
            help="'local' starts a 2-worker Ray instance on this machine; or ray://host:10001",
        )
    return (address.strip() or "local") if on else None


def body(model: Model) -> None:
    st.title("Corpus check")
    st.markdown(
        "Does the neuron act the same on ordinary text? Its activation at every position of a corpus, binned; "
        "for each bin, the share of positions where the model's top-1 prediction is the target token. The "
        "post saw the share rise with the an-neuron's activation."
    )
    inp = inputs(model)
    if not inp["neurons"].strip():
        st.info("Name one or more neurons, e.g. L25.N1527 (the Patching, Token and Search pages find them).")
        return
    neurons = parse_neurons(model, inp["neurons"])
    corpus = None if inp["corpus"].strip() in ("", BUNDLED) else inp["corpus"].strip()
    run_key = (corpus, neurons, inp["target"], int(inp["budget"]), float(inp["bin_width"]), int(inp["examples"]))
    engine = "this process" if inp["ray_address"] is None else f"Ray ({inp['ray_address']})"
    if not common.run_gate(
        "Scan",
        "corpus:run",
        armed_key="corpus:armed",
        waiting="Press **Scan** (one forward pass over the token budget; progress is shown).",
    ):
        return
    view = analyses.corpus_scan(
        model,
        model.fingerprint,
        corpus,
        neurons,
        inp["target"],
        run_key[3],
        run_key[4],
        run_key[5],
        12,
        inp["ray_address"],
    )
    common.conventions(
        model,
        metric=False,
        extra=f"**Corpus:** {text.literal(inp['corpus'])} · **Target:** "
        f"{text.literal(repr(inp['target']))} · **Ran on:** "
        f"{text.literal(engine)}",
    )
    for name, result in list(view.neurons.items())[:SHOWN_NEURONS]:
        st.subheader(name)
        scan_view.neuron_scan(name, result, inp["target"], key=f"corpus:{name}")
    if len(view.neurons) > SHOWN_NEURONS:
        st.info(
            f"The page shows the first {SHOWN_NEURONS} of {len(view.neurons)} neurons; the JSON download below "
            "has all of them."
        )
    common.json_download(view.payload, "corpus_scan")


common.page("Corpus", body)
