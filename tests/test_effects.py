"""Direct and total effects of every neuron on one prompt (core.analyses.effects), and rarity (core.corpus.rarity).

- the direct effects of all neurons, heads, the embedding and the biases sum to the metric under the frozen norm
  scales, in every family (the soft-capped one: to its linearisation), at the last position and before it;
- each neuron's direct effects add up to its MLP's share in the logit lens's DLA;
- total effects (one batched resumed forward) equal one full forward per neuron / head, written here from the
  forward's pieces, and Hugging Face's own modules with a hook, for every family;
- a planted neuron that a later planted neuron cancels is flagged `cancelled`;
- on the embedded model: the an-neuron's direct and total effects on the post's prompt;
- rarity: tail shares from tiny dashboards' histograms equal the corpus's own activations to within a bin.
"""

import dataclasses
import json

import numpy as np
import pytest
import torch

from core.analyses import effects, lens
from core.corpus import dashboards as dash
from core.corpus import rarity
from core.engine import forward as fw
from core.engine import tokens
from core.engine.model import load_model
from core.errors import UserError
from core.story import CLEAN
from tests.conftest import save_random
from tests.test_dashboards import TEXTS
from tests.test_families import TYPES, hf_logit_diff, layer_modules, module, tiny_configs

# ---------------------------------------------------------------- the reference: one full forward per edit


@torch.no_grad()
def edited_metric(w: fw.Weights, ids: list[int], target: effects.Target, position: int, edit=None) -> float:
    """The metric at `position` of one full forward of the whole prompt, from the forward's pieces, with
    edit = ("neuron", layer, n, value) setting mlp_post[layer][:, position, n], or ("head", layer, h) zeroing
    z[layer][:, position, h] (the pieces the engine resumes from are not used: no prefix, no truncation)."""
    resid = fw.embed(w, torch.tensor([ids]))
    for layer in range(w.n_layers):
        _, z, _, _ = fw.attention(w, layer, resid)
        if edit and edit[0] == "head" and edit[1] == layer:
            z = z.clone()
            z[:, position, edit[2]] = 0
        attn_out = fw.attn_post(w, layer, fw.attn_pre_norm_out(w, layer, z))
        mid = resid + attn_out
        post = fw.mlp_post(w, layer, resid if w.arch.parallel else mid)
        if edit and edit[0] == "neuron" and edit[1] == layer:
            post = post.clone()
            post[:, position, edit[2]] = edit[3]
        resid = mid + fw.mlp_out_from_post(w, layer, post)
    return float(target.value(w, resid[0, position]))


def component_sum(result: effects.Effects) -> float:
    return sum(result.components.values()) + float(result.direct.sum()) + float(result.heads_direct.sum())


# ---------------------------------------------------------------- every family


@pytest.fixture(scope="module", params=TYPES)
def family(request, tmp_path_factory):
    """(Hugging Face module, our model with TransformerLens's processing) of a tiny random checkpoint."""
    from transformers import AutoModelForCausalLM

    folder = save_random(tmp_path_factory.mktemp(request.param), tiny_configs()[request.param], seed=3)
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    return hf, load_model(str(folder), device="cpu")


def check_sums(model, prompt, answer, wrong, position, top_k=6):
    result = effects.top_neurons(model, prompt, answer, wrong, position=position, top_k=top_k)
    w = model.weights
    # the metric at the position equals the full prompt's logits there (the run stopped at the position)
    full = fw.run(w, prompt.tensor(model.device)).resid_final[0, result.position]
    assert result.metric == pytest.approx(float(result.target.value(w, full)), abs=1e-4)
    # the direct effects, heads, embedding and biases sum to the frozen-scale readout ...
    assert component_sum(result) == pytest.approx(result.linear_metric, abs=2e-4 * max(1, abs(result.linear_metric)))
    # ... which is the metric itself unless a soft-cap is linearised
    if w.arch.final_softcap is None:
        assert result.linear_metric == pytest.approx(result.metric, abs=1e-4 * max(1, abs(result.metric)))
    else:
        assert "softcap" in result.conventions
    # each MLP's neurons + its b_out share = the MLP's DLA in the lens's decomposition (same frozen scales)
    trace = fw.run(w, torch.tensor([prompt.ids[: result.position + 1]]))
    direction, bias = result.target.readout(w, trace.resid_final[0, -1])
    dla = lens.direct_attribution(w, trace, -1, direction, bias)
    per_unit, bias_share = effects.neuron_readouts(w, trace, direction)
    torch.testing.assert_close(
        torch.from_numpy(result.direct).sum(1) + bias_share.float(), dla.mlp, atol=2e-4, rtol=1e-4
    )
    np.testing.assert_allclose(result.heads_direct, dla.heads.numpy(), atol=1e-6)
    return result


def check_totals(model, prompt, result, hf=None):
    """Each verified neuron's and head's total effect = one full forward with that edit (ours; Hugging Face's)."""
    w, p, ids = model.weights, result.position, prompt.ids
    clean = edited_metric(w, ids, result.target, p)
    assert clean == pytest.approx(result.metric, abs=1e-4)
    for row in result.neurons.itertuples():
        ref = clean - edited_metric(w, ids, result.target, p, ("neuron", row.layer, row.neuron, row.replacement))
        assert row.total == pytest.approx(ref, abs=2e-4 * max(1, abs(ref))), row.label
    verified = result.heads[result.heads.verified]
    assert len(verified) == min(effects.DEFAULT_TOP_HEADS, model.n_layers * model.n_heads)
    for row in verified.itertuples():
        ref = clean - edited_metric(w, ids, result.target, p, ("head", row.layer, row.head))
        assert row.total == pytest.approx(ref, abs=2e-4 * max(1, abs(ref))), row.label
    if hf is None:
        return
    # Hugging Face's modules, hooked: the down-projection's input (neurons) and the output projection's (heads)
    answer, wrong = result.target.ids
    hf_clean = hf_logit_diff(hf, ids, answer, wrong)
    assert hf_clean == pytest.approx(result.metric, abs=2e-4)
    for row in result.neurons.head(3).itertuples():

        def zero_neuron(t, n=row.neuron):
            t[:, p, n] = 0
            return t

        patched = hf_logit_diff(hf, ids, answer, wrong, [(module(hf, row.layer, "neurons"), "input", zero_neuron)])
        assert row.total == pytest.approx(hf_clean - patched, abs=3e-4), row.label
    h = w.d_head
    for row in verified.head(2).itertuples():

        def zero_head(t, head=row.head):
            t[:, p, head * h : (head + 1) * h] = 0
            return t

        patched = hf_logit_diff(hf, ids, answer, wrong, [(module(hf, row.layer, "z"), "input", zero_head)])
        assert row.total == pytest.approx(hf_clean - patched, abs=3e-4), row.label


def test_every_family_sums_and_totals(family):
    hf, model = family
    assert len(layer_modules(hf)) == model.n_layers
    prompt = tokens.prompt(model, CLEAN)
    last = check_sums(model, prompt, " an", " a", None)
    check_totals(model, prompt, last, hf)
    # a single token's logit, at a position before the last (the run stops there)
    early = check_sums(model, prompt, " tree", None, 6)
    assert early.position == 6 and early.conventions["positions"].startswith("the run stops at position 6")
    check_totals(model, prompt, early)


def test_bridged_families_sums_and_totals(tiny):
    prompt = tokens.prompt(tiny, CLEAN)
    result = check_sums(tiny, prompt, " an", " a", None)
    check_totals(tiny, prompt, result)
    top1 = check_sums(tiny, prompt, None, None, -3)
    assert top1.target.chosen == "top-1"
    logits = fw.unembed(tiny.weights, fw.run(tiny.weights, prompt.tensor(tiny.device)).resid_final[0, -3])
    assert top1.target.ids == (int(logits.argmax()),)


def test_mean_ablation_sets_the_neuron_to_its_mean(tiny):
    prompt = tokens.prompt(tiny, CLEAN)
    means = np.random.default_rng(0).normal(size=(tiny.n_layers, tiny.d_mlp)).astype(np.float32)
    result = effects.top_neurons(tiny, prompt, " an", " a", top_k=4, ablation="mean", means=means)
    rows = result.neurons
    np.testing.assert_allclose(rows.replacement, means[rows.layer, rows.neuron])
    per_unit = result.direct[rows.layer, rows.neuron] / rows.activation
    np.testing.assert_allclose(rows.direct_of_change, (rows.activation - rows.replacement) * per_unit, rtol=1e-4)
    check_totals(tiny, prompt, result)
    assert "corpus mean" in result.conventions["total_effect"]


# ---------------------------------------------------------------- planted cancellation


def test_a_planted_neuron_cancelled_by_a_later_one_is_flagged(tiny):
    """L0.N7 writes the answer−wrong direction; L1.N11 reads it and writes it back negated, as strongly: zeroing
    L0.N7 also silences L1.N11, so its total effect is a small part of its direct effect."""
    if tiny.model_type != "gpt2":
        pytest.skip("planted in the plain GELU MLP of GPT-2")
    prompt = tokens.prompt(tiny, CLEAN)
    w = tiny.weights
    an, a = tokens.single_token(tiny, " an"), tokens.single_token(tiny, " a")
    u = w.W_U[:, an] - w.W_U[:, a]
    u = (u - u.mean()) / (u - u.mean()).norm()
    W_out, W_in, b_in = w.W_out.clone(), w.W_in.clone(), w.b_in.clone()
    W_out[0, 7] = 40 * u
    W_in[1][:, 11], b_in[1, 11], W_out[1, 11] = 0, 0, 0
    alone = dataclasses.replace(tiny, weights=dataclasses.replace(w, W_out=W_out, W_in=W_in, b_in=b_in))
    first = effects.top_neurons(alone, prompt, " an", " a", top_k=3).neurons.set_index("label")
    assert first.loc["L0.N7", "kind"] == "direct" and not first.loc["L0.N7", "cancelled"]
    # the canceller: reads u (after the folded LayerNorm: divided by the residual's scale there), writes −u
    trace = fw.run(alone.weights, prompt.tensor(tiny.device))
    scale = float(fw.norm_scale(w, trace.resid_mid[1][0, -1]))
    W_in[1][:, 11], W_out[1, 11] = 4.0 * u, -(scale / 4.0) * u
    planted = dataclasses.replace(tiny, weights=dataclasses.replace(w, W_out=W_out, W_in=W_in, b_in=b_in))
    result = effects.top_neurons(planted, prompt, " an", " a", top_k=3)
    rows = result.neurons.set_index("label")
    assert {"L0.N7", "L1.N11"} <= set(rows.index[:2])
    assert rows.loc["L0.N7", "direct"] > 10 and rows.loc["L1.N11", "direct"] < -10
    assert rows.loc["L0.N7", "cancelled"] and rows.loc["L0.N7", "kind"] == "cancelled"
    assert abs(rows.loc["L0.N7", "ratio"]) < effects.CANCEL_BELOW
    check_totals(planted, prompt, result)


# ---------------------------------------------------------------- the embedded model


def test_embedded_an_neuron_direct_and_total(embedded):
    prompt = tokens.prompt(embedded, CLEAN)
    result = check_sums(embedded, prompt, " an", " a", None, top_k=50)
    assert result.metric == pytest.approx(0.7138, abs=1e-3)
    rows = result.neurons.set_index("label")
    assert rows.index[0] == "L25.N1527"
    an = rows.loc["L25.N1527"]
    assert an.direct == pytest.approx(4.2108, abs=2e-3)
    assert an.total == pytest.approx(2.2177, abs=2e-3)
    assert an.kind == "direct" and an.ratio == pytest.approx(0.527, abs=2e-3)
    n126 = rows.loc["L25.N126"]
    assert n126.direct == pytest.approx(-0.4393, abs=2e-3)
    assert abs(n126.total) < 0.03 and n126.cancelled
    # the an-neuron's total by one full forward
    ref = result.metric - edited_metric(
        embedded.weights, prompt.ids, result.target, result.position, ("neuron", 25, 1527, 0.0)
    )
    assert an.total == pytest.approx(ref, abs=1e-3)
    payload = json.loads(json.dumps(result.to_json()))
    assert payload["position"] == len(prompt.ids) - 1 and payload["metric"]["value"] == pytest.approx(0.7138, abs=1e-3)
    first = payload["neurons"][0]
    keys = {"layer", "neuron", "activation", "direct_effect", "total_effect", "ratio", "cancelled", "amplified", "kind"}
    assert keys <= set(first) and first["direct_effect"] == pytest.approx(4.2108, abs=2e-3)
    assert payload["heads"][0].keys() >= {"layer", "head", "direct_effect", "total_effect"}
    assert payload["thresholds"]["cancelled_below"] == effects.CANCEL_BELOW
    assert {"final_norm", "processing", "bos"} <= set(payload["conventions"])
    wider = result.frame(80)
    assert len(wider) == 80 and wider.verified.sum() == 50 and (wider.kind == "not verified").sum() == 30
    assert list(wider.label[:50]) == list(result.neurons.label)
    np.testing.assert_allclose(wider.total[:50], result.neurons.total)
    assert json.dumps(result.to_json()) == json.dumps(result.to_json())  # no timings: the same input, the same JSON


@pytest.fixture(scope="module")
def gemma():
    from core.engine.model import GEMMA3, installed

    if not installed(GEMMA3):
        pytest.skip("gemma3-270m is not installed")
    return load_model(GEMMA3, device="cpu")


def test_gemma3_an_neuron_through_the_post_norms(gemma):
    """Gemma 3 (post-MLP norms) on its own story prompt: its an-neuron, negative, writes " an" directly."""
    from core.story import GEMMA3_CLEAN

    prompt = tokens.prompt(gemma, GEMMA3_CLEAN)
    result = check_sums(gemma, prompt, " an", " a", None, top_k=10)
    assert result.metric == pytest.approx(1.5058, abs=1e-3)
    an = result.neurons.set_index("label").loc["L13.N1278"]
    assert an["rank"] == 1 and an.activation < 0
    assert an.direct == pytest.approx(2.4804, abs=2e-3) and an.total == pytest.approx(1.5650, abs=2e-3)
    ref = result.metric - edited_metric(
        gemma.weights, prompt.ids, result.target, result.position, ("neuron", 13, 1278, 0.0)
    )
    assert an.total == pytest.approx(ref, abs=1e-3)
    assert "post_norms" in result.conventions


# ---------------------------------------------------------------- bad input


def test_bad_input_gets_one_line(tiny):
    prompt = tokens.prompt(tiny, CLEAN)
    n = tiny.n_layers * tiny.d_mlp
    cases = [
        (lambda: tokens.prompt(tiny, ""), "empty"),
        (lambda: effects.top_neurons(tiny, prompt, position=len(prompt.ids)), "outside the prompt"),
        (lambda: effects.top_neurons(tiny, prompt, position=-len(prompt.ids) - 1), "outside the prompt"),
        (lambda: effects.top_neurons(tiny, prompt, " an apple"), "exactly one token"),
        (lambda: effects.top_neurons(tiny, prompt, " an", " an"), "same token"),
        (lambda: effects.top_neurons(tiny, prompt, None, " a"), "needs an answer"),
        (lambda: effects.top_neurons(tiny, prompt, " an", top_k=0), "top-k 0 is out of range"),
        (lambda: effects.top_neurons(tiny, prompt, " an", top_k=n + 1), f"top-k {n + 1} is out of range"),
        (lambda: effects.top_neurons(tiny, prompt, " an", ablation="mean"), "dashboards build"),
        (lambda: effects.top_neurons(tiny, prompt, " an", ablation="mean", means=np.zeros(3)), "shape"),
        (lambda: effects.top_neurons(tiny, prompt, " an", ablation="negate"), "ablation 'negate' unknown"),
        (lambda: effects.top_neurons(tiny, prompt, 10**9), "out of range"),
        (lambda: rarity.unusual_neurons(tiny, prompt, None), "dashboards build --model"),
    ]
    for call, message in cases:
        with pytest.raises(UserError) as err:
            call()
        assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


# ---------------------------------------------------------------- rarity


@pytest.fixture()
def tiny_dashboards(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("TNE_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t, "title": f"t{i}"}) + "\n" for i, t in enumerate(TEXTS)))
    spec = dash.DashboardSpec(str(path), 300, top_k=2, ctx=16)
    return dash.build(tiny, spec), dash.plan(tiny, spec)


@torch.no_grad()
def test_rarity_matches_the_corpus_activations(tiny, tiny_dashboards):
    built, work = tiny_dashboards
    runs = [fw.run(tiny.weights, torch.tensor([ids]), record={"mlp_post"}) for _, _, ids in work.contexts]
    corpus = torch.cat(
        [torch.stack([p[0] for p in r.mlp_post], 1)[work.skip :] for r in runs]
    ).numpy()  # [positions, L, m]
    assert len(corpus) == built.positions
    prompt = tokens.prompt(tiny, "An owl ate an apple at night.")
    frame = rarity.unusual_neurons(tiny, prompt, built, per_token=3)
    positions = rarity.counted_positions(tiny, prompt)
    assert sorted(set(frame.position)) == positions and len(frame) == 3 * len(positions)
    assert (0 not in positions) == bool(tiny.prepend_bos)  # GPT-2's prepended BOS is not counted, as in the build
    acts = rarity.prompt_activations(tiny, prompt)
    high, low = rarity.tail_shares(built.arrays["hist"], acts[positions], built.arrays["vals"])
    # the interpolated tail share is within one bin's share of the exact empirical share
    bins = dash.bin_of(torch.from_numpy(acts[positions])).numpy()
    for row in frame.itertuples():
        a, column = row.activation, corpus[:, row.layer, row.neuron]
        exact = (column >= a).mean() if row.side == "high" else (column <= a).mean()
        own = (
            dash.bin_of(torch.from_numpy(column)).numpy() == bins[positions.index(row.position), row.layer, row.neuron]
        ).mean()
        assert abs(row.share - exact) <= own + 1e-9, row
        if row.side == "high":  # the far tail is counted from the kept examples: exact
            assert row.beyond_corpus == (a > column.max())
            if a >= np.sort(column)[-2]:
                assert row.share == pytest.approx(exact, abs=1e-9)
        else:
            assert not row.beyond_corpus or a < column.min()
    # within a position: rarest first, and no other neuron is rarer than the last one kept
    for pos, rows in frame.groupby("position"):
        assert list(rows["rank"]) == [1, 2, 3] and rows.share.is_monotonic_increasing
        i = positions.index(pos)
        assert np.minimum(high[i], low[i]).min() == pytest.approx(rows.share.iloc[0])
    only_high = rarity.unusual_neurons(tiny, prompt, built, per_token=2, side="high")
    assert set(only_high.side) == {"high"}
    means = rarity.corpus_means(built)
    assert means.shape == (tiny.n_layers, tiny.d_mlp)
    # bin midpoints: within a bin's half-width (~10 % of |a|) of the exact mean
    error = np.abs(means - corpus.mean(0))
    assert (error <= 1e-3 + 0.1 * np.abs(corpus).mean(0)).all(), error.max()
