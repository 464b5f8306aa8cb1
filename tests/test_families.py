"""Every supported family on a tiny random checkpoint (real GPT-2 BPE), against Hugging Face's own forward and
patching done with torch hooks on the Hugging Face modules: an implementation independent of ours.

GPT-2 and Llama are checked against TransformerLens's bridge in test_forward.py / test_patching.py; here every
other family. Weights are scaled ×4 (conftest.save_random) so that patching effects are far from zero.
"""

import dataclasses

import numpy as np
import pytest
import torch

from core.analyses import attribution, patching
from core.engine import families, tokens
from core.engine import forward as fw
from core.engine.model import load_model
from core.errors import UserError
from core.story import CLEAN, CORRUPTED
from tests.conftest import save_random


def tiny_configs() -> dict:
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        GemmaConfig,
        GPTNeoXConfig,
        MistralConfig,
        Olmo2Config,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    common = dict(
        num_hidden_layers=3,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
        vocab_size=50257,
        max_position_embeddings=128,
        bos_token_id=50256,
        eos_token_id=50256,
        pad_token_id=50256,
    )
    # Windows shorter than the prompts (≈ 18 tokens), so a forward without them would differ.
    return {
        "mistral": MistralConfig(**common, sliding_window=5, rope_theta=20000.0),
        "qwen2": Qwen2Config(
            **common, use_sliding_window=True, sliding_window=6, max_window_layers=1, rope_theta=30000.0
        ),
        "qwen3": Qwen3Config(**common, head_dim=24, rope_theta=40000.0),
        "phi3": Phi3Config(**{**common, "num_key_value_heads": 4}, partial_rotary_factor=0.5),
        "gemma": GemmaConfig(**common, head_dim=16),
        "gemma2": Gemma2Config(
            **common,
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=4,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0,
        ),
        "gemma3_text": Gemma3TextConfig(
            **{**common, "num_hidden_layers": 4},
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=4,
            sliding_window_pattern=2,
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            },
        ),
        "olmo2": Olmo2Config(**common),
        "gpt_neox": GPTNeoXConfig(
            num_hidden_layers=3,
            hidden_size=64,
            num_attention_heads=4,
            intermediate_size=96,
            vocab_size=50257,
            max_position_embeddings=128,
            rotary_pct=0.5,
            hidden_act="gelu",
            use_parallel_residual=True,
            bos_token_id=50256,
            eos_token_id=50256,
        ),
    }


TYPES = list(tiny_configs())


def test_every_family_but_the_bridged_ones_is_tested_here():
    assert set(TYPES) | {"gpt2", "llama"} == set(families.SUPPORTED_TYPES)


@pytest.fixture(scope="module", params=TYPES)
def family(request, tmp_path_factory):
    """(folder, Hugging Face module, our model with processing 'none', ours with 'tl-default')."""
    from transformers import AutoModelForCausalLM

    folder = save_random(tmp_path_factory.mktemp(request.param), tiny_configs()[request.param], seed=3)
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    raw = load_model(str(folder), device="cpu", processing="none")
    processed = load_model(str(folder), device="cpu", processing="tl-default")
    assert raw.model_type == request.param
    return folder, hf, raw, processed


# ---------------------------------------------------------------- hooks on the Hugging Face modules


def layer_modules(hf) -> list:
    return list(hf.gpt_neox.layers if hasattr(hf, "gpt_neox") else hf.model.layers)


def module(hf, layer: int, what: str):
    """The Hugging Face module whose output is `what` ("attn_out", "mlp_out") or input ("z", "neurons")."""
    block = layer_modules(hf)[layer]
    attn = block.attention if hasattr(block, "attention") else block.self_attn
    post_norms = hasattr(block, "post_feedforward_layernorm")
    if what == "attn_out":
        return block.post_attention_layernorm if post_norms else attn
    if what == "mlp_out":
        return block.post_feedforward_layernorm if post_norms else block.mlp
    if what == "z":
        return attn.dense if hasattr(attn, "dense") else attn.o_proj
    return block.mlp.dense_4h_to_h if hasattr(block.mlp, "dense_4h_to_h") else block.mlp.down_proj


def first(output):
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def hf_logit_diff(hf, ids: list[int], answer: int, wrong: int, edits=()) -> float:
    """One Hugging Face forward with edits = [(module, "output" | "input", fn(tensor) → tensor)]."""
    handles = []
    for mod, where, fn in edits:
        if where == "output":

            def hook(m, args, output, fn=fn):
                if isinstance(output, tuple):
                    return (fn(output[0].clone()), *output[1:])
                return fn(output.clone())

            handles.append(mod.register_forward_hook(hook))
        else:
            handles.append(mod.register_forward_pre_hook(lambda m, args, fn=fn: (fn(args[0].clone()), *args[1:])))
    try:
        logits = hf(torch.tensor([ids])).logits[0, -1]
    finally:
        for h in handles:
            h.remove()
    return float(logits[answer] - logits[wrong])


@torch.no_grad()
def hf_capture(hf, ids: list[int], mod, where: str) -> torch.Tensor:
    box = []
    if where == "output":
        handle = mod.register_forward_hook(lambda m, args, output: box.append(first(output).clone()))
    else:
        handle = mod.register_forward_pre_hook(lambda m, args: box.append(args[0].clone()))
    try:
        hf(torch.tensor([ids]))
    finally:
        handle.remove()
    return box[0]


def setup_for(model, ablation="clean"):
    c, k = tokens.pair(model, CLEAN, CORRUPTED)
    return patching.prepare(model, c, k, tokens.single_token(model, " an"), tokens.single_token(model, " a"), ablation)


def hf_score(hf, setup, mod, where: str, edit) -> float:
    """Clean patching through a hook: edit(corrupted value, clean value) → patched value."""
    m = setup.metric
    clean_value = hf_capture(hf, setup.clean.ids, mod, where)
    patched = hf_logit_diff(hf, setup.corrupted.ids, m.answer, m.wrong, [(mod, where, lambda t: edit(t, clean_value))])
    return (patched - setup.corrupted_logit_diff) / (setup.clean_logit_diff - setup.corrupted_logit_diff)


# ---------------------------------------------------------------- the forward


@torch.no_grad()
def test_logits_equal_hugging_face(family):
    _, hf, raw, processed = family
    ids = tokens.pair(raw, CLEAN, CORRUPTED)[0].ids
    reference = hf(torch.tensor([ids])).logits[0]
    assert reference.std() > 0.3  # far from a degenerate random model
    ours = fw.unembed(raw.weights, fw.run(raw.weights, torch.tensor([ids])).resid_final)[0]
    torch.testing.assert_close(ours, reference, atol=2e-5, rtol=1e-4)
    # TransformerLens's processing centres the unembedding: logits move by one constant per position.
    folded = fw.unembed(processed.weights, fw.run(processed.weights, torch.tensor([ids])).resid_final)[0]
    torch.testing.assert_close(folded.log_softmax(-1), reference.log_softmax(-1), atol=2e-5, rtol=1e-4)


@torch.no_grad()
def test_cached_activations_equal_the_hugging_face_modules(family):
    _, hf, raw, _ = family
    ids = tokens.pair(raw, CLEAN, CORRUPTED)[0].ids
    trace = fw.run(raw.weights, torch.tensor([ids]))
    for layer in range(raw.n_layers):
        for name, what, where in (
            ("attn_out", "attn_out", "output"),
            ("mlp_out", "mlp_out", "output"),
            ("mlp_post", "neurons", "input"),
        ):
            expected = hf_capture(hf, ids, module(hf, layer, what), where)
            torch.testing.assert_close(getattr(trace, name)[layer], expected, atol=2e-5, rtol=1e-4)
        z = hf_capture(hf, ids, module(hf, layer, "z"), "input")
        torch.testing.assert_close(trace.z[layer].flatten(-2), z, atol=2e-5, rtol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("processing", ["none", "tl-default"])
def test_every_activation_equals_the_bridge(family, processing):
    """TransformerLens's bridge wraps every family too: its run_with_cache (with its own processing under
    compatibility mode) equals our trace, at every layer — the processing done by core.engine.families.process
    included."""
    import warnings

    from transformer_lens import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, _, raw, processed = family
    model = raw if processing == "none" else processed
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    hf.config.architectures = [type(hf).__name__]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_transformers(
            str(folder), hf_model=hf, tokenizer=AutoTokenizer.from_pretrained(folder), device="cpu"
        )
        if processing == "tl-default":
            bridge.enable_compatibility_mode(disable_warnings=True)
    ids = torch.tensor([tokens.pair(model, CLEAN, CORRUPTED)[0].ids])
    cache = bridge.run_with_cache(ids)[1]
    trace = fw.run(model.weights, ids)
    for layer in range(model.n_layers):
        for ours, hook in (
            ("resid_pre", "hook_resid_pre"),
            ("attn_out", "hook_attn_out"),
            ("mlp_out", "hook_mlp_out"),
            ("mlp_post", "mlp.hook_post"),
            ("z", "attn.hook_z"),
        ):
            reference = cache[f"blocks.{layer}.{hook}"]
            torch.testing.assert_close(
                getattr(trace, ours)[layer].reshape(reference.shape), reference, atol=2e-5, rtol=1e-4
            )


def test_each_switch_matters(family):
    """The switches the family uses change the logits: a forward that ignored them would fail the test above."""
    _, _, raw, _ = family
    w, a = raw.weights, raw.weights.arch
    ids = torch.tensor([tokens.pair(raw, CLEAN, CORRUPTED)[0].ids])
    logits = fw.unembed(w, fw.run(w, ids).resid_final)
    off = {"windows": (), "parallel": False, "attn_softcap": None, "embed_scale": 1.0, "post_norms": False}
    for name, value in off.items():
        plain = getattr(fw.Arch(a.norm, a.eps, a.act, a.gated, a.n_layers), name)
        if any(a.windows) if name == "windows" else getattr(a, name) != plain:
            naive = dataclasses.replace(w, arch=dataclasses.replace(a, **{name: value}))
            other = fw.unembed(naive, fw.run(naive, ids).resid_final)
            assert (other - logits).abs().max() > 1e-3, name


# ---------------------------------------------------------------- patching equals hooked patching


@torch.no_grad()
@pytest.mark.parametrize("processing", ["none", "tl-default"])
def test_patching_equals_hooked_hugging_face(family, processing):
    _, hf, raw, processed = family
    model = raw if processing == "none" else processed
    setup = setup_for(model)
    P, L = len(setup.clean.ids), model.n_layers
    layers = patching.patch_layers(setup)
    for kind in ("attn_out", "mlp_out"):
        for layer in range(L):
            for pos in (setup.start_pos, P - 1):

                def edit(t, clean, pos=pos):
                    t[:, pos] = clean[:, pos]
                    return t

                expected = hf_score(hf, setup, module(hf, layer, kind), "output", edit)
                assert layers.scores[kind][layer, pos] == pytest.approx(expected, abs=2e-4), (kind, layer, pos)
            expected = hf_score(hf, setup, module(hf, layer, kind), "output", lambda t, clean: clean)
            assert layers.all_positions[kind][layer] == pytest.approx(expected, abs=2e-4), (kind, layer)
    # Heads: one head's z (the input of the output projection) patched at every position.
    heads = patching.patch_heads(setup)
    h = model.weights.d_head
    for layer in range(L):
        for head in (0, model.n_heads - 1):

            def edit(t, clean, head=head):
                t[..., head * h : (head + 1) * h] = clean[..., head * h : (head + 1) * h]
                return t

            expected = hf_score(hf, setup, module(hf, layer, "z"), "input", edit)
            assert heads.all_positions[layer, head] == pytest.approx(expected, abs=2e-4), (layer, head)
    # Neurons: the batched sweep equals one hooked forward per neuron.
    last = L - 1
    sweep = patching.patch_neurons(setup, last)
    for neuron in np.argsort(-np.abs(sweep.scores))[:4].tolist() + [0]:

        def edit(t, clean, neuron=neuron):
            t[..., neuron] = clean[..., neuron]
            return t

        expected = hf_score(hf, setup, module(hf, last, "neurons"), "input", edit)
        assert sweep.scores[neuron] == pytest.approx(expected, abs=2e-4), neuron
    assert np.abs(sweep.scores).max() > 1e-2  # effects are not near zero: the comparison can fail


@torch.no_grad()
def test_patching_identities(family):
    _, _, _, model = family
    setup = setup_for(model)
    L = model.n_layers
    layers = patching.patch_layers(setup)
    w, start = model.weights, setup.start_pos

    def resumed(trace, layer: int) -> float:
        """The corrupted run with the residual entering `layer` replaced by `trace`'s from the first difference on."""
        final = fw.resume(w, trace.resid_pre[layer][:, start:], layer, "pre", start, setup.corrupted_trace)
        return float(setup.metric(w, final)[0])

    # Patching the whole residual stream entering block 0 at every differing position = the clean run.
    assert resumed(setup.clean_trace, 0) == pytest.approx(setup.clean_logit_diff, abs=1e-4)
    assert layers.scores["resid_pre"][0, start:].max() <= 1 + 1e-4
    # Patching nothing: the score of an unchanged row is 0.
    assert resumed(setup.corrupted_trace, 1) == pytest.approx(setup.corrupted_logit_diff, abs=1e-4)
    # All neurons of a layer together = the layer's mlp_out, in every layer.
    sets = patching.patch_neuron_sets(setup, {layer: [] for layer in range(L)})
    for layer in range(L):
        assert sets[layer].layer_score == pytest.approx(layers.all_positions["mlp_out"][layer], abs=1e-4)


@torch.no_grad()
def test_the_linear_shortcuts_fail_where_the_architecture_breaks_them(family):
    """Post-norms: Δact × W_out is not what joins the residual. Parallel: attention's patch never reaches the MLP."""
    _, _, _, model = family
    setup = setup_for(model)
    w, start, last = model.weights, setup.start_pos, model.n_layers - 1
    if w.arch.post_norms:
        exact = patching.patch_neurons(setup, last - 1).scores
        d_post = (setup.clean_trace.mlp_post[last - 1] - setup.corrupted_trace.mlp_post[last - 1])[0, start:]
        n = int(np.argmax(np.abs(exact)))
        naive_row = (
            setup.corrupted_trace.resid_after(last - 1)[:, start:] + d_post[:, n : n + 1] @ w.W_out[last - 1][n : n + 1]
        )
        naive = setup.score(setup.metric(w, fw.resume(w, naive_row, last, "pre", start, setup.corrupted_trace)))[0]
        assert abs(naive - exact[n]) > 1e-3
    if w.arch.parallel:
        exact = patching.patch_layer_totals(setup)["attn_out"][0]
        delta = (setup.clean_trace.attn_out[0] - setup.corrupted_trace.attn_out[0])[:, start:]
        with pytest.raises(ValueError, match="no 'mid' stage"):
            fw.resume(w, setup.corrupted_trace.resid_mid[0][:, start:] + delta, 0, "mid", start, setup.corrupted_trace)
        sequential = dataclasses.replace(w, arch=dataclasses.replace(w.arch, parallel=False))
        naive = setup.score(
            setup.metric(
                w,
                fw.resume(
                    sequential,
                    setup.corrupted_trace.resid_mid[0][:, start:] + delta,
                    0,
                    "mid",
                    start,
                    setup.corrupted_trace,
                ),
            )
        )[0]
        assert abs(naive - exact) > 1e-3


@torch.no_grad()
def test_ablations_and_attribution_run_and_verify(family):
    _, hf, _, model = family
    last = model.n_layers - 1
    zero = setup_for(model, "zero")
    effect = patching.neuron_effect(zero, last)
    # Zero-ablating every neuron of the last MLP, through a hook on the Hugging Face module:
    m = zero.metric
    expected = hf_logit_diff(
        hf, zero.clean.ids, m.answer, m.wrong, [(module(hf, last, "neurons"), "input", torch.zeros_like)]
    )
    assert effect.patched_logit_diff == pytest.approx(expected, abs=2e-4)
    setup = setup_for(model)
    approx = attribution.attribute(setup)
    best = attribution.find_top_neurons(setup, approx, top_k=5).best
    exact = patching.patch_neurons(setup, int(best.layer), [int(best.neuron)]).scores[0]
    assert best.exact == pytest.approx(exact, abs=1e-5)


def test_unsupported_architecture_names_the_families(tmp_path):
    from transformers import BloomConfig

    folder = save_random(tmp_path / "bloom", BloomConfig(n_layer=1, hidden_size=32, n_head=2, vocab_size=50257), 0)
    with pytest.raises(UserError) as err:
        load_model(str(folder), device="cpu")
    message = str(err.value)
    assert "'bloom'" in message and all(t in message for t in families.SUPPORTED_TYPES)
