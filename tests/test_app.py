"""The Streamlit app, page by page, through Streamlit's AppTest (no browser): every page renders with its defaults,
runs its main action on the embedded model, shows the post's numbers, and answers bad input — typed or in the URL —
with an error element, never an exception."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.story import CLEAN as POST_CLEAN
from core.story import CORRUPTED as POST_CORRUPTED

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PAIR = {"clean": POST_CLEAN, "corrupted": POST_CORRUPTED, "answer": " an", "wrong": " a"}


def open_page(page: str | None, **query: str) -> AppTest:
    """The app opened on `page` (a file under pages/, None = Home) with a URL query, run once."""
    at = AppTest.from_file(APP, default_timeout=120)
    if page is not None:
        at.run()  # Home first, as a browser session would load the entry script
        at.switch_page(f"pages/{page}")
    at.query_params.clear()
    at.query_params.update(query)
    return at.run()


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]
    assert not errors(at), errors(at)


def downloaded_json(at: AppTest, monkeypatch, label: str = "⬇ JSON") -> dict:
    """Rerun the page and read back its JSON download (the first whose label starts with `label`) from AppTest's
    in-memory media store."""
    from streamlit.testing.v1 import app_test

    stores = []

    class Recording(app_test.MemoryMediaFileStorage):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            stores.append(self)

    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", Recording)
    at.run()
    button = next(b for b in at.get("download_button") if b.proto.label.startswith(label))
    return json.loads(stores[-1].get_file(button.proto.url.rsplit("/", 1)[1]).content)


def cli_json(capsys, *argv: str) -> dict:
    from core.cli import main

    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def texts(at: AppTest) -> str:
    return "\n".join(str(e.value) for kind in (at.title, at.markdown, at.caption, at.subheader) for e in kind)


# ---------------------------------------------------------------- click events (AppTest cannot click a chart)


def test_clicked_points_and_cells_are_read_in_every_shape_streamlit_sends():
    from ui.common import selection_of
    from ui.navigation import neuron_from_point

    # a numpy customdata row comes back from the browser as {"0": …, "1": …}; a list one as a list
    assert neuron_from_point({"selection": {"points": [{"customdata": {"0": 25, "1": 1527}}]}}) == (25, 1527)
    assert neuron_from_point({"selection": {"points": [{"customdata": [3, 7, 0.5]}]}}) == (3, 7)
    assert neuron_from_point({"selection": {"points": []}}) is None and neuron_from_point(None) is None
    assert selection_of({"selection": {"rows": [], "cells": [[4, "token"]]}}) == {"row": 4, "column": "token"}
    assert selection_of({"selection": {"rows": [2], "cells": []}}) == {"row": 2, "column": None}
    assert selection_of({"selection": {"rows": [], "cells": []}}) is None


# ---------------------------------------------------------------- Home and the sidebar


def test_home_tells_the_story_with_links():
    at = open_page(None)
    assert_clean(at)
    body = texts(at)
    for step in (
        "1. The model says",
        "2. Find the layer",
        "3. Find the neuron",
        "4. What does it write?",
        "5. Change it",
        "6. More token neurons",
    ):
        assert step in body
    assert at.sidebar.selectbox[0].value == "smollm2-135m"
    assert "layers **30**" in body and "d_mlp **1536**" in body  # the model facts in the sidebar


def test_unknown_model_in_url_falls_back_to_embedded():
    at = open_page(None, model="no-such-model")
    assert not at.exception
    assert any("unknown model 'no-such-model'" in e for e in errors(at)), errors(at)
    assert at.sidebar.selectbox[0].value == "smollm2-135m"
    assert "model" not in at.query_params


@pytest.mark.parametrize(
    "widget, value, message",
    [
        (0, "gpt2", "not in the local Hugging Face cache"),  # offline: says how to get the weights
        (1, "cuda", "this machine has no CUDA GPU"),
    ],
)
def test_sidebar_model_errors_fall_back_to_the_embedded_model(widget, value, message):
    if value == "cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    at = open_page(None)
    at.sidebar.selectbox[widget].set_value(value).run()
    assert not at.exception
    assert any(message in e for e in errors(at)), errors(at)
    assert at.sidebar.selectbox[0].value == "smollm2-135m" and at.sidebar.selectbox[1].value == "auto"


def test_missing_model_folder_in_url_is_reported():
    at = open_page("1_Logit_Lens.py", model="/no/such/folder")
    assert not at.exception
    assert any("'/no/such/folder' does not exist" in e for e in errors(at)), errors(at)
    assert at.sidebar.selectbox[0].value == "smollm2-135m"
    assert metrics(at)["P(␣an)"] == "0.607"  # the page carries on with the embedded model


# ---------------------------------------------------------------- Logit lens


def test_logit_lens_defaults_reproduce_the_post():
    at = open_page("1_Logit_Lens.py")
    assert_clean(at)
    got = metrics(at)
    assert got["P(␣an)"] == "0.607" and got["P(␣a)"] == "0.297"
    top = at.dataframe[0].value
    assert top.iloc[0]["token"] == "␣an"  # shown with its space; the CSV keeps " an"
    chips = next(m.value for m in at.markdown if "token-chips" in m.value)
    assert "␣apple<sub" in chips and 'title="position 15, id 11977"' in chips  # tokenization: token + id
    assert any(b.label.startswith("⬇ JSON") for b in at.get("download_button"))


def test_logit_lens_bad_input_gives_errors_not_exceptions():
    at = open_page("1_Logit_Lens.py", prompt="I picked", answer=" antelope")
    assert not at.exception
    assert any("' antelope' is 2 tokens" in e for e in errors(at)), errors(at)
    at.text_area(key="lens:prompt").set_value("").run()
    assert not at.exception
    assert any("prompt is empty" in e for e in errors(at)), errors(at)


def test_logit_lens_download_equals_the_cli_json(monkeypatch, capsys):
    page = downloaded_json(open_page("1_Logit_Lens.py"), monkeypatch)
    assert page == cli_json(capsys, "lens")


def chart_traces(at: AppTest) -> dict[str, list[dict]]:
    """Each Plotly chart's traces by key, with their x/y arrays decoded (Plotly sends numpy arrays as base64)."""
    import base64

    import numpy as np

    def decoded(value):
        if isinstance(value, dict) and "bdata" in value:
            return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        return value

    return {
        c.key: [{k: decoded(v) for k, v in trace.items()} for trace in json.loads(c.proto.spec)["data"]]
        for c in at.get("plotly_chart")
    }


def test_logit_lens_charts_carry_the_computed_numbers_and_follow_the_inputs():
    """The page's figures are built once per input and shared by every session (ui.analyses.lens_figures): the
    lens lines must hold this prompt's numbers, and another answer must draw another figure, not the cached one."""
    at = open_page("1_Logit_Lens.py")
    charts = chart_traces(at)
    assert set(charts) == {"lens:lines", "lens:dla", "lens:heads"}
    diff, p_answer, p_wrong = charts["lens:lines"]
    final = float(metrics(at)["logit diff"])
    assert abs(diff["y"][-1] - final) < 5e-4 and abs(charts["lens:dla"][0]["y"].sum() - final) < 1e-2
    assert (p_answer["name"], round(p_answer["y"][-1], 3), round(p_wrong["y"][-1], 3)) == ("P(␣an)", 0.607, 0.297)
    at.text_input(key="lens:answer").set_value(" the").run()
    assert_clean(at)
    lines = chart_traces(at)["lens:lines"]
    assert lines[1]["name"] == "P(␣the)" and abs(lines[0]["y"][-1] - diff["y"][-1]) > 0.1
    assert abs(lines[0]["y"][-1] - float(metrics(at)["logit diff"])) < 5e-4


def test_inputs_are_mirrored_in_the_url():
    at = open_page("1_Logit_Lens.py")
    at.text_input(key="lens:answer").set_value(" the").run()
    assert at.query_params.get("answer") == " the"
    assert "prompt" not in at.query_params  # defaults stay out of the URL


# ---------------------------------------------------------------- Patching


@pytest.fixture(scope="module")
def patched() -> AppTest:
    at = open_page("2_Patching.py", **PAIR)
    assert not at.exception
    at.button(key="patching:run").click().run()
    return at


def test_patching_reproduces_the_post(patched):
    assert_clean(patched)
    got = metrics(patched)
    assert got["clean P(␣an)"] == "0.607" and got["corrupted P(␣a)"] == "0.889"
    assert got["top neuron"] == "L25.N1527"
    assert got["its score"] == "0.613"
    assert got["whole MLP 25 (all neurons at once)"] == "0.652"
    assert "Standout late MLP layer: 25" in texts(patched)
    # all layers at once: attribution ranks L25.N1527 first, exact patching confirms 0.613
    assert got["top neuron anywhere"] == "L25.N1527"
    assert float(got["Spearman ρ, attribution vs exact (top 50)"]) > 0.9
    assert any("poor on MLP 0" in c.value for c in patched.caption)


def test_patching_download_equals_the_cli_json(patched, monkeypatch, capsys):
    page = downloaded_json(patched, monkeypatch)
    layers = cli_json(capsys, "patch", "--level", "layers")  # both runs, conventions, layers × positions
    assert {k: page.get(k) for k in layers} == layers
    # the page sweeps MLP 25 in one batch with the other candidates' layers, screened in bfloat16 where that pays:
    # its fp32 rows equal the CLI's all-fp32 sweep up to float rounding, its screened rows within the screen's error
    sweep = cli_json(capsys, "patch", "--level", "neurons", "--layer", "25")
    assert page["layer"] == sweep["layer"] and page["layer_score"] == pytest.approx(sweep["layer_score"], abs=1e-5)
    by_neuron = {r["neuron"]: r["score"] for r in sweep["neurons"]}
    exact = {r["neuron"]: r["score"] for r in page["neurons"] if r["exact"]}
    assert len(exact) >= 32 and exact == pytest.approx({n: by_neuron[n] for n in exact}, abs=1e-5)
    assert {r["neuron"]: r["score"] for r in page["neurons"]} == pytest.approx(by_neuron, abs=0.05)
    winners = {max(by_neuron, key=by_neuron.get), max(by_neuron, key=lambda n: abs(by_neuron[n]))}
    assert winners <= set(exact)  # the top by score and by |score| are fp32
    assert all(r["exact"] for r in sweep["neurons"]) and sweep["precision"] == "fp32, every neuron"


def test_patching_headline_is_the_best_exact_score_of_its_table(patched):
    table = next(d.value for d in patched.dataframe if {"exact", "attribution", "source"} <= set(d.value.columns))
    assert metrics(patched)["top neuron anywhere"] == table.label.iloc[int(table.exact.to_numpy().argmax())]
    assert list(table.exact) == sorted(table.exact, reverse=True)
    # the sentence about the sweep's top neuron is computed from its numbers (patched into the corrupted run)
    assert "L25.N1527 patched into the corrupted run: logit diff -3.476 → **-0.909**" in texts(patched)


def test_patching_link_with_cached_results_reopens_without_run(patched):
    again = open_page("2_Patching.py", **PAIR)  # a new session opening the same link
    assert_clean(again)
    assert metrics(again)["top neuron anywhere"] == "L25.N1527"  # shown without pressing Run
    other = open_page("2_Patching.py", **{**PAIR, "corrupted": POST_CORRUPTED.replace("lemon", "peach")})
    assert not other.exception and not metrics(other)
    assert any("Not computed yet" in i.value and "Run patching" in i.value for i in other.info)
    assert other.button(key="patching:run")


def test_patching_negate_states_the_absolute_change_and_no_canned_caption():
    at = open_page("2_Patching.py", **PAIR, ablation="negate")
    at.button(key="patching:run").click().run()
    assert_clean(at)
    got = metrics(at)
    assert got["top neuron"] == "L25.N1527" and float(got["its score"]) == pytest.approx(1.32, abs=0.02)
    lines = texts(at).splitlines()
    standout = next(t for t in lines if "Standout late MLP layer" in t)
    assert "extended embedding" not in standout  # MLP 0 scores ≈ 0 when negated: the sentence must not claim it
    effect = next(t for t in lines if t.startswith("L25.N1527 negate-ablated in the clean run"))
    assert "logit diff 0.714 → **-4.8" in effect and "changes from `␣an` to `␣a`" in effect
    # an ablation patches every position at every layer: the grid (≈ 10 s here) waits for a press, shown last
    precision = next(c.value for c in at.caption if c.value.startswith("**Precision:**"))
    assert "bfloat16" in precision or "fp32, every neuron" in precision
    assert "patching:positions" not in {c.key for c in at.get("plotly_chart")}
    assert "Compute layers × positions" in at.button(key="patching:grid").label
    at.button(key="patching:grid").click().run()
    assert_clean(at)
    assert "patching:positions" in {c.key for c in at.get("plotly_chart")}
    again = open_page("2_Patching.py", **PAIR, ablation="negate")  # a reopened link: the cached grid shows at once
    assert_clean(again)
    assert "patching:positions" in {c.key for c in again.get("plotly_chart")}
    assert not [b for b in again.button if b.key == "patching:grid"]


def test_patching_row_click_opens_the_neuron_page(patched):
    patched.session_state["patching:top_neurons"] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    patched.run()
    assert not patched.exception
    assert patched.title[0].value == "Neuron L25.N1527"
    assert patched.query_params["layer"] == "25" and patched.query_params["neuron"] == "1527"


def test_patching_mismatched_lengths_is_an_error():
    at = open_page("2_Patching.py", corrupted="I climbed up the lemon tree")
    at.button(key="patching:run").click().run()
    assert not at.exception
    assert any("same number of tokens" in e for e in errors(at)), errors(at)


@pytest.mark.parametrize(
    "query, message",
    [
        ({"layer": "abc"}, "layer 'abc' is not a whole number; valid: 0..29"),
        ({"layer": "99"}, "layer 99 is out of range; valid: 0..29"),
        ({"ablation": "explode"}, "ablation 'explode' is unknown; valid: clean, zero, mean, negate"),
    ],
)
def test_patching_bad_url_params_are_reported(query, message):
    at = open_page("2_Patching.py", **query)
    assert not at.exception
    assert any(message in e for e in errors(at)), errors(at)
    assert at.button(key="patching:run")  # the page still works, on the defaults


# ---------------------------------------------------------------- Neuron and Token


def test_neuron_page_lists_an_as_top_token():
    at = open_page("3_Neuron.py", layer="25", neuron="1527")
    assert_clean(at)
    assert at.title[0].value == "Neuron L25.N1527"
    got = metrics(at)
    assert got["top token"] == "␣an" and got["rank among all 46,080 neurons for ␣an"] == "#1"
    assert at.dataframe[0].value.iloc[0]["token"] == "␣an"
    assert any("activation-text" in m.value for m in at.markdown)  # activation on the prompt, coloured


def test_neuron_token_click_opens_the_token_page():
    at = open_page("3_Neuron.py", layer="25", neuron="1527")
    at.session_state["neuron:top"] = {"selection": {"rows": [], "columns": [], "cells": [[0, "token"]]}}
    at.run()
    assert not at.exception
    assert at.title[0].value == "Token"
    assert metrics(at)["most congruent neuron"] == "L25.N1527"


@pytest.mark.parametrize(
    "query, message",
    [
        ({"layer": "abc", "neuron": "1527"}, "layer 'abc' is not a whole number"),
        ({"layer": "25", "neuron": "99999"}, "neuron 99999 is out of range; valid: 0..1535"),
        ({"layer": "25", "neuron": "1527", "matrix": "W_Q"}, "matrix 'W_Q' is unknown; valid: W_U, W_E"),
    ],
)
def test_neuron_bad_url_params_are_reported(query, message):
    at = open_page("3_Neuron.py", **query)
    assert not at.exception
    assert any(message in e for e in errors(at)), errors(at)


def test_token_page_finds_the_an_neuron():
    at = open_page("4_Token.py", token=" an")
    assert_clean(at)
    assert metrics(at)["most congruent neuron"] == "L25.N1527"
    assert at.dataframe[0].value.iloc[0]["label"] == "L25.N1527"


def test_token_page_refuses_a_multi_token_target():
    at = open_page("4_Token.py", token=" antelope")
    assert not at.exception
    assert any("a target must be exactly one token" in e for e in errors(at)), errors(at)


# ---------------------------------------------------------------- Search and Corpus


def test_search_runs_and_clicks_through():
    at = open_page("5_Search.py", kind="mutual")
    assert not at.exception and at.button(key="search:run")
    at.button(key="search:run").click().run()
    assert_clean(at)
    table = at.dataframe[0].value
    assert len(table) == 100 and list(table["rank"][:3]) == [1, 2, 3]
    at.session_state["search:table"] = {"selection": {"rows": [], "columns": [], "cells": [[0, "label"]]}}
    at.run()
    assert not at.exception
    assert at.title[0].value == f"Neuron {table.iloc[0]['label']}"


def test_search_link_reopens_from_the_disk_cache():
    test_search_runs_and_clicks_through()  # makes sure the W_U tables are on disk (a no-op read when they are)
    at = open_page("5_Search.py", kind="standout")  # a new session opening a link: no Run pressed
    assert_clean(at)
    assert len(at.dataframe[0].value) == 100


def test_search_bad_kind_is_reported():
    at = open_page("5_Search.py", kind="best")
    assert not at.exception
    assert any("kind 'best' is unknown; valid: standout, mutual" in e for e in errors(at)), errors(at)


def test_corpus_scan_shows_the_post_chart():
    at = open_page("6_Corpus.py", neurons="L25.N1527", target=" an", budget="1000")
    assert not at.exception
    at.button(key="corpus:run").click().run()
    assert_clean(at)
    assert metrics(at)["positions scanned"] == "1,000"
    assert at.subheader[0].value == "L25.N1527"
    bins = at.dataframe[0].value
    assert {"lo", "hi", "count", "top1_share"} <= set(bins.columns) and bins["count"].sum() == 1000


def test_corpus_bad_params_are_reported():
    at = open_page("6_Corpus.py", neurons="L99.N1", budget="lots")
    assert not at.exception
    found = errors(at)
    assert any("layer 99 is out of range" in e for e in found), found
    assert any("token budget 'lots' is not a whole number" in e for e in found), found


# ---------------------------------------------------------------- another architecture: a local GPT-2 folder


def test_pages_run_on_a_local_gpt2_folder(gpt2_folder):
    """A tiny random-weight GPT-2 saved as a folder (conftest): picked by path in the URL, BOS prepended."""
    at = open_page("1_Logit_Lens.py", model=str(gpt2_folder))
    assert_clean(at)
    chips = next(m.value for m in at.markdown if "token-chips" in m.value)
    assert "&lt;|endoftext|&gt;<sub" in chips  # GPT-2's BOS, shown as the first token
    assert "prepended" in texts(at)
    at = open_page("2_Patching.py", model=str(gpt2_folder), **PAIR)
    at.button(key="patching:run").click().run()
    assert_clean(at)
    assert metrics(at)["top neuron"].startswith("L")
    at = open_page("3_Neuron.py", model=str(gpt2_folder), layer="2", neuron="5")
    assert_clean(at)
    assert at.title[0].value == "Neuron L2.N5"


# ---------------------------------------------------------------- hosted mode


def test_hosted_mode_offers_only_the_allow_list(monkeypatch):
    monkeypatch.setenv("TNE_HOSTED", "1")
    monkeypatch.setenv("TNE_MODELS", "smollm2-135m")
    at = open_page("1_Logit_Lens.py", model="/etc")
    assert not at.exception
    assert at.sidebar.selectbox[0].options == ["smollm2-135m"]
    assert any("serves only smollm2-135m" in e for e in errors(at)), errors(at)
    assert at.sidebar.selectbox[0].value == "smollm2-135m"


def test_corpus_scan_on_ray_equals_the_local_scan(embedded):
    pytest.importorskip("ray", reason="Ray is an optional extra (requirements-scale.txt)")
    import ray

    from core.corpus import scan

    budget = 613  # a budget no other test uses: the Ray workers compute it (not the disk cache)
    at = open_page("6_Corpus.py", neurons="L25.N1527", target=" an", budget=str(budget))
    at.checkbox(key="corpus:ray").check().run()
    at.button(key="corpus:run").click().run()
    ray.shutdown()
    assert_clean(at)
    assert any("Ran on:** Ray (local)" in c.value for c in at.caption)
    local = scan.scan(embedded, scan.ScanSpec([(25, 1527)], 354, None, budget), use_cache=False).neurons["L25.N1527"]
    got = metrics(at)
    assert got["positions scanned"] == f"{local.totals['positions']:,}"
    assert got["true next token = ␣an"] == f"{local.totals['target_true_next']:,}"
    bins = at.dataframe[0].value
    assert list(bins["count"]) == list(local.bins["count"])


# ---------------------------------------------------------------- What drives a neuron (Neuron page) and heads


@pytest.fixture(scope="module")
def driven() -> AppTest:
    return open_page("3_Neuron.py", layer="25", neuron="1527", corrupted=POST_CORRUPTED)


def test_neuron_page_shows_what_drives_it(driven):
    assert_clean(driven)
    got = metrics(driven)
    assert float(got["activation"]) == pytest.approx(11.21, abs=0.05)
    assert {"gate pre-activation", "up pre-activation", "input norm scale (frozen)"} <= set(got)
    paths = next(d.value for d in driven.dataframe if "neuron_restored" in d.value.columns)
    assert list(paths.label[:2]) == ["mlp23", "L23.H0"]
    assert "scale frozen" in texts(driven)


def test_neuron_page_drivers_download_equals_the_cli_json(driven, monkeypatch, capsys):
    page = downloaded_json(driven, monkeypatch)["drivers"]
    cli = cli_json(capsys, "drivers", "--neuron", "L25.N1527", "--clean", POST_CLEAN, "--corrupted", POST_CORRUPTED)
    cli.pop("model")
    assert page == cli


def test_clicking_a_head_row_shows_its_pattern_and_an_mlp_row_its_neurons(driven):
    frame = next(d.value for d in driven.dataframe if "first_order" in d.value.columns and "label" in d.value.columns)
    head_row = int(frame.index[frame.label == "L23.H0"][0])
    driven.session_state["neuron:drivers"] = {"selection": {"rows": [head_row], "columns": [], "cells": []}}
    driven.run()
    assert_clean(driven)
    assert driven.query_params["head"] == ["L23.H0"] or driven.query_params["head"] == "L23.H0"
    reads = next(d.value for d in driven.dataframe if "attention" in d.value.columns)
    assert reads.sort_values("attention").token.iloc[-1] == "␣apple"  # it reads " apple"
    mlp_row = int(frame.index[frame.label == "mlp23"][0])
    driven.session_state["neuron:drivers"] = {"selection": {"rows": [mlp_row], "columns": [], "cells": []}}
    driven.run()
    upstream = next(d.value for d in driven.dataframe if "activation" in d.value.columns and "label" in d.value.columns)
    assert (upstream.layer == 23).all()
    driven.session_state["neuron:upstream"] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    driven.run()
    assert driven.title[0].value == f"Neuron {upstream.label.iloc[0]}"


def test_logit_lens_head_in_the_url_shows_its_pattern():
    at = open_page("1_Logit_Lens.py", head="L23.H0")
    assert_clean(at)
    assert any("**Head L23.H0**" in m.value for m in at.markdown)


def test_the_served_app_skips_streamlits_full_gc_after_every_run():
    """Streamlit's post-run gc.collect(2) held the GIL ~0.2 s after each page run: a light load cost the server
    0.29 core-s with it, 0.08 without (docs/hosting.md). The option must exist in this Streamlit and be off."""
    import tomllib

    from streamlit import config

    settings = tomllib.loads((Path(__file__).resolve().parents[1] / ".streamlit/config.toml").read_text())
    assert "runner.postScriptGC" in config._config_options_template
    assert settings["runner"]["postScriptGC"] is False
