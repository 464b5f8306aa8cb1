"""Home: what the tool answers, the Prompt page as the first door, and the post's story in six steps told on the
picked model (its own story pair, every number computed: core.reproduce.home_story), each a link to a page
pre-filled with that pair. The other pages are in pages/ (their file names are the URLs: /Logit_Lens, /Patching, …).

Run: streamlit run app.py
"""

from __future__ import annotations

import streamlit as st

from core.engine.model import Model
from ui import analyses, charts, common, navigation, steer_view, text
from ui.navigation import path


def story_links(told: dict, negated: str) -> list[tuple[str, str, str, list[tuple[str, str, dict[str, str]]]]]:
    """(step title, question, what the picked model shows, [(page, link label, query params)]).

    told: core.reproduce.home_story of the picked model (its own story pair; every number computed); negated: what
    negating its neuron does to the generated text (negation_text)."""
    answer, wrong = told["answer"], told["wrong"]
    a, w = charts.shown(answer), charts.shown(wrong)
    pair = {"clean": told["clean"], "corrupted": told["corrupted"], "answer": answer, "wrong": wrong}
    layer, neuron = told["an_layer"], told["an_neuron_index"]
    name, standout = told["an_neuron"], told["standout_layer"]
    top1 = charts.shown(told["clean_top1"])
    whose = "the post's prompt" if told["is_the_posts_pair"] else "this model's story prompt"
    said = (
        f"{a} is the top-1 prediction (p = {told['clean_p_answer']:.2f}, {w} = {told['clean_p_wrong']:.2f})"
        if told["clean_top1"] == answer
        else f"the top-1 prediction is {top1}, not {a} (p({a}) = {told['clean_p_answer']:.2f})"
    )
    if not told["is_the_posts_pair"]:
        said = (
            f"On the post's own prompt this model says {charts.shown(told['post_prompt_top1'])} "
            f"(p({a}) = {told['post_prompt_p_answer']:.3f}), so its story uses another pair. "
            + said[0].upper()
            + said[1:]
        )
    mlp0 = f"MLP 0 scores {told['mlp0_score']:.2f} (an extended embedding); " if told["mlp0_score"] >= 0.5 else ""
    sign = "negative" if told["an_neuron_activation"] < 0 else "positive"
    rank_text = (
        f"no other neuron of the {told['neurons']:,} is more congruent with {a}"
        if told["answer_rank_among_neurons"] == 1
        else f"its congruence with {a} is {told['answer_congruence']:+.1f}: rank {told['answer_rank_among_neurons']:,} "
        f"of {told['neurons']:,} neurons from the top ({told['answer_rank_from_below']:,} from the bottom)"
    )
    runner = (
        f"; the runner-up {told['runner_up']} {told['runner_up_score']:.2f}" if told["runner_up"] is not None else ""
    )
    return [
        (
            "1. The model says “an”",
            f"Before it writes the noun, does the model already prefer {a} over {w}?",
            f"{said}. The logit lens shows the largest jump at MLP {told['lens_jump_layer']} (logit diff "
            f"{told['lens_jump_from']:+.1f} → {told['lens_jump_to']:+.1f}), and MLP {told['top_direct_mlp']} is the "
            f"largest direct contributor ({told['top_direct_mlp_value']:+.1f}).",
            [("lens", f"Logit lens on {whose}", {"prompt": told["clean"], "answer": answer, "wrong": wrong})],
        ),
        (
            "2. Find the layer",
            f"Swap the noun (now {charts.shown(told['corrupted_top'][0]['token'])} wins). Which activation, put back "
            f"from the clean run, restores {a}?",
            f"Each MLP patched whole at all positions: {mlp0}MLP {standout} stands out, restoring "
            f"{told['standout_score']:.2f} of the gap — a {told['standout_depth']} layer "
            f"({standout} of {told['n_layers']}).",
            [("patching", f"Patching on {whose} pair", pair)],
        ),
        (
            "3. Find the neuron",
            "Patch single neurons: does one carry a layer's effect?",
            f"Attribution proposes {told['verified']} neurons, exact patching ranks them: {name} alone restores "
            f"{told['an_neuron_score']:.2f} — {told['an_neuron_score'] / told['an_layer_score']:.0%} of its whole "
            f"MLP {layer}'s {told['an_layer_score']:.2f}{runner}. Click its point to open it.",
            [("patching", f"Neuron sweep of MLP {layer}", {**pair, "layer": str(layer)})],
        ),
        (
            "4. What does it write?",
            f"Is the neuron's output direction the {a} token itself (congruence = W_out · unembedding)?",
            f"{name}'s most congruent token is {charts.shown(told['top_token'])} "
            f"({told['top_token_congruence']:+.1f}) and it fires {sign} here "
            f"({told['an_neuron_activation']:+.2f}); {rank_text}.",
            [
                ("neuron", f"{name}'s page", {"layer": str(layer), "neuron": str(neuron)}),
                ("token", f"Every neuron's congruence with {a}", {"token": answer}),
            ],
        ),
        (
            "5. Change it",
            f"The post's decisive test: negate the neuron. Does the model then write {w} instead of {a}?",
            negated,
            [
                (
                    "steer",
                    f"Steer {name}: plain and negated text side by side",
                    {"neuron": name, "prompt": told["clean"]},
                )
            ],
        ),
        (
            "6. More token neurons, and real text",
            f"Do other tokens have a neuron of their own? Does the neuron predict {a} on ordinary text?",
            "Stand-out and mutual-exclusive searches over every neuron × every token; the corpus scan bins the "
            f"neuron's activation on real text against how often {a} is the model's top-1 prediction.",
            [
                ("search", "Search all neurons × tokens", {"kind": "mutual"}),
                ("corpus", "Corpus check of the neuron", {"neurons": name}),
            ],
        ),
    ]


def negation_text(model: Model, told: dict) -> str:
    """What negating the story's neuron does to the greedy continuation (computed: ui.steer_view.negation)."""
    done = steer_view.negation(model, model.fingerprint, told["clean"], told["an_layer"], told["an_neuron_index"])
    first = (
        f"the first new token goes from {charts.shown(done['baseline_first'])} (p = {done['p_baseline_first']:.2f}) "
        f"to {charts.shown(done['steered_first'])} (p = {done['p_steered_first']:.2f})"
        if done["baseline_first"] != done["steered_first"]
        else f"the first new token stays {charts.shown(done['baseline_first'])}"
    )
    return f"With {done['spec']}, {first}: “…{done['baseline']}” becomes “…{done['steered']}”."


def home_body(model: Model | None) -> None:
    st.title("Token Neuron Explorer")
    st.markdown(
        "Find and study **token neurons**: single MLP neurons whose job is to make a language model say one token. "
        "This app retraces *“We Found An Neuron in GPT-2”* (Miller & Neo, 2023): how does a model choose **“an”** "
        "over **“a”** before it has written the noun? Give a clean and a corrupted prompt and two tokens; the pages "
        "show where the decision is made (logit lens, activation patching of layers, heads and single neurons), "
        "which token each neuron writes (congruence), searches over every neuron × token, and a corpus check."
    )
    with st.container(border=True):
        st.markdown(
            "**Start with your own text.** One prompt, no pair needed: which neurons make the model say what it "
            "says there — each neuron's direct effect on the prediction, and its total effect once later layers "
            "have reacted."
        )
        st.page_link(path("prompt"), label="Prompt: the neurons that matter for my text", icon=":material/bolt:")
    st.caption(
        "Every input is in the URL: copy it to share a view. Tokens are written with their leading space "
        "(' an', shown as ␣an). Every table has a CSV download, every analysis a JSON download."
    )
    if model is None:
        return
    st.subheader("The post's story in six steps")
    told = analyses.home_story(model, model.fingerprint)
    for title, question, finding, links in story_links(told, negation_text(model, told)):
        with st.container(border=True):
            st.markdown(f"**{title}** — {text.literal(question)}")
            st.caption(f"On {text.literal(model.name)} (computed by the engine): {text.literal(finding)}")
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
common.run_page(lambda: home_body(model))
