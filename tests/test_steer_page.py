"""The steer and dose commands and the Steer page on the embedded model: the post's negation experiment end to end
(" an" → " a"), the page's JSON equal to the CLI's, and bad input answered in one line."""

import json

import pytest

from core.cli import main
from core.story import CLEAN
from tests.test_app import assert_clean, downloaded_json, errors, open_page, texts


def cli(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_negating_the_an_neuron_writes_a_instead_of_an(capsys):
    out = cli(capsys, "steer", "--intervene", "L25.N1527:negate", "--max-new-tokens", "6")
    assert out["interventions"][0] == {
        "spec": "L25.N1527:negate",
        "layer": 25,
        "neuron": 1527,
        "op": "negate",
        "value": None,
        "positions": "all",
    }
    base, steered = out["baseline"], out["steered"]
    assert len(base["token_ids"]) == len(base["logprobs"]) == 6
    assert base["text"].startswith(" an apple") and steered["text"].startswith(" a ")
    # the first token's probabilities: P(" an") = 0.607 unsteered (GUIDE §2); negated, " a" wins clearly
    assert base["logprobs"][0] == pytest.approx(-0.4993, abs=2e-3)
    assert out["first_change"] == 0 and steered["logprobs"][0] > -0.2


def test_the_dose_curve_passes_through_the_unclamped_run(capsys):
    out = cli(capsys, "dose", "--neuron", "L25.N1527", "--from", "-10", "--to", "10", "--points", "5")
    natural = out["natural"]
    assert natural["activation"] == pytest.approx(11.2125, abs=1e-3)
    assert natural["p_answer"] == pytest.approx(0.607, abs=1e-3)
    curve = out["curve"]
    assert [round(r["value"], 3) for r in curve] == [-10.0, -5.0, 0.0, 5.0, 10.0, 11.213]
    p_answer = [r["p_answer"] for r in curve]
    assert p_answer == sorted(p_answer) and p_answer[0] < 0.02  # more activation, more " an"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["steer", "--intervene", "L99.N1:negate"], "layer 99 is out of range"),
        (["steer", "--intervene", "L25.N1527:frob=1"], "unknown"),
        (["steer", "--intervene", "L25.N1527:set=inf"], "finite"),
        (["steer", "--intervene", "L25.N1527:negate", "--max-new-tokens", "0"], "out of range"),
        (["steer", "--intervene", "L25.N1527:negate", "--temperature", "1", "--top-p", "0"], "top-p"),
        (["steer", "--intervene", "L25.N1527:negate", "--positions", "40"], "outside the prompt"),
        (["dose", "--neuron", "L25.N1527", "--from", "1"], "both --from and --to"),
        (["dose", "--neuron", "L25.N1527", "--answer", " apple tree"], "tokens"),
    ],
)
def test_bad_steering_input_is_one_line_and_exit_2(capsys, argv, message):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_the_steer_page_shows_the_negation_and_downloads_the_clis_json(capsys, monkeypatch):
    at = open_page("8_Steer.py", new="6")
    assert_clean(at)
    page = texts(at)
    assert "First change at new token 0" in "\n".join(s.value for s in at.success)
    assert "Dose–response" in page
    # Both strips mark the first change (new token 0 here) alone; the five later tokens are shaded as diverged,
    # not highlighted one by one, and each hover still names the other run's token with its probability.
    strips = [m.value for m in at.markdown if "steer-strip" in m.value]
    assert len(strips) == 2
    for html in strips:
        assert html.count("diverged from here") == 1
        assert html.count("rgba(255,196,0,0.6)") == 1 and html.count("rgba(255,196,0,0.14)") == 5
        assert html.count("the other run wrote") == 6
    payload = downloaded_json(at, monkeypatch)
    expected = cli(capsys, "steer", "--prompt", CLEAN, "--intervene", "L25.N1527:negate", "--max-new-tokens", "6")
    assert payload == expected


def test_the_steer_page_answers_bad_url_values_with_a_message():
    at = open_page("8_Steer.py", op="frob", new="100000", neuron="L99.N1")
    assert not at.exception
    shown = "\n".join(errors(at))
    assert "op 'frob' is unknown" in shown and "new tokens 100000 is out of range" in shown
    assert "layer 99 is out of range" in shown
