"""Home: what the tool answers, and the post's story in five steps, each a link to a page pre-filled with the
post's prompts. The other pages are in pages/ (their file names are the URLs: /Logit_Lens, /Patching, …).

Run: streamlit run app.py
"""

from __future__ import annotations

import streamlit as st

from core import story
from ui import common, navigation, params
from ui.navigation import path


def story_links() -> list[tuple[str, str, str, list[tuple[str, str, dict[str, str]]]]]:
    """(step title, question, what the embedded model shows, [(page, link label, query params)])."""
    model_name = params.value("app", "model")
    layer, neuron = story.KNOWN_NEURONS.get(model_name, (None, None))
    pair = {"clean": story.CLEAN, "corrupted": story.CORRUPTED, "answer": story.ANSWER, "wrong": story.WRONG}
    neuron_query = {"layer": str(layer), "neuron": str(neuron)} if layer is not None else {}
    sweep_query = {**pair, "layer": str(layer)} if layer is not None else pair
    corpus_query = {"neurons": f"L{layer}.N{neuron}"} if layer is not None else {}
    return [
        (
            "1. The model says “an”",
            "Before it writes the noun, does the model already prefer ' an' over ' a'?",
            "' an' is the top-1 prediction (p ≈ 0.61, ' a' ≈ 0.30). The logit lens shows the jump at MLP 25 (logit "
            "diff −5.6 → +1.5), and MLP 25 is the largest direct contributor (+3.8).",
            [
                (
                    "lens",
                    "Logit lens on the post's prompt",
                    {"prompt": story.CLEAN, "answer": story.ANSWER, "wrong": story.WRONG},
                )
            ],
        ),
        (
            "2. Find the layer",
            "Swap apple → lemon (now ' a' wins). Which activation, put back from the clean run, restores ' an'?",
            "Activation patching, layer × position: MLP 0 (an extended embedding) and MLP 25 stand out; MLP 25 patched "
            "at all positions restores ≈ 0.65 of the gap.",
            [("patching", "Patching on the post's prompt pair", pair)],
        ),
        (
            "3. Find the neuron",
            "Patch each neuron of that layer alone: does one carry the layer's effect?",
            "The neuron sweep of MLP 25: L25.N1527 alone restores ≈ 0.61 — 94 % of the whole layer's 0.65; the "
            "runner-up 0.01. Click its point to open it.",
            [("patching", "Neuron sweep of the standout layer", sweep_query)],
        ),
        (
            "4. What does it write?",
            "Is the neuron's output direction the ' an' token itself (congruence = W_out · unembedding)?",
            "L25.N1527's most congruent token is ' an' (12.4), and no other neuron of the 46,080 is more congruent "
            "with ' an'.",
            [
                ("neuron", "The an-neuron's page", neuron_query),
                ("token", "Every neuron's congruence with ' an'", {"token": story.ANSWER}),
            ],
        ),
        (
            "5. More token neurons, and real text",
            "Do other tokens have a neuron of their own? Does the neuron predict ' an' on ordinary text?",
            "Stand-out and mutual-exclusive searches over every neuron × every token; the corpus scan bins the "
            "neuron's activation on real text against how often ' an' is the model's top-1 prediction.",
            [
                ("search", "Search all neurons × tokens", {"kind": "mutual"}),
                ("corpus", "Corpus check of the an-neuron", corpus_query),
            ],
        ),
    ]


def home_body() -> None:
    st.title("Token Neuron Explorer")
    st.markdown(
        "Find and study **token neurons**: single MLP neurons whose job is to make a language model say one token. "
        "This app retraces *“We Found An Neuron in GPT-2”* (Miller & Neo, 2023): how does a model choose **“an”** "
        "over **“a”** before it has written the noun? Give a clean and a corrupted prompt and two tokens; the pages "
        "show where the decision is made (logit lens, activation patching of layers, heads and single neurons), "
        "which token each neuron writes (congruence), searches over every neuron × token, and a corpus check."
    )
    st.caption(
        "Every input is in the URL: copy it to share a view. Tokens are written with their leading space "
        "(' an', shown as ␣an). Every table has a CSV download, every analysis a JSON download."
    )
    st.subheader("The post's story in five steps")
    for title, question, finding, links in story_links():
        with st.container(border=True):
            st.markdown(f"**{title}** — {question}")
            st.caption(f"On the embedded model: {finding}")
            columns = st.columns(len(links) + 1)
            for column, (page, label, query) in zip(columns, links):
                column.page_link(
                    path(page),
                    label=label,
                    icon=":material/arrow_forward:",
                    query_params=navigation.with_model(dict(query)),
                )
    st.markdown(
        "**Conventions.** Metric: logit(answer) − logit(wrong) at the last position. Patching score: "
        "(patched − corrupted) / (clean − corrupted), so 1 = fully restored. Weight processing: TransformerLens's "
        "defaults (fold_ln, centring) unless the sidebar says *none*. BOS: GPT-2 gets `<|endoftext|>` prepended as "
        "in the post; SmolLM2 gets none, as its tokenizer does."
    )


model = common.setup_page("Home")
common.run_page(home_body)
