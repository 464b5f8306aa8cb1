"""Generation and steering (core.analyses.generate, core.analyses.steering), issue #24.

Exactness, three ways: the KV cache equals recomputing the whole sequence at every step (tokens and logits, steered
and unsteered, every family, sliding windows shorter than the prompt); the unsteered logits equal the plain forward
(core.engine.forward.run, which test_families.py checks against Hugging Face); and greedy generation equals
transformers' own `generate` with torch hooks doing the same intervention on the Hugging Face modules.
"""

from __future__ import annotations

import math

import pytest
import torch

from core.analyses import generate as gen
from core.analyses import predict, steering
from core.analyses.steering import Intervention
from core.engine import forward as fw
from core.engine import tokens
from core.engine.model import GEMMA3, embedded_folder, load_model
from core.errors import UserError
from core.story import CLEAN, GEMMA3_CLEAN
from tests.conftest import save_random
from tests.test_families import module, tiny_configs

TYPES = ["gpt2", "llama", *tiny_configs()]
NEW = 6


_PAIRS: dict = {}  # built once per family: pytest may set a module fixture's parameter up more than once


@pytest.fixture(scope="module", params=TYPES)
def pair(request, gpt2_folder, llama_folder, tmp_path_factory):
    """(Hugging Face module, our model with TransformerLens processing) of one family's tiny random checkpoint."""
    name = request.param
    if name not in _PAIRS:
        _PAIRS[name] = build_pair(name, gpt2_folder, llama_folder, tmp_path_factory)
    return _PAIRS[name]


def build_pair(name, gpt2_folder, llama_folder, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    if name in ("gpt2", "llama"):
        folder = gpt2_folder if name == "gpt2" else llama_folder
    else:
        folder = save_random(tmp_path_factory.mktemp(f"gen-{name}"), tiny_configs()[name], seed=3)
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    return hf, load_model(str(folder), device="cpu")


def mixed(model) -> list[Intervention]:
    """Every op at every kind of position, on two layers (one of them the last)."""
    last = model.n_layers - 1
    return [
        Intervention(0, 3, "set", 2.5, "all"),
        Intervention(0, 7, "scale", -3.0, "prompt"),
        Intervention(1, 5, "add", 4.0, "new"),
        Intervention(last, 11, "negate", -1.0, (2, 5)),
        Intervention(1, 9, "direction", 3.0, "all"),
    ]


# ---------------------------------------------------------------- the cache is exact


@torch.no_grad()
def test_cache_equals_recompute_steered_and_not(pair):
    _, model = pair
    ids = model.prompt_ids(CLEAN)
    window = [w for w in model.weights.arch.windows if w]
    assert not window or len(ids) > max(window)  # the sliding windows really cut the prompt
    rows = (1,)  # row 0 unsteered, row 1 steered, in one batch
    edits = [iv.edit(rows) for iv in mixed(model)]
    kw = dict(sampling=[gen.Sampling()] * 2, edits=edits, stop_ids=(), keep_logits=True)
    cached = gen.generate(model, ids, NEW, **kw)
    recomputed = gen.generate(model, ids, NEW, use_cache=False, **kw)
    assert cached.token_ids == recomputed.token_ids
    assert cached.token_ids[0] != cached.token_ids[1] or not torch.allclose(cached.logits[:, 0], cached.logits[:, 1])
    torch.testing.assert_close(cached.logits, recomputed.logits, atol=1e-4, rtol=1e-4)
    # The unsteered row equals the plain forward of the whole sequence, and a batch of one.
    seq = torch.tensor([ids + cached.token_ids[0][:-1]])
    full = fw.unembed(model.weights, fw.run(model.weights, seq).resid_final)[0, len(ids) - 1 :]
    torch.testing.assert_close(cached.logits[:, 0], full, atol=1e-4, rtol=1e-4)
    alone = gen.generate(model, ids, NEW, stop_ids=(), keep_logits=True)
    assert alone.token_ids[0] == cached.token_ids[0]
    torch.testing.assert_close(alone.logits[:, 0], cached.logits[:, 0], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- = transformers' generate + hooks


def hf_sites(hf, layer: int) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    """(module whose input is the neurons, module whose output joins the residual after the MLP, W_out [m, d])."""
    if hasattr(hf, "transformer"):  # GPT-2: Conv1D weights are [in, out]
        mlp = hf.transformer.h[layer].mlp
        return mlp.c_proj, mlp, mlp.c_proj.weight.detach()
    down = module(hf, layer, "neurons")
    return down, module(hf, layer, "mlp_out"), down.weight.detach().T


def covered(positions, prompt_len: int, start: int, S: int) -> torch.Tensor:
    pos = torch.arange(start, start + S)
    if positions == "all":
        return torch.ones(S, dtype=torch.bool)
    if positions == "prompt":
        return pos < prompt_len
    if positions == "new":
        return pos >= prompt_len
    return torch.isin(pos, torch.tensor(positions))


def hook_interventions(hf, interventions, prompt_len: int) -> list:
    """Torch hooks doing the interventions on the Hugging Face modules; each counts the positions it has seen
    (generate runs the prompt, then one token per call)."""
    handles = []
    for iv in interventions:
        down, out_module, W_out = hf_sites(hf, iv.layer)
        seen = [0]

        def pre(m, args, iv=iv, seen=seen):
            x = args[0].clone()
            mask = covered(iv.positions, prompt_len, seen[0], x.shape[1])
            seen[0] += x.shape[1]
            col = x[..., iv.neuron]
            new = {"set": torch.full_like(col, iv.value), "scale": col * iv.value, "add": col + iv.value}.get(
                iv.op, -col
            )
            x[..., iv.neuron] = torch.where(mask, new, col)
            return (x, *args[1:])

        def post(m, args, output, iv=iv, seen=seen, W_out=W_out):
            out = output[0] if isinstance(output, tuple) else output
            mask = covered(iv.positions, prompt_len, seen[0], out.shape[1])
            seen[0] += out.shape[1]
            out = out + mask[:, None] * (iv.value * W_out[iv.neuron])
            return (out, *output[1:]) if isinstance(output, tuple) else out

        if iv.op == "direction":
            handles.append(out_module.register_forward_hook(post))
        else:
            handles.append(down.register_forward_pre_hook(pre))
    return handles


@torch.no_grad()
def hf_generate(hf, ids: list[int], new: int, interventions=()) -> tuple[list[int], torch.Tensor]:
    handles = hook_interventions(hf, interventions, len(ids))
    try:
        out = hf.generate(
            torch.tensor([ids]), max_new_tokens=new, do_sample=False, return_dict_in_generate=True, output_logits=True
        )
    finally:
        for h in handles:
            h.remove()
    return out.sequences[0, len(ids) :].tolist(), torch.cat(out.logits).float().log_softmax(-1)


@torch.no_grad()
def test_greedy_equals_transformers_generate_with_hooks(pair):
    hf, model = pair
    ids = model.prompt_ids(CLEAN)
    for interventions in ([], mixed(model)):
        ref_ids, ref_logp = hf_generate(hf, ids, NEW, interventions)
        if interventions:
            ours = steering.steer(model, tokens.prompt(model, CLEAN), interventions, max_new_tokens=NEW)
            got = ours.steered[0]
        else:
            out = gen.generate(model, ids, NEW, keep_logits=True)
            got = steering.Continuation(None, out.token_ids[0], [], "", out.logprobs[0], out.finish[0])
        assert got.token_ids == ref_ids, interventions
        expected = ref_logp[torch.arange(len(ref_ids)), torch.tensor(ref_ids)]
        torch.testing.assert_close(torch.tensor(got.logprobs), expected, atol=2e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def embedded_hf():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        embedded_folder(), dtype=torch.float32, attn_implementation="eager"
    ).eval()


@torch.no_grad()
def test_embedded_steering_equals_transformers_generate(embedded, embedded_hf):
    ids = embedded.prompt_ids(CLEAN)
    interventions = [Intervention(25, 1527, "negate", -1.0), Intervention(20, 33, "direction", 2.0, "new")]
    ref_ids, ref_logp = hf_generate(embedded_hf, ids, 8, interventions)
    ours = steering.steer(embedded, CLEAN, interventions, max_new_tokens=8).steered[0]
    assert ours.token_ids == ref_ids
    expected = ref_logp[torch.arange(len(ref_ids)), torch.tensor(ref_ids)]
    torch.testing.assert_close(torch.tensor(ours.logprobs), expected, atol=2e-4, rtol=1e-4)


@torch.no_grad()
def test_gemma3_steering_equals_transformers_generate():
    """The second embedded model: sliding-window and global layers, post-norms, QK-norm, soft embedding scale."""
    from transformers import AutoModelForCausalLM

    model = load_model(GEMMA3, device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(
        embedded_folder(GEMMA3), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ids = model.prompt_ids(GEMMA3_CLEAN)
    interventions = [Intervention(13, 1278, "negate", -1.0), Intervention(10, 7, "direction", 3.0, "new")]
    ref_ids, ref_logp = hf_generate(hf, ids, 6, interventions)
    result = steering.steer(model, GEMMA3_CLEAN, interventions, max_new_tokens=6)
    assert result.steered[0].token_ids == ref_ids
    expected = ref_logp[torch.arange(len(ref_ids)), torch.tensor(ref_ids)]
    torch.testing.assert_close(torch.tensor(result.steered[0].logprobs), expected, atol=2e-4, rtol=1e-4)
    # Its an-neuron fires negative on this prompt and writes " a": negated, " an architect" becomes " a …".
    assert result.baseline[0].text.startswith(" an architect") and result.steered[0].text.startswith(" a ")


# ---------------------------------------------------------------- each op at the hooked site


@torch.no_grad()
def test_each_op_changes_the_activation_as_said(tiny, monkeypatch):
    model = tiny
    w = model.weights
    ids = model.prompt_ids(CLEAN)
    P, layer, n = len(ids), 1, 17
    natural = fw.run(w, torch.tensor([ids])).mlp_post[layer][0, :, n]  # [P]
    seen: list[torch.Tensor] = []
    real = fw.mlp_out_from_post

    def spy(weights, at_layer, post):
        if at_layer == layer:
            seen.append(post.clone())
        return real(weights, at_layer, post)

    monkeypatch.setattr(fw, "mlp_out_from_post", spy)
    positions = (1, 4)
    mask = torch.zeros(P, dtype=torch.bool)
    mask[list(positions)] = True
    for op, value, expected in (
        ("set", -4.0, torch.full_like(natural, -4.0)),
        ("scale", 2.0, natural * 2),
        ("add", 10.0, natural + 10),
        ("negate", -1.0, -natural),
    ):
        seen.clear()
        iv = steering.check_intervention(model, Intervention(layer, n, op, value, positions), P)
        cache = gen.KVCache.empty(w, 1, P, model.device)
        gen.forward_step(w, torch.tensor([ids]), cache, gen._Edits([iv.edit(None)], w, 1, P))
        post = seen[0][0]
        torch.testing.assert_close(post[:, n], torch.where(mask, expected, natural))
        torch.testing.assert_close(post[:, n + 1], fw.run(w, torch.tensor([ids])).mlp_post[layer][0, :, n + 1])
    # direction at the last layer: the final residual moves by exactly value × W_out[n]
    last = model.n_layers - 1
    base = gen.forward_step(w, torch.tensor([ids]), gen.KVCache.empty(w, 1, P, model.device))
    edit = Intervention(last, n, "direction", 3.0).edit(None)
    moved = gen.forward_step(
        w, torch.tensor([ids]), gen.KVCache.empty(w, 1, P, model.device), gen._Edits([edit], w, 1, P)
    )
    torch.testing.assert_close(moved - base, 3.0 * w.W_out[last, n][None], atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_direction_equals_add_without_a_post_norm(tiny):
    assert not tiny.weights.arch.post_norms
    ids = tiny.prompt_ids(CLEAN)
    runs = [
        gen.generate(tiny, ids, 3, edits=[Intervention(1, 5, op, 6.0).edit(None)], keep_logits=True, stop_ids=())
        for op in ("add", "direction")
    ]
    assert runs[0].token_ids == runs[1].token_ids
    torch.testing.assert_close(runs[0].logits, runs[1].logits, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- sampling


def test_a_seeded_sample_is_reproducible(tiny):
    ivs = [Intervention(1, 5, "scale", 3.0)]
    kw = dict(max_new_tokens=10, temperature=1.5, top_p=0.95)
    first = steering.steer(tiny, CLEAN, ivs, seeds=(1, 2), **kw)
    again = steering.steer(tiny, CLEAN, ivs, seeds=(1, 2), **kw)
    assert first.to_json() == again.to_json()
    assert first.baseline[0].token_ids != first.baseline[1].token_ids  # the seeds do differ
    # top-p that keeps only the most likely token is greedy
    nucleus = steering.steer(tiny, CLEAN, ivs, seeds=(5,), max_new_tokens=10, temperature=1.0, top_p=1e-9)
    greedy = steering.steer(tiny, CLEAN, ivs, max_new_tokens=10)
    assert nucleus.steered[0].token_ids == greedy.steered[0].token_ids


def test_streaming_and_stop(tiny):
    events: list[gen.TokenEvent] = []
    out = gen.generate(tiny, tiny.prompt_ids(CLEAN), 5, on_token=events.append, stop_ids=())
    assert [e.step for e in events] == list(range(5))
    assert [e.token_ids[0] for e in events] == out.token_ids[0]
    calls = iter([False, False, True])
    stopped = gen.generate(tiny, tiny.prompt_ids(CLEAN), 5, should_stop=lambda: next(calls), stop_ids=())
    assert stopped.finish == ["stopped"] and stopped.token_ids[0] == out.token_ids[0][:2]
    first = out.token_ids[0][0]
    ended = gen.generate(tiny, tiny.prompt_ids(CLEAN), 5, stop_ids=(first,))
    assert ended.token_ids == [[first]] and ended.finish == ["eos"]


# ---------------------------------------------------------------- the post's experiment on the embedded model


def test_negating_the_an_neuron_writes_a_instead_of_an(embedded):
    an, a = tokens.single_token(embedded, " an"), tokens.single_token(embedded, " a")
    result = steering.steer(embedded, CLEAN, [steering.parse_intervention(embedded, "L25.N1527:negate")], 6)
    base, steered = result.baseline[0], result.steered[0]
    assert base.token_ids[0] == an and steered.token_ids[0] == a
    assert math.exp(base.logprobs[0]) == pytest.approx(0.607, abs=0.005)  # P(" an"), as test_embedded measures
    assert math.exp(steered.logprobs[0]) == pytest.approx(0.905, abs=0.01)  # P(" a") with the neuron negated
    assert base.text.startswith(" an apple") and steered.text.startswith(" a pear")
    data = result.to_json()
    assert data["prompt_token_ids"] == embedded.prompt_ids(CLEAN)
    assert data["interventions"][0]["spec"] == "L25.N1527:negate"
    for key in ("baseline", "steered"):
        assert set(data[key]) >= {"token_ids", "text", "logprobs"}
        assert len(data[key]["token_ids"]) == len(data[key]["logprobs"]) == 6
    frame = result.frame()
    steered_rows = frame[frame.variant == "steered"]
    assert steered_rows["changed"].iloc[0] and not steered_rows["diverged"].iloc[0]
    assert steered_rows["diverged"].iloc[1:].all()  # after the first change the runs continue different text


def test_dose_response_on_the_an_neuron(embedded):
    dose = steering.dose_response(embedded, CLEAN, 25, 1527, " an", " a")
    an, a = tokens.single_token(embedded, " an"), tokens.single_token(embedded, " a")
    probs = predict.last_logits(embedded, tokens.prompt(embedded, CLEAN)).softmax(-1)
    assert dose.natural_p_answer == pytest.approx(float(probs[an]), abs=1e-5)
    assert dose.natural_p_wrong == pytest.approx(float(probs[a]), abs=1e-5)
    assert dose.natural == pytest.approx(11.21, abs=0.05)
    assert len(dose.values) == 21 and dose.values[0] == pytest.approx(-2 * dose.natural)
    assert (dose.p_answer[1:] >= dose.p_answer[:-1] - 1e-6).all()  # turning the neuron up helps " an"
    frame = dose.frame()
    assert frame.natural.sum() == 1 and frame.value.is_monotonic_increasing
    # Clamping the natural value is the unclamped run; clamping −4 at every position = steer set=-4's first token.
    same = steering.dose_response(embedded, CLEAN, 25, 1527, " an", " a", values=[dose.natural])
    assert same.p_answer[0] == pytest.approx(dose.natural_p_answer, abs=1e-5)
    every = steering.dose_response(embedded, CLEAN, 25, 1527, " an", " a", values=[-4.0], positions="all")
    steered = steering.steer(embedded, CLEAN, [Intervention(25, 1527, "set", -4.0)], 1).steered[0]
    assert steered.token_ids == [a]
    assert math.exp(steered.logprobs[0]) == pytest.approx(float(every.p_wrong[0]), abs=1e-5)
    assert dose.to_json()["natural"]["activation"] == pytest.approx(dose.natural, abs=1e-5)


@torch.no_grad()
def test_dose_natural_row_is_the_unsteered_run_in_every_family(pair):
    _, model = pair
    prompt = tokens.prompt(model, CLEAN)
    logits = predict.last_logits(model, prompt)
    an, a = 300, 301  # any two tokens: the models are random
    for layer in (0, model.n_layers - 1):
        for positions in ("last", "all"):
            dose = steering.dose_response(model, prompt, layer, 7, an, a, positions=positions)
            assert dose.natural_logit_diff == pytest.approx(float(logits[an] - logits[a]), abs=1e-4)
            # clamping at the last position = generating one token with set at that position
            one = gen.generate(
                model,
                prompt.ids,
                1,
                edits=[Intervention(layer, 7, "set", float(dose.values[3]), (len(prompt.ids) - 1,)).edit(None)],
                keep_logits=True,
            )
            if positions == "last":
                ld = one.logits[0, 0, an] - one.logits[0, 0, a]
                assert float(dose.logit_diff[3]) == pytest.approx(float(ld), abs=1e-4)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "spec, message",
    [
        ("L99.N1:set=1", "layer 99 is out of range"),
        ("L1.N999999:set=1", "neuron 999999 is out of range"),
        ("L1.N2:clamp=1", "operation 'clamp'"),
        ("L1.N2:set=nan", "finite"),
        ("L1.N2:scale=inf", "finite"),
        ("L1.N2:add=ten", "not a number"),
        ("L1.N2:set", "needs a value"),
        ("L1.N2:negate=2", "takes no value"),
        ("L1.N2", "not understood"),
    ],
)
def test_bad_interventions(tiny, spec, message):
    with pytest.raises(UserError, match=message):
        steering.parse_intervention(tiny, spec)


def test_bad_settings(tiny, monkeypatch):
    iv = [steering.parse_intervention(tiny, "L1.N2:negate")]
    P = len(tiny.prompt_ids(CLEAN))
    with pytest.raises(UserError, match="outside the prompt"):
        steering.parse_intervention(tiny, "L1.N2:negate", positions="0,99", prompt_len=P)
    with pytest.raises(UserError, match="outside the prompt"):
        steering.steer(tiny, CLEAN, [Intervention(1, 2, "negate", -1.0, (P,))], 4)
    for kwargs, message in (
        ({"max_new_tokens": 0}, "max new tokens 0"),
        ({"max_new_tokens": gen.MAX_NEW_TOKENS + 1}, "max new tokens"),
        ({"max_new_tokens": tiny.n_ctx}, "context"),
        ({"temperature": 0.5, "top_p": 0.0}, "top-p"),
        ({"temperature": 0.5, "top_p": 1.5}, "top-p"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
    ):
        with pytest.raises(UserError, match=message):
            steering.steer(tiny, CLEAN, iv, **{"max_new_tokens": 4, **kwargs})
    with pytest.raises(UserError, match="no intervention"):
        steering.steer(tiny, CLEAN, [], 4)
    monkeypatch.setenv("TNE_HOSTED", "1")
    with pytest.raises(UserError, match=f"1..{gen.HOSTED_MAX_NEW_TOKENS}"):
        steering.steer(tiny, CLEAN, iv, gen.HOSTED_MAX_NEW_TOKENS + 1)
    with pytest.raises(UserError, match="interventions"):
        steering.steer(tiny, CLEAN, iv * (steering.HOSTED_MAX_INTERVENTIONS + 1), 4)
    with pytest.raises(UserError, match="points"):
        steering.dose_response(tiny, CLEAN, 1, 2, " an", " a", points=1)
