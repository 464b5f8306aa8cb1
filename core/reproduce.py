"""`python -m core reproduce`: the post's whole story on one model, as a self-contained report.

Steps, in the post's order: predictions, logit lens, layer × position patching, the an-neuron (the top neuron
anywhere by exact patching) and its layer's sweep, its congruence, the corpus check, the two searches, and negating
the neuron. A model that does not say " an" on the post's prompt (Gemma 3) is told so, and the story goes on with
the pair in core.story.STORY_PAIRS. Writes
report.md, report.html (figures inline), figures/*.png (matplotlib: installs from PyPI, renders offline) and
results.json. For GPT-2 large the post's published numbers stand next to the measured ones with a verdict each;
for the embedded model the reference is this project's own measurement (both in core.story).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.analyses import activations, attribution, congruence, drivers, lens, patching, predict, search
from core.corpus import scan
from core.engine import tokens
from core.engine.model import Model
from core.engine.tokens import Prompt
from core.jsonable import to_jsonable
from core.story import ANSWER, CLEAN, CORRUPTED, EXPECTED, WRONG, Expected
from core.story import pair as story_pair

STEPS = (
    "predictions",
    "logit_lens",
    "layer_patching",
    "neuron_sweep",
    "congruence",
    "corpus",
    "searches",
    "negation",
    "drivers",
    "pairs",
)

# progress(step done, steps in all, name of the step just started): reproduce's steps are named, unlike the
# engine's `core.progress.Progress`.
StepProgress = Callable[[int, int, str], None]


def verdict(measured: Any, expected: Expected) -> str:
    if measured is None or (isinstance(measured, float) and math.isnan(measured)):
        return "not measured"
    if expected.tolerance is None:
        return "reproduced" if measured == expected.value else "differs"
    return "reproduced" if abs(float(measured) - float(expected.value)) <= expected.tolerance else "differs"


def _negate(setup: patching.Setup, layer: int, neuron: int) -> dict:
    """Negate the neuron at every position of the clean run (as the post did); probabilities before and after.

    setup: ablation "negate". The engine's neuron patch (through the post-MLP norm where the model has one).
    """
    effect = patching.neuron_effect(setup, layer, neuron)
    before = setup.probs()["clean"]
    return {
        "p_answer_before": before[0],
        "p_wrong_before": before[1],
        "p_answer_after": effect.patched_probs[0],
        "p_wrong_after": effect.patched_probs[1],
        "top1_after": setup.model.token_str(effect.patched_top),
    }


@dataclass(frozen=True)
class Story:
    """The pair the story is told on, resolved once for every step."""

    clean: Prompt
    corrupted: Prompt
    answer: int
    wrong: int


def run(
    model: Model,
    corpus: str | None = None,
    corpus_tokens: int = 20_000,
    progress: StepProgress | None = None,
    search_top: int = 10,
) -> dict:
    """Every step of the story; returns the results dict (what results.json holds)."""

    def step(i: int) -> None:
        if progress:
            progress(i, len(STEPS), STEPS[i - 1] if i else "start")

    step(0)
    clean_text, corrupted_text = story_pair(model.name)
    story = Story(*patching.PatchInputs(clean_text, corrupted_text, ANSWER, WRONG).resolve(model))
    out: dict[str, Any] = {"model": model.facts(), "prompts": _prompts(story, clean_text, corrupted_text)}
    out.update(_predictions(model, story))
    step(1)
    out["logit_lens"] = _logit_lens(model, story)
    step(2)
    setup = patching.prepare(model, story.clean, story.corrupted, story.answer, story.wrong)
    layers = patching.patch_layers(setup)
    out["layer_patching"] = _layer_patching(setup, layers)
    step(3)
    out["neuron_sweep"] = _neuron_sweep(setup, layers)
    an_layer, an_neuron = congruence.parse_neuron(model, out["neuron_sweep"]["an_neuron"])
    step(4)
    out["congruence"] = _congruence(model, story, an_layer, an_neuron)
    step(5)
    out["corpus"] = _corpus(model, story, an_layer, an_neuron, corpus, corpus_tokens)
    step(6)
    out["searches"] = _searches(model, search_top)
    step(7)
    negate_setup = patching.prepare(model, story.clean, story.corrupted, story.answer, story.wrong, ablation="negate")
    out["negation"] = _negate(negate_setup, an_layer, an_neuron)
    step(8)
    out["drivers"] = _drivers(model, story.clean, story.corrupted, story.answer, story.wrong, an_layer, an_neuron)
    step(9)
    out["pairs"] = _pairs(model, corpus, corpus_tokens)
    step(10)
    out.update(_headlines(out))
    out["verdicts"] = _verdicts(model, out)
    return out


def _prompts(story: Story, clean_text: str, corrupted_text: str) -> dict:
    return {
        "clean": clean_text,
        "corrupted": corrupted_text,
        "is_the_posts_pair": (clean_text, corrupted_text) == (CLEAN, CORRUPTED),
        "answer": ANSWER,
        "wrong": WRONG,
        "clean_token_ids": story.clean.ids,
        "corrupted_token_ids": story.corrupted.ids,
        "tokens": story.clean.pieces,
    }


def _predictions(model: Model, story: Story) -> dict:
    """Both prompts' top predictions, and what the model says on the post's own prompt, whichever pair is told."""
    answer, wrong = story.answer, story.wrong
    clean_logits, corrupted_logits = (
        predict.last_logits(model, story.clean),
        predict.last_logits(model, story.corrupted),
    )
    post_logits = predict.last_logits(model, tokens.prompt(model, CLEAN))
    post_top = predict.top_k(model, post_logits, 5)
    post_prompt = {
        "top": post_top.to_dict("records"),
        "p_answer": predict.token_probs(post_logits, [answer])[0],
        "p_wrong": predict.token_probs(post_logits, [wrong])[0],
    }
    return {
        "predictions": {
            "clean_top": predict.top_k(model, clean_logits, 5).to_dict("records"),
            "corrupted_top": predict.top_k(model, corrupted_logits, 5).to_dict("records"),
            "clean_p_answer": predict.token_probs(clean_logits, [answer])[0],
            "clean_p_wrong": predict.token_probs(clean_logits, [wrong])[0],
            "corrupted_p_answer": predict.token_probs(corrupted_logits, [answer])[0],
            "corrupted_p_wrong": predict.token_probs(corrupted_logits, [wrong])[0],
        },
        "post_prompt": post_prompt,
        "post_prompt_top1": str(post_top.token[0]),
        "post_prompt_p_answer": post_prompt["p_answer"],
    }


def _logit_lens(model: Model, story: Story) -> dict:
    lensed = lens.logit_lens(model, story.clean, story.answer, story.wrong)
    after_mlp = lensed.layers[lensed.layers.stage.isin(["embed", "mlp"])].logit_diff.to_numpy()
    jumps = np.diff(after_mlp)  # jumps[l] = change across block l
    lens_json = lensed.to_json()
    return {
        "layers": lens_json["layers"],
        "lens_jump_layer": int(np.argmax(jumps)),
        "largest_jump": float(jumps.max()),
        "components": lens_json["components"],
    }


def _layer_patching(setup: patching.Setup, layers: patching.LayerPatching) -> dict:
    mlp_scores = layers.all_positions["mlp_out"]
    return {
        "clean_logit_diff": setup.clean_logit_diff,
        "corrupted_logit_diff": setup.corrupted_logit_diff,
        **layers.to_json(),  # scores, all_positions
        "top_mlp_layers": [{"layer": int(l), "score": float(mlp_scores[l])} for l in np.argsort(-mlp_scores)[:4]],
        "standout_layer": patching.standout_mlp_layer(layers),
    }


def _neuron_sweep(setup: patching.Setup, layers: patching.LayerPatching) -> dict:
    """The an-neuron is the top neuron anywhere by exact score (attribution top-50 + sweeps of the large layers);
    its layer's full sweep is shown (on SmolLM2 and GPT-2 large that is the standout layer)."""
    mlp_scores, standout = layers.all_positions["mlp_out"], patching.standout_mlp_layer(layers)
    found = attribution.find_top_neurons(
        setup, attribution.attribute(setup), 50, layer_totals=mlp_scores, extra_sweeps=(standout,)
    )
    an_layer, an_neuron = int(found.best.layer), int(found.best.neuron)
    sweep = found.sweeps.get(an_layer) or patching.patch_neurons(setup, an_layer)
    return {
        "layer": an_layer,
        "layer_score": sweep.layer_score,
        "an_neuron": congruence.label(an_layer, an_neuron),
        "an_neuron_score": float(found.best.exact),
        "share_of_layer": float(found.best.exact) / sweep.layer_score,
        "top": sweep.frame(10).to_dict("records"),
        "scores": sweep.scores.tolist(),
        "top_neuron_anywhere": found.to_json(),
    }


def _congruence(model: Model, story: Story, layer: int, neuron: int) -> dict:
    cong: dict[str, Any] = {}
    for matrix in congruence.MATRICES:
        n2t = congruence.neuron_to_tokens(model, layer, neuron, matrix, top_k=10)
        t2n = congruence.token_to_neurons(model, story.answer, matrix, top_k=10)
        flat = t2n.values.ravel()
        own = t2n.values[layer, neuron]
        counts, edges = np.histogram(n2t.values, bins=60)
        cong[matrix] = {
            "answer": float(n2t.values[story.answer]),
            "wrong": float(n2t.values[story.wrong]),
            "rank_among_neurons": int((flat > own).sum()) + 1,
            "rank_among_tokens": int((n2t.values > n2t.values[story.answer]).sum()) + 1,
            "top_tokens": n2t.top.to_dict("records"),
            "top_neurons": t2n.top.to_dict("records"),
            "histogram": counts.tolist(),
            "histogram_edges": edges.tolist(),
        }
    return {**cong, "processing": model.processing}


def _corpus(model: Model, story: Story, layer: int, neuron: int, corpus: str | None, corpus_tokens: int) -> dict:
    spec = scan.ScanSpec(
        neurons=((layer, neuron),), target=story.answer, dataset=corpus, max_tokens=corpus_tokens, top_examples=5
    )
    scanned = scan.scan(model, spec).to_json()
    neuron_scan = scanned["neurons"][congruence.label(layer, neuron)]
    return {
        "corpus": scanned["corpus"],
        "positions": scanned["positions"],
        **{k: neuron_scan[k] for k in ("bins", "totals", "correlation", "examples")},
    }


def _searches(model: Model, search_top: int) -> dict:
    tables = search.tables(model, "W_U")
    return {
        "matrix": "W_U",
        "standout": search.standout(model, tables, search_top).to_dict("records"),
        "mutual": search.mutual(model, tables, search_top).to_dict("records"),
    }


PAIRS_TOP = 100  # the mutual pairs tested on the corpus (the post's expectation: "many of them correlate")


def _pairs(model: Model, corpus: str | None, corpus_tokens: int) -> dict:
    """The top mutual pairs tested on the corpus step's corpus and budget (core.corpus.pairs): the top five's curves,
    the verdicts over the top PAIRS_TOP, and what that says about the post's expectation — computed, not written."""
    from core.corpus import pairs
    from core.corpus.sources import BUNDLED

    spec = pairs.PairsSpec("mutual", min(PAIRS_TOP, pairs.available(search.tables(model, "W_U"), "mutual")))
    spec = dataclasses.replace(spec, dataset=corpus or BUNDLED, max_tokens=corpus_tokens)
    result = pairs.pairs(model, spec)
    s = result.summary()
    testable, share = s["testable"], s["share_correlating_of_testable"]
    if testable == 0:
        answer = (
            f"untested here: none of the top {s['pairs']} pairs' tokens is the model's top-1 often enough "
            f"({pairs.MIN_TOP1}+ positions) in {result.positions:,} positions; a larger budget would tell"
        )
    elif share is not None and share >= 0.5:
        answer = (
            f"holds: {s['correlates']} of the {testable} testable pairs correlate ({share:.0%}); "
            f"{s['too rare to tell']} of {s['pairs']} are too rare to tell at this budget"
        )
    else:
        answer = (
            f"does not hold here: only {s['correlates']} of the {testable} testable pairs correlate "
            f"({share or 0:.0%}); {s['too rare to tell']} of {s['pairs']} are too rare to tell at this budget"
        )
    payload = result.to_json()
    return {
        **{k: payload[k] for k in ("kind", "matrix", "corpus", "positions", "settings", "thresholds", "summary")},
        "expectation": "We have not tested the other pairs, but we expect many of them to correlate.",
        "answer": answer,
        "pairs": result.frame().to_dict("records"),
        "top_curves": [{k: p[k] for k in ("rank", "label", "token", "verdict", "curve")} for p in result.pairs[:5]],
    }


def _headlines(out: dict) -> dict:
    """The quantities the verdicts compare, lifted to the top level of results.json."""
    return {
        **{
            k: out["predictions"][k]
            for k in ("clean_p_answer", "clean_p_wrong", "corrupted_p_answer", "corrupted_p_wrong")
        },
        "lens_jump_layer": out["logit_lens"]["lens_jump_layer"],
        "standout_layer": out["layer_patching"]["standout_layer"],
        "an_neuron": out["neuron_sweep"]["an_neuron"],
        "an_neuron_score": out["neuron_sweep"]["an_neuron_score"],
        "an_neuron_rank_among_neurons_W_U": out["congruence"]["W_U"]["rank_among_neurons"],
        "congruence_W_E_answer": out["congruence"]["W_E"]["answer"],
        "congruence_W_E_wrong": out["congruence"]["W_E"]["wrong"],
    }


def _verdicts(model: Model, out: dict) -> list[dict]:
    expected = EXPECTED.get(model.name, {})
    rows = [
        {
            "quantity": key,
            "measured": out.get(key),
            "expected": exp.value,
            "tolerance": exp.tolerance,
            "source": exp.why,
            "verdict": verdict(out.get(key), exp),
        }
        for key, exp in expected.items()
    ]
    return [*rows, out["drivers"]["verdict"]]


def _drivers(model: Model, clean, corrupted, answer: int, wrong: int, layer: int, neuron: int) -> dict:
    """What drives the an-neuron at the last position: its input split over components, path patching of every
    upstream component, and where the top path-patched head reads from. Verdict (computed, not written in): the
    post's open question is answered if that head's largest source is a token where the two prompts differ."""
    result = drivers.drivers(model, clean, layer, neuron, pair=(clean, corrupted, answer, wrong))
    paths = result.path_patching
    assert paths is not None
    heads = paths[paths.kind == "head"]
    top = heads.iloc[0]
    head = (int(top["layer"]), int(top["head"]))
    sources = drivers.reads_from(model, clean, head, (layer, neuron))
    strongest = sources.iloc[int(sources.first_order.abs().to_numpy().argmax())]
    differing = [i for i, (a, b) in enumerate(zip(clean.ids, corrupted.ids)) if a != b]
    reads_noun = int(strongest["source"]) in differing
    name = drivers.head_label(*head)
    return {
        "neuron": congruence.label(layer, neuron),
        "position": result.position,
        "inputs": result.inputs,
        "post_activation": result.post_activation,
        "clean_activation": (result.pair or {}).get("clean_activation"),
        "corrupted_activation": (result.pair or {}).get("corrupted_activation"),
        "top_components": result.components.head(8).to_dict("records"),
        "top_paths": paths.head(8).drop(columns=["patched_activation"]).to_dict("records"),
        "top_head": name,
        "top_head_neuron_restored": float(top["neuron_restored"]),
        "top_head_logit_diff_restored": float(top["logit_diff_restored"]),
        "top_head_reads_from": sources.sort_values("attention", ascending=False).head(5).to_dict("records"),
        "strongest_source": {
            "position": int(strongest["source"]),
            "token": str(strongest["token"]),
            "attention": float(strongest["attention"]),
            "first_order": float(strongest["first_order"]),
        },
        "conventions": result.conventions,
        "verdict": {
            "quantity": "top path-patched head reads the differing token",
            "measured": f"{name} reads {str(strongest['token'])!r} (position {int(strongest['source'])})",
            "expected": "a position where clean and corrupted differ: "
            + ", ".join(repr(clean.pieces[i]) for i in differing),
            "tolerance": None,
            "source": "computed on this run (docs/drivers.md)",
            "verdict": "reproduced" if reads_noun else "differs",
        },
    }


# ---------------------------------------------------------------- the Home page's story, computed


def home_story(model: Model, verify: int = 20) -> dict:
    """The numbers the Home page's five captions tell, computed on this model's story pair (core.story.pair):
    predictions, the logit lens's largest jump and the largest direct MLP contributor, each MLP patched whole at
    all positions (the standout layer, MLP 0 aside), the top neuron anywhere (attribution's top `verify`, each
    patched exactly: a lighter search than reproduce's, which also sweeps the large layers), its congruences.

    A few seconds on the embedded models (one attribution pass and one batched exact patch)."""
    clean_text, corrupted_text = story_pair(model.name)
    told = Story(*patching.PatchInputs(clean_text, corrupted_text, ANSWER, WRONG).resolve(model))
    predictions = _predictions(model, told)
    lensed = lens.logit_lens(model, told.clean, told.answer, told.wrong)
    after_mlp = lensed.layers[lensed.layers.stage.isin(["embed", "mlp"])].logit_diff.to_numpy()
    jump = int(np.argmax(np.diff(after_mlp)))
    mlps = lensed.components[lensed.components.kind == "mlp"]
    top_mlp = mlps.iloc[int(np.argmax(mlps.logit_diff.to_numpy()))]
    setup = patching.prepare(model, told.clean, told.corrupted, told.answer, told.wrong)
    totals = patching.patch_layer_totals(setup)["mlp_out"]
    standout = patching.standout_mlp_layer(totals)
    proposed = attribution.top_neurons(model, attribution.attribute(setup), verify)
    wanted: dict[int, list[int] | None] = {}
    for layer, neuron in zip(proposed.layer.tolist(), proposed.neuron.tolist()):
        listed = wanted.setdefault(int(layer), [])
        assert listed is not None
        listed.append(int(neuron))
    exact = sorted(
        (
            (float(score), layer, int(n))
            for layer, result in patching.patch_neuron_sets(setup, wanted).items()
            for n, score in zip(result.neurons, result.scores)
        ),
        reverse=True,
    )
    (best, an_layer, an_neuron), runner_up = exact[0], exact[1] if len(exact) > 1 else None
    n2t = congruence.neuron_to_tokens(model, an_layer, an_neuron, "W_U", top_k=3)
    t2n = congruence.token_to_neurons(model, told.answer, "W_U", top_k=1)
    own = t2n.values[an_layer, an_neuron]
    top = n2t.top.iloc[0]
    fired = float(activations.neuron_activations(model, told.clean, an_layer, an_neuron).activation.iloc[-1])
    return to_jsonable(
        {
            "model": model.name,
            "n_layers": model.n_layers,
            "neurons": model.n_layers * model.d_mlp,
            "clean": clean_text,
            "corrupted": corrupted_text,
            "is_the_posts_pair": (clean_text, corrupted_text) == (CLEAN, CORRUPTED),
            "answer": ANSWER,
            "wrong": WRONG,
            **predictions["predictions"],
            "clean_top1": predictions["predictions"]["clean_top"][0]["token"],
            "post_prompt_top1": predictions["post_prompt_top1"],
            "post_prompt_p_answer": predictions["post_prompt_p_answer"],
            "logit_diff": lensed.logit_diff,
            "lens_jump_layer": jump,
            "lens_jump_from": float(after_mlp[jump]),
            "lens_jump_to": float(after_mlp[jump + 1]),
            "top_direct_mlp": int(top_mlp["layer"]),
            "top_direct_mlp_value": float(top_mlp["logit_diff"]),
            "mlp0_score": float(totals[0]),
            "standout_layer": standout,
            "standout_score": float(totals[standout]),
            "standout_depth": patching.depth_word(standout, model.n_layers),
            "an_neuron": congruence.label(an_layer, an_neuron),
            "an_layer": an_layer,
            "an_neuron_index": an_neuron,
            "an_neuron_score": best,
            "an_layer_score": float(totals[an_layer]),
            "runner_up": congruence.label(runner_up[1], runner_up[2]) if runner_up else None,
            "runner_up_score": runner_up[0] if runner_up else None,
            "verified": len(exact),
            "top_token": str(top["token"]),
            "top_token_congruence": float(top["congruence"]),
            "answer_congruence": float(n2t.values[told.answer]),
            "answer_rank_among_neurons": int((t2n.values.ravel() > own).sum()) + 1,
            "answer_rank_from_below": int((t2n.values.ravel() < own).sum()) + 1,
            "an_neuron_activation": fired,
        }
    )


# ---------------------------------------------------------------- figures and report files


def figures(results: dict, folder: Path) -> dict[str, Path]:
    """Static PNGs of the story's charts (matplotlib, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, Path] = {}

    def save(fig, name: str) -> None:
        path = folder / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made[name] = path

    lens_rows = results["logit_lens"]["layers"]
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.plot([r["logit_diff"] for r in lens_rows], marker=".")
    ticks = [i for i, r in enumerate(lens_rows) if r["stage"] != "attn"]
    ax.set_xticks(ticks[::3], [lens_rows[i]["label"].replace(" mlp", "") for i in ticks[::3]], rotation=60, fontsize=7)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_ylabel("logit(' an') − logit(' a')")
    ax.set_title("Logit lens: residual stream after each sublayer")
    save(fig, "logit_lens")

    pieces = results["prompts"]["tokens"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), sharey=True)
    for ax, (kind, grid) in zip(axes, results["layer_patching"]["scores"].items()):
        image = ax.imshow(np.array(grid), aspect="auto", cmap="RdBu", vmin=-1, vmax=1, origin="lower")
        ax.set_title(kind)
        ax.set_xticks(range(len(pieces)), pieces, rotation=90, fontsize=6)
        ax.set_xlabel("position")
    axes[0].set_ylabel("layer")
    fig.colorbar(image, ax=axes, shrink=0.8, label="patching score")
    fig.savefig(folder / "layer_patching.png", dpi=110)
    plt.close(fig)
    made["layer_patching"] = folder / "layer_patching.png"

    sweep = results["neuron_sweep"]
    fig, ax = plt.subplots(figsize=(9, 3))
    ax.bar(range(len(sweep["scores"])), sweep["scores"], width=1.0)
    ax.axhline(sweep["layer_score"], color="red", lw=0.8, ls="--", label=f"whole MLP {sweep['layer']}")
    ax.set_title(f"Neuron patching, MLP {sweep['layer']}: {sweep['an_neuron']} = {sweep['an_neuron_score']:.3f}")
    ax.set_xlabel("neuron")
    ax.set_ylabel("score")
    ax.legend()
    save(fig, "neuron_sweep")

    cong = results["congruence"]["W_U"]
    fig, ax = plt.subplots(figsize=(9, 3))
    edges = np.array(cong["histogram_edges"])
    ax.bar(edges[:-1], cong["histogram"], width=np.diff(edges), align="edge")
    ax.set_yscale("log")
    ax.axvline(cong["answer"], color="red", label="' an'")
    ax.set_title(f"{sweep['an_neuron']} · W_U over the vocabulary")
    ax.legend()
    save(fig, "congruence")

    bins = results["corpus"]["bins"]
    fig, ax = plt.subplots(figsize=(9, 3))
    centres = [(b["lo"] + b["hi"]) / 2 for b in bins]
    ax.bar(centres, [b["top1_share"] for b in bins], width=[b["hi"] - b["lo"] for b in bins])
    for c, b in zip(centres, bins):
        ax.annotate(str(b["count"]), (c, b["top1_share"]), fontsize=6, ha="center", va="bottom")
    ax.set_xlabel(f"{sweep['an_neuron']} activation")
    ax.set_ylabel("share with ' an' top-1")
    ax.set_title(f"Corpus check ({results['corpus']['positions']:,} positions; labels = positions per bin)")
    save(fig, "corpus")

    if "pairs" in results:
        from core.corpus.pairs import CURVE_MIN_COUNT

        fig, ax = plt.subplots(figsize=(9, 3.4))
        for p in results["pairs"]["top_curves"]:
            shown = [b for b in p["curve"] if b["count"] >= CURVE_MIN_COUNT]
            ax.plot(
                [(b["lo"] + b["hi"]) / 2 for b in shown],
                [b["top1_share"] for b in shown],
                marker=".",
                label=f"{p['label']} {p['token']!r} ({p['verdict']})",
            )
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlabel("neuron activation (bin centre)")
        ax.set_ylabel("share with the token top-1")
        ax.set_title(
            f"Top five mutual pairs on {results['pairs']['positions']:,} positions (bins of {CURVE_MIN_COUNT}+)"
        )
        ax.legend(fontsize=7)
        save(fig, "pairs")
    return made


def _md_table(rows: list[dict], columns: list[str]) -> str:
    def cell(v: Any) -> str:
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("\n", "⏎")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _post_prompt_note(results: dict) -> str:
    """Which pair the story is told on, and what the model says on the post's own prompt."""
    prompts, post = results["prompts"], results["post_prompt"]
    said = f"On the post's prompt the top-1 is {post['top'][0]['token']!r} (P(' an') = {post['p_answer']:.3f}, " + (
        f"P(' a') = {post['p_wrong']:.3f})."
    )
    if prompts["is_the_posts_pair"]:
        return f"Pair: the post's (clean {prompts['clean']!r}, corrupted {prompts['corrupted']!r}). {said}"
    return (
        f"{said} The post's story does not hold on this model as it is, so it is told on a pair where the model does "
        f"say ' an': clean {prompts['clean']!r}, corrupted {prompts['corrupted']!r}."
    )


def markdown(results: dict, figure_paths: dict[str, Path]) -> str:
    m, p = results["model"], results["predictions"]
    sweep, neg, cong = results["neuron_sweep"], results["negation"], results["congruence"]
    corpus = results["corpus"]
    parts = [
        f"# We Found An Neuron — reproduced on {m['model']}",
        f"Model: {m['source']}; {m['n_layers']} layers, d_mlp {m['d_mlp']}, vocab {m['d_vocab']}. "
        f"Processing: {m['processing']['name']} ({m['processing']['note']}). BOS: {m['bos']}. "
        "Metric: logit(' an') − logit(' a') at the last position; patching score = (patched − corrupted) / "
        "(clean − corrupted).",
        "## Verdicts",
        _md_table(results["verdicts"], ["quantity", "measured", "expected", "tolerance", "verdict", "source"])
        if results["verdicts"]
        else "No reference numbers for this model.",
        "## 1. Predictions",
        _post_prompt_note(results),
        f"Clean: P(' an') = {p['clean_p_answer']:.3f}, P(' a') = {p['clean_p_wrong']:.3f}. "
        f"Corrupted: P(' a') = {p['corrupted_p_wrong']:.3f}, P(' an') = {p['corrupted_p_answer']:.3f}.",
        _md_table(p["clean_top"], ["rank", "token", "id", "prob", "logit"]),
        "## 2. Logit lens",
        f"Largest jump across block {results['logit_lens']['lens_jump_layer']} "
        f"(+{results['logit_lens']['largest_jump']:.2f}).",
        "![logit lens](figures/logit_lens.png)",
        "## 3. Layer × position patching",
        "MLP layers that stand out (all positions): "
        + ", ".join(f"MLP {r['layer']} ({r['score']:.3f})" for r in results["layer_patching"]["top_mlp_layers"]),
        "![layer patching](figures/layer_patching.png)",
        f"## 4. Neuron sweep of MLP {sweep['layer']}",
        f"The an-neuron: **{sweep['an_neuron']}**, score {sweep['an_neuron_score']:.3f} vs the whole layer "
        f"{sweep['layer_score']:.3f} ({100 * sweep['share_of_layer']:.0f} %).",
        _md_table(sweep["top"][:5], ["label", "score"]),
        "![neuron sweep](figures/neuron_sweep.png)",
        "## 5. Congruence with ' an'",
        _md_table(
            [
                {
                    "matrix": k,
                    "' an'": v["answer"],
                    "' a'": v["wrong"],
                    "rank among neurons": v["rank_among_neurons"],
                    "rank among tokens": v["rank_among_tokens"],
                    "top tokens": ", ".join(repr(t["token"]) for t in v["top_tokens"][:6]),
                }
                for k, v in cong.items()
                if k in congruence.MATRICES
            ],
            ["matrix", "' an'", "' a'", "rank among neurons", "rank among tokens", "top tokens"],
        ),
        "![congruence](figures/congruence.png)",
        "## 6. Corpus check",
        f"{corpus['positions']:,} positions of {corpus['corpus']}: ' an' is the true next token "
        f"{corpus['totals']['target_true_next']} times and the model's top-1 prediction "
        f"{corpus['totals']['target_top1']} times. Correlation of activation with the ' an' logit "
        f"{corpus['correlation']['logit']:.3f}, with its probability {corpus['correlation']['prob']:.3f}.",
        _md_table(corpus["bins"], ["lo", "hi", "count", "top1_share", "true_next_share"]),
        "![corpus](figures/corpus.png)",
        "## 7. Searches (W_U)",
        "Stand-out (token's gap between its top-2 neurons):",
        _md_table(results["searches"]["standout"], ["rank", "label", "token", "congruence", "gap_neuron"]),
        "Mutual-exclusive (neuron's top-2 token gap × token's top-2 neuron gap):",
        _md_table(
            results["searches"]["mutual"], ["rank", "label", "token", "congruence", "gap_token", "gap_neuron", "score"]
        ),
        f"## 8. Negating {sweep['an_neuron']}",
        f"P(' an') {neg['p_answer_before']:.3f} → {neg['p_answer_after']:.3f}; P(' a') {neg['p_wrong_before']:.3f} → "
        f"{neg['p_wrong_after']:.3f}; top-1 after: {neg['top1_after']!r}.",
        *_drivers_markdown(results),
        *_pairs_markdown(results),
    ]
    return "\n\n".join(parts) + "\n"


def _pairs_markdown(results: dict) -> list[str]:
    pr = results.get("pairs")
    if not pr:
        return []
    s = pr["summary"]
    return [
        "## 10. Every mutual pair on real text",
        f'The post: *"{pr["expectation"]}"* The top {s["pairs"]} mutual pairs (W_U) on {pr["positions"]:,} '
        f"positions of {pr['corpus']}: {s['correlates']} correlate, {s['weak']} weak, {s['none']} none, "
        f"{s['too rare to tell']} too rare to tell. Verdict rule: {pr['thresholds']['rule']}. "
        f"The expectation {pr['answer']}.",
        "![pairs](figures/pairs.png)",
        _md_table(
            pr["pairs"][:20],
            ["rank", "label", "token", "token_top1", "token_next", "spearman", "auc", "verdict", "source"],
        ),
    ]


def _drivers_markdown(results: dict) -> list[str]:
    d = results.get("drivers")
    if not d:
        return []
    src = d["strongest_source"]
    return [
        f"## 9. What drives {d['neuron']}",
        f"At the last position (position {d['position']}) the neuron's activation is {d['clean_activation']:+.3f} "
        f"on the clean prompt and {d['corrupted_activation']:+.3f} on the corrupted one. Path patching of every "
        "upstream component into the neuron alone (norm recomputed; neuron_restored = share of the activation "
        "gap, logit_diff_restored = the logit-diff score with the neuron so patched):",
        _md_table(d["top_paths"][:6], ["label", "neuron_restored", "logit_diff_restored"]),
        f"The top head, **{d['top_head']}**, reads {src['token']!r} (position {src['position']}, attention "
        f"{src['attention']:.2f}) and moves {src['first_order']:+.2f} (first-order) into the neuron: "
        f"{d['verdict']['verdict']}.",
        _md_table(d["top_head_reads_from"], ["source", "token", "attention", "first_order"]),
    ]


def html_report(markdown_text: str, figure_paths: dict[str, Path]) -> str:
    """A dependency-free HTML rendering of the markdown, with the PNGs inlined as data URIs."""
    body = []
    for block in markdown_text.split("\n\n"):
        lines = block.strip().split("\n")
        if lines[0].startswith("|"):
            rows = [line.strip("|").split(" | ") for line in lines if not line.startswith("|---")]
            head, *rest = rows
            body.append(
                "<table><tr>"
                + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head)
                + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>" for r in rest)
                + "</table>"
            )
        elif lines[0].startswith("!["):
            name = lines[0].split("figures/")[1].rstrip(")").removesuffix(".png")
            data = base64.b64encode(figure_paths[name].read_bytes()).decode()
            body.append(f'<img alt="{name}" src="data:image/png;base64,{data}">')
        elif lines[0].startswith("#"):
            level = len(lines[0]) - len(lines[0].lstrip("#"))
            body.append(f"<h{level}>{html.escape(lines[0].lstrip('# '))}</h{level}>")
        else:
            text = html.escape(" ".join(lines))
            body.append("<p>" + text.replace("**", "") + "</p>")
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:13px;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 6px}"
        "img{max-width:100%}"
    )
    return f"<!doctype html><meta charset='utf-8'><title>Reproduction report</title><style>{style}</style>" + "".join(
        body
    )


def write(results: dict, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    figure_paths = figures(results, out_dir / "figures")
    text = markdown(results, figure_paths)
    (out_dir / "report.md").write_text(text, encoding="utf-8")
    (out_dir / "report.html").write_text(html_report(text, figure_paths), encoding="utf-8")
    (out_dir / "results.json").write_text(
        json.dumps(to_jsonable(results), ensure_ascii=False, indent=1), encoding="utf-8"
    )
    return {
        "report.md": out_dir / "report.md",
        "report.html": out_dir / "report.html",
        "results.json": out_dir / "results.json",
        **{f"figures/{k}.png": v for k, v in figure_paths.items()},
    }
