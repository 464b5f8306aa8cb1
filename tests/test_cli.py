"""The CLI: JSON shapes on the embedded model, one-line errors with exit status 2 on bad input."""

import json

import pytest

from core.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_json(capsys):
    code, out, _ = run(capsys, "predict", "--json", "--top-k", "3")
    data = json.loads(out)
    assert code == 0 and len(data["token_ids"]) == 19
    assert data["top"][0]["token"] == " an" and data["top"][0]["id"] == 354
    assert data["model"]["processing"]["fold_ln"] is True and "BOS" in data["model"]["bos"]


def test_lens_json(capsys):
    code, out, _ = run(capsys, "lens", "--json")
    data = json.loads(out)
    assert code == 0 and len(data["layers"]) == 61 and data["layers"][0]["label"] == "embed"
    assert data["layers"][-1]["logit_diff"] == pytest.approx(data["logit_diff"], abs=1e-4)
    assert sum(c["logit_diff"] for c in data["components"]) == pytest.approx(data["logit_diff"], abs=1e-3)


def test_patch_neurons_json_finds_the_an_neuron(capsys):
    code, out, _ = run(capsys, "patch", "--level", "neurons", "--json", "--top-k", "5")
    data = json.loads(out)
    assert code == 0 and data["layer"] == 25 and "layer_choice" in data
    assert data["neurons"][0] == {"layer": 25, "neuron": 1527, "score": pytest.approx(0.613, abs=0.02), "exact": True}
    assert len(data["neurons"]) == 5 and data["layer_score"] == pytest.approx(0.652, abs=0.02)
    assert data["clean_logit_diff"] > 0 > data["corrupted_logit_diff"]
    assert data["precision"] == "fp32, every neuron" and data["screen_error"] is None
    # --screen: the page's bfloat16 screen; the rows it reports as fp32 equal the all-fp32 sweep
    code, out, _ = run(capsys, "patch", "--level", "neurons", "--json", "--screen")
    screened = json.loads(out)
    assert code == 0 and screened["neurons"][0]["neuron"] == 1527 and screened["neurons"][0]["exact"]
    assert screened["neurons"][0]["score"] == pytest.approx(data["neurons"][0]["score"], abs=1e-5)
    if "bfloat16" in screened["precision"]:  # where bfloat16 is fast (this CI's CPU: yes)
        assert 0 < screened["screen_error"] < 0.05
        assert 32 <= sum(r["exact"] for r in screened["neurons"]) < len(screened["neurons"])


def test_patch_layers_json_shapes(capsys, gpt2_folder):
    code, out, _ = run(capsys, "patch", "--model", str(gpt2_folder), "--json")
    data = json.loads(out)
    assert code == 0
    P = len(data["clean_token_ids"])
    assert data["clean_token_ids"][0] == 50256  # GPT-2: BOS
    assert {k: (len(v), len(v[0])) for k, v in data["scores"].items()} == {
        "resid_pre": (3, P),
        "attn_out": (3, P),
        "mlp_out": (3, P),
    }
    assert set(data["all_positions"]) == {"attn_out", "mlp_out"}


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["patch", "--layer", "30", "--level", "neurons"], "layer 30 is out of range; smollm2-135m has layers 0..29"),
        (["patch", "--layer", "-1", "--level", "neurons"], "layer -1 is out of range"),
        (["patch", "--layer", "x"], "'x' is not a layer number"),
        (["patch", "--corrupted", "I climbed"], "same number of tokens"),
        (
            [
                "patch",
                "--corrupted",
                "I climbed up the pear tree and picked a pear. I climbed up the apple tree and picked",
            ],
            "same tokens",
        ),
        (["lens", "--answer", " antelope"], "a target must be exactly one token"),
        (["lens", "--wrong", ""], "wrong is empty"),
        (["predict", "--prompt", ""], "prompt is empty"),
        (["predict", "--top-k", "0"], "0 must be at least 1"),
        (["predict", "--top-k", "100000"], "top-k 100000 is out of range; use 1..49152"),
        (["predict", "--model", "gpt-5"], "unknown model 'gpt-5'"),
        (["predict", "--model", "gpt2-large"], "not in the local Hugging Face cache"),
        (["predict", "--model", "/no/such/folder"], "does not exist"),
        (["predict", "--device", "cuda:7"], "no CUDA GPU"),
        (["patch", "--level", "everything"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_clear_line(capsys, argv, needle):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert needle in err and "Traceback" not in err and err.count("\n") == 1, err


def test_folder_without_safetensors_is_refused(capsys, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    code, _, err = run(capsys, "predict", "--model", str(tmp_path))
    assert code == 2 and "pickle files are never loaded" in err


def test_congruence_cli_both_directions(capsys):
    code, out, _ = run(capsys, "congruence", "--neuron", "L25.N1527", "--top-k", "3", "--json")
    data = json.loads(out)
    assert code == 0 and data["matrix"] == "W_U" and data["processing"]["fold_ln"] is True
    assert data["results"][0] == {
        "layer": 25,
        "neuron": 1527,
        "token": " an",
        "id": 354,
        "congruence": pytest.approx(12.406, abs=0.01),
    }
    code, out, _ = run(capsys, "congruence", "--token", " an", "--matrix", "W_E", "--json")
    data = json.loads(out)
    assert (
        code == 0
        and data["matrix"] == "W_E"
        and (data["results"][0]["layer"], data["results"][0]["neuron"]) == (25, 1527)
    )


def test_search_cli_on_a_small_model(capsys, gpt2_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("TNE_CACHE_DIR", str(tmp_path))
    code, out, _ = run(capsys, "search", "--model", str(gpt2_folder), "--kind", "standout", "--top-k", "4", "--json")
    data = json.loads(out)
    assert code == 0 and len(data["results"]) == 4 and data["kind"] == "standout"
    assert set(data["results"][0]) == {
        "layer",
        "neuron",
        "token",
        "id",
        "congruence",
        "score",
        "gap_token",
        "gap_neuron",
    }
    scores = [r["score"] for r in data["results"]]
    assert scores == sorted(scores, reverse=True)
    code, _, err = run(capsys, "congruence", "--neuron", "L3.N0", "--model", str(gpt2_folder))
    assert code == 2 and "layer 3 is out of range" in err


def test_scan_cli(capsys, gpt2_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("TNE_CACHE_DIR", str(tmp_path))
    corpus = tmp_path / "c.txt"
    corpus.write_text("An apple a day keeps an owl away.\nAn egg and a hen.\n")
    code, out, _ = run(
        capsys,
        "scan",
        "--model",
        str(gpt2_folder),
        "--dataset",
        str(corpus),
        "--neurons",
        "L1.N3,2.7",
        "--max-tokens",
        "50",
        "--json",
    )
    data = json.loads(out)
    assert code == 0 and set(data["neurons"]) == {"L1.N3", "L2.N7"}
    one = data["neurons"]["L1.N3"]
    assert set(one) >= {"bins", "totals", "correlation", "examples"}
    assert one["totals"]["positions"] == sum(b["count"] for b in one["bins"]) == data["positions"]
    assert set(one["examples"][0]) >= {"activation", "doc", "position", "tokens", "token_activations"}
    code, _, err = run(
        capsys, "scan", "--model", str(gpt2_folder), "--dataset", str(tmp_path / "nope.txt"), "--neurons", "L1.N3"
    )
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "scan", "--neurons", "L1.N3", "--max-tokens", "0")
    assert code == 2 and "0 must be at least 1" in err


def test_all_neurons_cli(capsys):
    code, out, _ = run(capsys, "patch", "--level", "all-neurons", "--top-k", "5", "--json")
    data = json.loads(out)
    assert code == 0 and data["method"] == "exact-topk" and "MLP 0" in data["caveat"]
    assert data["neurons"][0]["layer"] == 25 and data["neurons"][0]["neuron"] == 1527
    assert data["neurons"][0]["exact"] == pytest.approx(0.613, abs=0.02)
    code, out, _ = run(capsys, "patch", "--level", "all-neurons", "--method", "attribution", "--top-k", "3", "--json")
    data = json.loads(out)
    assert code == 0 and data["neurons"][0]["exact"] is None and len(data["neurons"]) == 3
    code, _, err = run(capsys, "patch", "--level", "all-neurons", "--ablation", "zero")
    assert code == 2 and "clean" in err


def test_drivers_json_on_the_post_pair(capsys):
    from core import story

    code, out, _ = run(
        capsys, "drivers", "--neuron", "L25.N1527", "--clean", story.CLEAN, "--corrupted", story.CORRUPTED, "--json"
    )
    data = json.loads(out)
    assert code == 0 and data["neuron"] == {"layer": 25, "neuron": 1527, "label": "L25.N1527"}
    assert data["position"] == 18 and len(data["token_ids"]) == 19 and set(data["inputs"]) == {"gate", "up"}
    assert data["norm_scale_frozen"] is True and data["processing"] == "tl-default" and "BOS" in data["bos"]
    for key in ("gate", "up"):
        total = sum(c["contribution"][key] for c in data["components"])
        assert total == pytest.approx(data["inputs"][key], abs=1e-3)
    shares = [abs(c["first_order"]) for c in data["components"]]
    assert shares == sorted(shares, reverse=True) and len(data["components"]) == 1 + 9 * 26 + 25 + 1
    assert {c["label"] for c in data["components"]} >= {"embed", "bias", "L25.H0", "mlp24"}
    paths = data["path_patching"]
    assert [p["neuron_restored"] for p in paths] == sorted((p["neuron_restored"] for p in paths), reverse=True)
    assert paths[0]["label"] == "mlp23" and paths[1]["label"] == "L23.H0"  # the story (docs/drivers.md)
    assert set(paths[0]) == {"label", "kind", "layer", "head", "neuron_restored", "logit_diff_restored"}
    assert "L23.H0" in data["reads_from"]


def test_drivers_top_k_and_attention_json(capsys, gpt2_folder):
    code, out, _ = run(capsys, "drivers", "--model", str(gpt2_folder), "--neuron", "2.5", "--top-k", "4", "--json")
    data = json.loads(out)
    assert code == 0 and len(data["components"]) == 4 and set(data["inputs"]) == {"in"}
    assert "path_patching" not in data and data["position"] == len(data["token_ids"]) - 1
    code, out, _ = run(capsys, "attention", "--model", str(gpt2_folder), "--layer", "1", "--head", "3", "--json")
    data = json.loads(out)
    P = len(data["token_ids"])
    assert code == 0 and len(data["pattern"]) == P and all(len(row) == P for row in data["pattern"])
    assert data["tokens"][0] == "<|endoftext|>" and sum(data["pattern"][-1]) == pytest.approx(1.0, abs=1e-4)
    assert data["pattern"][0][1] == 0  # causal
