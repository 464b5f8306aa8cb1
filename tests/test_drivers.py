"""What drives a neuron: the decomposition sums to the pre-activation(s) and equals one built from the bridge's
cached hooks; path patching equals a hooked two-pass reference (bridge hooks for GPT-2/Llama, torch hooks on the
Hugging Face modules elsewhere); attention patterns equal the bridge's hook_pattern / Hugging Face's eager
attention weights; a planted head ranks first; bad input answers with one line."""

import dataclasses

import numpy as np
import pytest
import torch

from core.analyses import drivers
from core.engine import forward as fw
from core.engine import tokens
from core.engine.model import Model, load_model
from core.errors import UserError
from tests.conftest import CLEAN, CORRUPTED, save_random
from tests.test_families import hf_capture, layer_modules, module, tiny_configs

ANSWER, WRONG = " an", " a"


def pair_of(model):
    clean, corrupted = tokens.pair(model, CLEAN, CORRUPTED)
    return clean, corrupted, tokens.single_token(model, ANSWER), tokens.single_token(model, WRONG)


def busiest_neuron(model, prompt, layer: int) -> int:
    """A neuron of `layer` whose activation moves most between clean and corrupted (so scores are far from 0)."""
    c, k, _, _ = pair_of(model)
    tc = fw.run(model.weights, c.tensor(model.device))
    tk = fw.run(model.weights, k.tensor(model.device))
    return int((tc.mlp_post[layer] - tk.mlp_post[layer])[0, -1].abs().argmax())


def check_sums(model, prompt, layer, neuron, position=None):
    """The contributions sum to the pre-activation(s), which give the neuron's activation in the trace."""
    result = drivers.decompose(model, prompt, layer, neuron, position)
    trace = fw.run(model.weights, prompt.tensor(model.device))
    for key, value in result.inputs.items():
        assert result.components[key].sum() == pytest.approx(value, abs=2e-4 * max(1, abs(value))), key
    expected = float(trace.mlp_post[layer][0, result.position, neuron])
    assert result.post_activation == pytest.approx(expected, abs=1e-4 * max(1, abs(expected)))
    assert result.components["first_order"].abs().is_monotonic_decreasing
    n_heads = model.n_heads * (layer if model.weights.arch.parallel else layer + 1)
    assert (result.components.kind == "head").sum() == n_heads
    assert (result.components.kind == "mlp").sum() == layer
    return result


# ---------------------------------------------------------------- decomposition


@torch.no_grad()
@pytest.mark.parametrize("processing", ["tl-default", "none"])
def test_contributions_sum_to_the_pre_activation_gpt2_llama(gpt2_folder, llama_folder, processing):
    for folder in (gpt2_folder, llama_folder):
        model = load_model(str(folder), device="cpu", processing=processing)
        prompt = tokens.prompt(model, CLEAN)
        for layer in range(model.n_layers):
            for position in (None, 3):
                check_sums(model, prompt, layer, busiest_neuron(model, prompt, layer), position)
        assert set(drivers.decompose(model, prompt, 0, 0).inputs) == (
            {"gate", "up"} if model.weights.arch.gated else {"in"}
        )


@torch.no_grad()
def test_contributions_equal_the_bridges_cached_hooks(tiny):
    """Built independently from run_with_cache: hook_z · W_O per head, hook_mlp_out, embeddings, ln2's hook_scale."""
    model, bridge = tiny, tiny.bridge
    prompt = tokens.prompt(model, CLEAN)
    cache = bridge.run_with_cache(prompt.tensor(model.device))[1]
    layer, p = model.n_layers - 1, len(prompt.ids) - 2
    neuron = busiest_neuron(model, prompt, layer)
    ours = drivers.decompose(model, prompt, layer, neuron, p).components.set_index("label")
    ln = model.weights.norm == "LN"
    scale = cache[f"blocks.{layer}.ln2.hook_scale"][0, p]
    cols = (
        [bridge.W_in[layer][:, neuron]]
        if bridge.W_gate is None
        else [
            bridge.W_gate[layer][:, neuron],
            bridge.W_in[layer][:, neuron],
        ]
    )
    cols_t = torch.stack(cols, -1)

    def through(v):
        return ((v - v.mean(-1, keepdim=True)) if ln else v) / scale @ cols_t

    expected = {"embed": through(cache["hook_embed"][0, p])}
    if "hook_pos_embed" in cache:
        expected["pos_embed"] = through(cache["hook_pos_embed"][0, p])
    for current in range(layer + 1):
        z = cache[f"blocks.{current}.attn.hook_z"][0, p]
        for h in range(model.n_heads):
            expected[f"L{current}.H{h}"] = through(z[h] @ bridge.W_O[current, h])
        if current < layer:
            expected[f"mlp{current}"] = through(cache[f"blocks.{current}.hook_mlp_out"][0, p])
    keys = ["gate", "up"] if bridge.W_gate is not None else ["in"]
    assert len(expected) == len(ours) - 1  # all but the bias row
    for label, value in expected.items():
        np.testing.assert_allclose(ours.loc[label, keys].to_numpy(float), value.numpy(), atol=2e-5, rtol=1e-4)
    # and the sums equal the bridge's own pre-activation hooks (TransformerLens: hook_pre = gate, hook_pre_linear = up)
    pre = float(cache[f"blocks.{layer}.mlp.hook_pre"][0, p, neuron])
    assert ours[keys[0]].sum() == pytest.approx(pre, abs=1e-4)
    if bridge.W_gate is not None and f"blocks.{layer}.mlp.hook_pre_linear" in cache:
        up = float(cache[f"blocks.{layer}.mlp.hook_pre_linear"][0, p, neuron])
        assert ours["up"].sum() == pytest.approx(up, abs=1e-4)


@pytest.fixture(scope="module", params=["gemma3_text", "olmo2", "gpt_neox", "gemma2", "qwen3"])
def family(request, tmp_path_factory):
    """(Hugging Face module, ours with processing 'none', ours with 'tl-default') for a family without a bridge."""
    from transformers import AutoModelForCausalLM

    folder = save_random(tmp_path_factory.mktemp(request.param), tiny_configs()[request.param], seed=3)
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    return hf, load_model(str(folder), device="cpu", processing="none"), load_model(str(folder), device="cpu")


@torch.no_grad()
def test_contributions_sum_on_every_switch(family):
    """Post-norms (frozen scale), no pre-norm (scale 1), parallel attention + MLP (own layer's heads left out)."""
    hf, raw, processed = family
    for model in (raw, processed):
        prompt = tokens.prompt(model, CLEAN)
        for layer in range(model.n_layers):
            neuron = busiest_neuron(model, prompt, layer)
            result = check_sums(model, prompt, layer, neuron)
            # the activation itself equals the Hugging Face MLP's down-projection input
            hf_post = hf_capture(hf, prompt.ids, module(hf, layer, "neurons"), "input")[0, -1, neuron]
            assert result.post_activation == pytest.approx(float(hf_post), abs=1e-4 * max(1, abs(float(hf_post))))
            if not model.weights.arch.pre_norms:
                assert result.norm_scale == 1.0


# ---------------------------------------------------------------- path patching


def _bridge_two_pass(model: Model, setup_pair, layer, neuron, label) -> tuple[float, float]:
    """The notebook way through the bridge's hooks: pass 1 adds the component's clean − corrupted output to the
    MLP's input (ln2.hook_in) only and reads the neuron; pass 2 puts that activation into the corrupted run."""
    bridge = model.bridge
    clean, corrupted, answer, wrong = setup_pair
    c_cache = bridge.run_with_cache(clean.tensor(model.device))[1]
    k_cache = bridge.run_with_cache(corrupted.tensor(model.device))[1]
    if label == "embed":
        delta = c_cache["hook_embed"] - k_cache["hook_embed"]
    elif label.startswith("mlp"):
        m = int(label[3:])
        delta = c_cache[f"blocks.{m}.hook_mlp_out"] - k_cache[f"blocks.{m}.hook_mlp_out"]
    else:
        lay, h = (int(x) for x in label[1:].split(".H"))
        dz = (c_cache[f"blocks.{lay}.attn.hook_z"] - k_cache[f"blocks.{lay}.attn.hook_z"])[:, :, h]
        delta = dz @ bridge.W_O[lay, h]
    box = []

    def add(t, hook):
        return t + delta

    def read(t, hook):
        box.append(t[..., neuron].clone())

    ids = corrupted.tensor(model.device)
    bridge.run_with_hooks(
        ids, fwd_hooks=[(f"blocks.{layer}.ln2.hook_in", add), (f"blocks.{layer}.mlp.hook_post", read)]
    )

    def put(t, hook):
        t = t.clone()
        t[..., neuron] = box[0]
        return t

    logits = bridge.run_with_hooks(ids, fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", put)])[0, -1]
    clean_act = c_cache[f"blocks.{layer}.mlp.hook_post"][0, -1, neuron]
    corr_act = k_cache[f"blocks.{layer}.mlp.hook_post"][0, -1, neuron]
    ld = lambda lg: float(lg[answer] - lg[wrong])  # noqa: E731
    clean_ld = ld(bridge(clean.tensor(model.device))[0, -1])
    corr_ld = ld(bridge(ids)[0, -1])
    return (
        float((box[0][0, -1] - corr_act) / (clean_act - corr_act)),
        (ld(logits) - corr_ld) / (clean_ld - corr_ld),
    )


@torch.no_grad()
def test_path_patching_equals_the_hooked_two_pass_reference_bridge(tiny):
    pair = pair_of(tiny)
    layer = tiny.n_layers - 1
    neuron = busiest_neuron(tiny, pair[0], layer)
    result = drivers.drivers(tiny, pair[0], layer, neuron, pair=pair)
    frame = result.path_patching.set_index("label")
    assert np.abs(frame.neuron_restored).max() > 0.05  # effects far from zero: the comparison can fail
    checked = list(frame.index[:3]) + ["embed", "mlp0", f"L{layer}.H0"]
    for label in checked:
        neuron_ref, ld_ref = _bridge_two_pass(tiny, pair, layer, neuron, label)
        assert frame.loc[label, "neuron_restored"] == pytest.approx(neuron_ref, abs=2e-4), label
        assert frame.loc[label, "logit_diff_restored"] == pytest.approx(ld_ref, abs=2e-4), label


def _hf_mlp_input_module(hf, layer: int):
    """The Hugging Face module whose input is the residual stream the MLP of `layer` reads (before its norm)."""
    block = layer_modules(hf)[layer]
    for name in ("pre_feedforward_layernorm",):  # Gemma 2/3
        if hasattr(block, name):
            return getattr(block, name)
    if hasattr(block, "use_parallel_residual"):  # GPT-NeoX: the MLP's norm reads resid_pre
        return block.post_attention_layernorm
    if not hasattr(block, "input_layernorm"):  # OLMo 2: no pre-norm, the MLP reads the residual itself
        return block.mlp
    return block.post_attention_layernorm


def _hf_two_pass(hf, setup_pair, layer, neuron, label) -> tuple[float, float]:
    clean, corrupted, answer, wrong = setup_pair
    block_of = layer_modules(hf)
    if label.startswith("mlp"):
        m = int(label[3:])
        mod = module(hf, m, "mlp_out")
        delta = hf_capture(hf, clean.ids, mod, "output") - hf_capture(hf, corrupted.ids, mod, "output")
    else:
        lay, h = (int(x) for x in label[1:].split(".H"))
        o_proj = module(hf, lay, "z")
        hd = o_proj.weight.shape[1] // hf.config.num_attention_heads
        dz = hf_capture(hf, clean.ids, o_proj, "input") - hf_capture(hf, corrupted.ids, o_proj, "input")
        change = dz[..., h * hd : (h + 1) * hd] @ o_proj.weight[:, h * hd : (h + 1) * hd].T
        block = block_of[lay]
        if hasattr(block, "post_feedforward_layernorm"):  # a post-attention norm: recompute it on the change
            pre = hf_capture(hf, corrupted.ids, o_proj, "output")
            norm = block.post_attention_layernorm
            delta = norm(pre + change) - norm(pre)
        else:
            delta = change
    target, neurons = _hf_mlp_input_module(hf, layer), module(hf, layer, "neurons")
    box = []
    h1 = target.register_forward_pre_hook(lambda m, args: (args[0] + delta, *args[1:]))
    h2 = neurons.register_forward_pre_hook(lambda m, args: box.append(args[0][..., neuron].clone()))
    try:
        hf(torch.tensor([corrupted.ids]))
    finally:
        h1.remove()
        h2.remove()

    def put(m, args):
        x = args[0].clone()
        x[..., neuron] = box[0]
        return (x, *args[1:])

    h3 = neurons.register_forward_pre_hook(put)
    try:
        patched = hf(torch.tensor([corrupted.ids])).logits[0, -1]
    finally:
        h3.remove()
    ld = lambda lg: float(lg[answer] - lg[wrong])  # noqa: E731
    clean_ld, corr_ld = (
        ld(hf(torch.tensor([clean.ids])).logits[0, -1]),
        ld(hf(torch.tensor([corrupted.ids])).logits[0, -1]),
    )
    c_act = hf_capture(hf, clean.ids, neurons, "input")[0, -1, neuron]
    k_act = hf_capture(hf, corrupted.ids, neurons, "input")[0, -1, neuron]
    return float((box[0][0, -1] - k_act) / (c_act - k_act)), (ld(patched) - corr_ld) / (clean_ld - corr_ld)


@torch.no_grad()
def test_path_patching_equals_hooked_hugging_face(family):
    hf, raw, _ = family
    pair = pair_of(raw)
    layer = raw.n_layers - 1
    neuron = busiest_neuron(raw, pair[0], layer)
    frame = drivers.drivers(raw, pair[0], layer, neuron, pair=pair).path_patching.set_index("label")
    assert np.abs(frame.neuron_restored).max() > 0.05
    own_layer_head = f"L{layer}.H1"
    if raw.weights.arch.parallel:  # the MLP reads resid_pre: its own layer's heads are not upstream
        assert own_layer_head not in frame.index and f"L{layer - 1}.H1" in frame.index
    checked = [x for x in frame.index[:3] if x != "embed"] + ["mlp0", "L0.H0", f"L{layer - 1}.H2"]
    if not raw.weights.arch.parallel:
        checked.append(own_layer_head)
    for label in checked:
        neuron_ref, ld_ref = _hf_two_pass(hf, pair, layer, neuron, label)
        assert frame.loc[label, "neuron_restored"] == pytest.approx(neuron_ref, abs=5e-4), label
        assert frame.loc[label, "logit_diff_restored"] == pytest.approx(ld_ref, abs=5e-4), label


@torch.no_grad()
def test_every_path_together_is_the_clean_input(tiny):
    """Σ of the path deltas = clean − corrupted input; with all of them the neuron is its clean self."""
    from core.analyses import patching

    pair = pair_of(tiny)
    setup = patching.prepare(tiny, *pair)
    layer = tiny.n_layers - 1
    paths = drivers._path_deltas(setup, layer)
    start = setup.start_pos
    total = drivers.neuron_input(tiny, setup.clean_trace, layer) - drivers.neuron_input(
        tiny, setup.corrupted_trace, layer
    )
    torch.testing.assert_close(paths.deltas.sum(0), total[0, start:], atol=1e-4, rtol=1e-4)
    neuron = busiest_neuron(tiny, pair[0], layer)
    whole = patching.patch_neurons(setup, layer, [neuron]).scores[0]
    # neuron_restored of a single component plus the rest is not additive, but the neuron patched to its clean
    # value everywhere (what "every path" gives) is the neuron patching score.
    reader = drivers._Reader(tiny, layer, neuron)
    clean_post = reader.activation(reader.exact(drivers.neuron_input(tiny, setup.clean_trace, layer)))[0]
    np.testing.assert_allclose(
        clean_post[start:].numpy(), setup.clean_trace.mlp_post[layer][0, start:, neuron].numpy(), atol=1e-5
    )
    assert np.isfinite(whole)


# ---------------------------------------------------------------- attention patterns


@torch.no_grad()
def test_patterns_equal_the_bridges_hook_pattern(tiny):
    prompt = tokens.prompt(tiny, CLEAN)
    cache = tiny.bridge.run_with_cache(prompt.tensor(tiny.device))[1]
    for layer in range(tiny.n_layers):
        for head in range(tiny.n_heads):
            ours = drivers.attention_pattern(tiny, prompt, layer, head).pattern
            theirs = cache[f"blocks.{layer}.attn.hook_pattern"][0, head].numpy()
            np.testing.assert_allclose(ours, theirs, atol=1e-5)


@torch.no_grad()
def test_patterns_equal_hugging_face_eager_attention(family):
    """Windows, soft-caps, QK-norms, partial rotary: the weights Hugging Face's eager attention returns."""
    hf, raw, processed = family
    prompt = tokens.prompt(raw, CLEAN)
    reference = hf(torch.tensor([prompt.ids]), output_attentions=True).attentions
    for model in (raw, processed):
        for layer in range(model.n_layers):
            for head in range(model.n_heads):
                result = drivers.attention_pattern(model, prompt, layer, head)
                np.testing.assert_allclose(result.pattern, reference[layer][0, head].numpy(), atol=1e-5)
                np.testing.assert_allclose(result.pattern.sum(-1), 1.0, atol=1e-5)
                if result.window is not None:  # nothing beyond the window
                    q, k = np.indices(result.pattern.shape)
                    assert np.all(result.pattern[(q - k) >= result.window] < 1e-12)


@torch.no_grad()
def test_reads_from_sums_to_the_heads_contribution(tiny):
    prompt = tokens.prompt(tiny, CLEAN)
    layer = tiny.n_layers - 1
    neuron = busiest_neuron(tiny, prompt, layer)
    result = drivers.drivers(tiny, prompt, layer, neuron, reads_from_heads=3)
    components = result.components.set_index("label")
    assert len(result.reads_from) == 3
    for label, frame in result.reads_from.items():
        for key in result.keys:
            assert frame[key].sum() == pytest.approx(components.loc[label, key], abs=1e-4)
        assert frame.attention.sum() == pytest.approx(1.0, abs=1e-5)
        assert len(frame) == len(prompt.ids)


@torch.no_grad()
def test_reads_from_behind_a_post_norm_sums_too(family):
    _, raw, _ = family
    prompt = tokens.prompt(raw, CLEAN)
    layer = raw.n_layers - 1
    neuron = busiest_neuron(raw, prompt, layer)
    result = drivers.drivers(raw, prompt, layer, neuron, position=-2, reads_from_heads=2)
    components = result.components.set_index("label")
    for label, frame in result.reads_from.items():
        for key in result.keys:
            assert frame[key].sum() == pytest.approx(components.loc[label, key], abs=1e-4)


@torch.no_grad()
def test_upstream_neurons_sum_to_the_mlps_contribution(tiny):
    prompt = tokens.prompt(tiny, CLEAN)
    layer = tiny.n_layers - 1
    result = drivers.decompose(tiny, prompt, layer, busiest_neuron(tiny, prompt, layer))
    frame = drivers.upstream_neurons(result, tiny, 1, top_k=tiny.d_mlp)
    mlp = result.components.set_index("label").loc["mlp1"]
    bias_part = drivers._Reader(tiny, layer, result.neuron).linear(
        tiny.weights.b_out[1],
        drivers._Reader(tiny, layer, result.neuron).scale(
            drivers.neuron_input(tiny, fw.run(tiny.weights, prompt.tensor(tiny.device)), layer)[0, -1]
        ),
    )
    for i, key in enumerate(result.keys):
        assert frame[key].sum() + float(bias_part[i]) == pytest.approx(mlp[key], abs=1e-4)


# ---------------------------------------------------------------- planted truth


@torch.no_grad()
def test_a_planted_head_ranks_first(gpt2_folder):
    """Head L1.H2's output projection is made to write along the neuron's input direction: it must lead both the
    decomposition and path patching (its clean/corrupted outputs differ once it writes strongly)."""
    model = load_model(str(gpt2_folder), device="cpu")
    layer, neuron, planted = 2, 7, (1, 2)
    w = model.weights
    direction = w.W_in[layer][:, neuron] / w.W_in[layer][:, neuron].norm()
    W_O = w.W_O.clone()
    v = torch.randn(w.d_head, generator=torch.Generator().manual_seed(0))
    W_O[planted] = 10 * v[:, None] * direction[None, :]
    rigged = dataclasses.replace(model, weights=dataclasses.replace(w, W_O=W_O))
    prompt = tokens.prompt(rigged, CLEAN)
    if drivers.decompose(rigged, prompt, layer, neuron).components.set_index("label").loc["L1.H2", "in"] < 0:
        W_O[planted] *= -1  # excite the neuron (GELU is flat far below 0)
    result = drivers.drivers(rigged, prompt, layer, neuron, pair=pair_of(rigged))
    assert result.components.label.iloc[0] == "L1.H2"
    assert result.path_patching.label.iloc[0] == "L1.H2"


# ---------------------------------------------------------------- the embedded models


@torch.no_grad()
def test_embedded_an_neuron_sums_and_path_patches(embedded):
    from core import story

    prompt = tokens.prompt(embedded, story.CLEAN)
    layer, neuron = story.KNOWN_NEURONS[embedded.name]
    result = check_sums(embedded, prompt, layer, neuron)
    assert set(result.inputs) == {"gate", "up"} and result.post_activation > 0.5
    full = drivers.drivers(embedded, prompt, layer, neuron, pair=pair_of(embedded), reads_from_heads=1)
    paths = full.path_patching
    assert len(paths) == 1 + embedded.n_heads * (layer + 1) + layer
    assert paths.neuron_restored.iloc[0] > 0.1 and paths.neuron_restored.iloc[0] == paths.neuron_restored.max()


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call,needle",
    [
        (lambda m, p: drivers.decompose(m, p, 0, 10_000), "neuron 10000 is out of range"),
        (lambda m, p: drivers.decompose(m, p, 9, 0), "layer 9 is out of range"),
        (lambda m, p: drivers.decompose(m, p, 0, 0, position=500), "position 500 is outside the prompt"),
        (lambda m, p: drivers.decompose(m, p, 0, 0, position=-500), "position -500 is outside the prompt"),
        (lambda m, p: drivers.attention_pattern(m, p, 0, 4), "head 4 is out of range"),
        (lambda m, p: drivers.attention_pattern(m, p, 3, 0), "layer 3 is out of range"),
        (lambda m, p: drivers.parse_head(m, "x"), "head 'x' not understood"),
        (lambda m, p: drivers.reads_from(m, p, (2, 0), (1, 0)), "does not write into the input of L1.N0"),
        (lambda m, p: tokens.pair(m, CLEAN, CLEAN + " and more"), "same number of tokens"),
    ],
)
def test_bad_input_is_one_clear_line(gpt2_folder, call, needle):
    model = load_model(str(gpt2_folder), device="cpu")
    prompt = tokens.prompt(model, CLEAN)
    with pytest.raises(UserError) as err:
        call(model, prompt)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_first_order_is_the_gradient_times_the_contribution(llama_folder):
    model = load_model(str(llama_folder), device="cpu")
    prompt = tokens.prompt(model, CLEAN)
    result = drivers.decompose(model, prompt, 2, 5)
    g, u = result.inputs["gate"], result.inputs["up"]
    gt = torch.tensor(g, requires_grad=True)
    (d_gate,) = torch.autograd.grad(torch.nn.functional.silu(gt), gt)
    row = result.components.iloc[0]
    expected = float(d_gate) * u * row["gate"] + float(torch.nn.functional.silu(torch.tensor(g))) * row["up"]
    assert row["first_order"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
