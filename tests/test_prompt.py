"""One prompt in, the neurons that matter out (issue #25 items 3-5): the `top-neurons` CLI's JSON and its refusals,
the Prompt page (its download equals the CLI's JSON), the Home story computed for each embedded model, and
`examples` reading the dashboards that exist."""

import contextlib
import io
import json

import pytest

from core.story import CLEAN
from tests.test_app import assert_clean, downloaded_json, errors, open_page, texts

ARGS = ("top-neurons", "--prompt", CLEAN, "--answer", " an", "--wrong", " a", "--top-k", "10")


def run_cli(*argv: str) -> tuple[int, str, str]:
    from core.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def cli_payload() -> dict:
    code, out, err = run_cli(*ARGS, "--json")
    assert code == 0, err
    return json.loads(out)


def test_cli_json_shape_and_the_an_neuron(cli_payload):
    p = cli_payload
    assert p["position"] == 18 and p["tokens"][18] == " picked" and p["ablation"] == "zero"
    assert p["metric"]["value"] == pytest.approx(0.7138, abs=1e-3) and p["metric"]["target_chosen"] == "given"
    assert [t["token"] for t in p["metric"]["target"]] == [" an", " a"]
    neurons = p["neurons"]
    assert len(neurons) == 10
    assert {"layer", "neuron", "activation", "direct_effect", "total_effect", "kind", "ratio"} <= set(neurons[0])
    assert "direct" not in neurons[0] and "total" not in neurons[0]  # named once, the way
    magnitudes = [abs(n["direct_effect"]) for n in neurons]
    assert magnitudes == sorted(magnitudes, reverse=True)
    an = neurons[0]
    assert (an["layer"], an["neuron"]) == (25, 1527)
    # later layers take back half of what the an-neuron writes: a direct-only ranking would miss it
    assert an["direct_effect"] == pytest.approx(4.2108, abs=2e-3) and an["total_effect"] == pytest.approx(
        2.2177, abs=2e-3
    )
    # the direct effects of every neuron, head, the embedding and biases sum to the metric (no soft-cap here)
    parts = p["components"]
    assert sum(parts.values()) == pytest.approx(p["metric"]["value"], abs=2e-3)
    heads = p["heads"]
    assert sum(h["total_effect"] is not None for h in heads) == 10 and heads[-1]["total_effect"] is None


def test_cli_without_a_target_uses_the_top1_at_the_position(gpt2_folder):
    code, out, err = run_cli("top-neurons", "--model", str(gpt2_folder), "--prompt", CLEAN, "--position", "-3",
                             "--top-k", "3", "--json")  # fmt: skip
    assert code == 0, err
    payload = json.loads(out)
    assert payload["metric"]["target_chosen"] == "top-1" and len(payload["metric"]["target"]) == 1
    assert payload["position"] == len(payload["tokens"]) - 3 and payload["positions_run"] == payload["position"] + 1
    assert len(payload["neurons"]) == 3


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--prompt", ""), "prompt is empty"),
        (("--prompt", "an apple", "--position", "40"), "position 40 is outside the prompt"),
        (("--prompt", "an apple", "--answer", " antelope"), "' antelope' is 2 tokens"),
        (("--prompt", "an apple", "--top-k", "0"), "top-k 0 is out of range"),
        (("--prompt", "an apple", "--top-k", "100000"), "top-k 100000 is out of range"),
        (("--prompt", "an apple", "--ablation", "mean"), "dashboards build --model"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(gpt2_folder, tmp_path, monkeypatch, extra, message):
    monkeypatch.setenv("TNE_CACHE_DIR", str(tmp_path))  # no dashboards built here
    code, out, err = run_cli("top-neurons", "--model", str(gpt2_folder), *extra)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_prompt_page_shows_effects_and_its_json_equals_the_cli(cli_payload, monkeypatch):
    at = open_page("0_Prompt.py", prompt=CLEAN, answer=" an", wrong=" a", top_k="10")
    assert_clean(at)
    charts = {c.key for c in at.get("plotly_chart")}
    assert {"prompt:neurons_chart", "prompt:heads_chart"} <= charts
    table = next(d.value for d in at.dataframe if "direct" in d.value.columns and "neuron" in d.value.columns)
    assert table.iloc[0]["label"] == "L25.N1527" and table.iloc[0]["writes"] == "␣an"
    chips = next(m.value for m in at.markdown if "token-chips" in m.value)
    assert "␣apple<sub" in chips
    assert any("dashboards build --model smollm2-135m" in i.value for i in at.info)  # none built: how to build
    assert downloaded_json(at, monkeypatch) == cli_payload
    # a position from the URL; a position outside the prompt is one error, no exception
    at = open_page("0_Prompt.py", prompt=CLEAN, position="6", top_k="5")
    assert_clean(at)
    assert next(m.value for m in at.metric if m.label == "position").startswith("6: ")
    at = open_page("0_Prompt.py", prompt="an apple", position="30")
    assert not at.exception and any("outside the prompt" in e for e in errors(at)), errors(at)


def test_hosted_pages_offer_dashboards_within_the_hosted_budget(monkeypatch):
    """No dashboards built, hosted (scan budget capped at 50,000 tokens): the Prompt and Neuron pages say how to
    build them with a budget the server accepts, instead of an error box for the 100,000-token default."""
    monkeypatch.setenv("TNE_HOSTED", "1")
    at = open_page("0_Prompt.py", prompt="an apple", top_k="5")
    assert_clean(at)
    assert any("dashboards build --model smollm2-135m" in i.value for i in at.info)
    at = open_page("3_Neuron.py", layer="25", neuron="1527")
    assert_clean(at)
    assert any("(50,000 tokens)" in c.value for c in at.caption), [c.value for c in at.caption]


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_home_story_is_computed_for_the_picked_model(name):
    from core import reproduce
    from core.engine.model import installed
    from ui.model_picker import _load

    if not installed(name):
        pytest.skip(f"{name} is not installed")
    at = open_page(None, **({"model": name} if name != "smollm2-135m" else {}))
    assert_clean(at)
    # the engine's numbers for this model, computed here on the model the app holds (no second load)
    told = reproduce.home_story(_load(name, "auto", "tl-default"))
    body = texts(at)
    assert "Prompt: the neurons that matter" in str([link.proto.label for link in at.get("page_link")])
    assert told["an_neuron"] in body and f"restores {told['an_neuron_score']:.2f}" in body
    assert f"MLP {told['standout_layer']} stands out, restoring {told['standout_score']:.2f}" in body
    assert f"a {told['standout_depth']} layer ({told['standout_layer']} of {told['n_layers']})" in body
    # step 5, the post's negation, generated on this model: its " an" turns into " a"
    assert "negate, the first new token goes from ␣an" in body and "to ␣a (p =" in body
    if name == "gemma3-270m":  # its own pair, its own numbers; not SmolLM2's
        assert told["an_neuron"] == "L13.N1278" and told["standout_depth"] == "early"
        assert "L25.N1527" not in body and "My sister is also" in json.dumps(told)
        assert "so its story uses another pair" in body
    else:
        assert told["an_neuron"] == "L25.N1527" and told["standout_depth"] == "late"


def test_examples_reads_the_largest_dashboards_built(tiny, tmp_path, monkeypatch):
    """`dashboards build --max-tokens 200` then `examples` without --max-tokens reads those (not the default
    100,000-token budget); with two builds, the larger."""
    from core.cli import corpus as corpus_cli
    from core.corpus import dashboards as dash
    from tests.test_dashboards import TEXTS

    monkeypatch.setenv("TNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(corpus_cli, "load", lambda args: tiny)
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t, "title": f"t{i}"}) + "\n" for i, t in enumerate(TEXTS)))
    argv = ("examples", "--neuron", "L1.N3", "--corpus", str(path), "--json")
    code, _, err = run_cli(*argv)
    assert code == 2 and "no dashboards built" in err and "dashboards build" in err and err.count("\n") == 1
    assert dash.find_built(tiny, str(path)) is None
    dash.build(tiny, dash.DashboardSpec(str(path), 200, top_k=2, ctx=16))
    dash.build(tiny, dash.DashboardSpec(str(path), 300, top_k=2, ctx=16))
    assert dash.find_built(tiny, str(path)).max_tokens == 300
    code, out, err = run_cli(*argv)
    assert code == 0, err
    view = json.loads(out)
    assert view["neuron"] == "L1.N3" and len(view["examples"]) == 2
    code, _, err = run_cli(*argv[:-1], "--max-tokens", "5000", "--json")  # told otherwise: that budget
    assert code == 2 and "with 5,000 tokens" in err
