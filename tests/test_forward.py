"""Cross-implementation: our hook-free forward equals TransformerLens's bridge and Hugging Face's own forward."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from core.engine import forward as fw
from core.engine import tokens
from core.engine.model import load_model
from core.story import CLEAN, CORRUPTED

HOOKS = {
    "resid_pre": "blocks.{}.hook_resid_pre",
    "attn_out": "blocks.{}.hook_attn_out",
    "mlp_out": "blocks.{}.hook_mlp_out",
    "mlp_post": "blocks.{}.mlp.hook_post",
    "z": "blocks.{}.attn.hook_z",
}


def centred(logits: torch.Tensor) -> torch.Tensor:
    """center_unembed shifts every logit of a position by one constant; compare up to it."""
    return logits - logits.mean(-1, keepdim=True)


def assert_close(ours: torch.Tensor, ref: torch.Tensor, rel: float) -> None:
    scale = ref.abs().max().clamp_min(1e-6)
    assert ((ours - ref).abs().max() / scale) < rel, f"max rel err {((ours - ref).abs().max() / scale):.2e}"


@torch.no_grad()
def test_every_activation_matches_the_bridge(tiny):
    ids = tokens.prompt(tiny, CLEAN).tensor(tiny.device)
    trace = fw.run(tiny.weights, ids)
    ref_logits, cache = tiny.bridge.run_with_cache(ids)
    assert_close(fw.unembed(tiny.weights, trace.resid_final), ref_logits, 1e-5)
    for name, hook in HOOKS.items():
        for layer in range(tiny.n_layers):
            ours = getattr(trace, name)[layer]
            assert_close(ours, cache[hook.format(layer)].reshape(ours.shape), 1e-5)


@pytest.mark.parametrize("processing", ["none", "tl-default"])
@torch.no_grad()
def test_logits_match_hugging_face(gpt2_folder, llama_folder, processing):
    for folder in (gpt2_folder, llama_folder):
        model = load_model(str(folder), device="cpu", processing=processing)
        ids = tokens.prompt(model, CLEAN).tensor(model.device)
        ours = fw.unembed(model.weights, fw.run(model.weights, ids).resid_final)
        hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
        assert_close(centred(ours), centred(hf(ids).logits), 1e-5)


@torch.no_grad()
def test_embedded_logits_match_hugging_face(embedded):
    from core.engine.model import embedded_folder

    ids = tokens.prompt(embedded, CLEAN).tensor(embedded.device)
    ours = fw.unembed(embedded.weights, fw.run(embedded.weights, ids).resid_final)
    hf = AutoModelForCausalLM.from_pretrained(embedded_folder(), attn_implementation="eager").eval()
    ref = hf(ids).logits
    assert_close(centred(ours), centred(ref), 1e-5)
    # The post's probabilities in miniature, as measured on SmolLM2 (README): P(" an") ≈ 0.607, P(" a") ≈ 0.297.
    probs = ref[0, -1].softmax(-1)
    assert probs[354].item() == pytest.approx(0.607, abs=0.005)
    assert probs[253].item() == pytest.approx(0.297, abs=0.005)


@pytest.mark.parametrize("layer,stage", [(0, "pre"), (1, "mid"), (2, "pre"), (2, "mid")])
@torch.no_grad()
def test_resume_from_the_middle_equals_the_full_run(tiny, layer, stage):
    clean, corrupted = tokens.pair(tiny, CLEAN, CORRUPTED)
    start = tokens.first_difference(clean, corrupted)
    w = tiny.weights
    clean_trace = fw.run(w, clean.tensor(tiny.device))
    corrupted_trace = fw.run(w, corrupted.tensor(tiny.device))
    resid = (clean_trace.resid_pre if stage == "pre" else clean_trace.resid_mid)[layer][:, start:]
    # Prefix keys/values come from the corrupted run: before `start` the two runs are identical.
    final = fw.resume(w, resid, layer, stage, start, corrupted_trace)
    assert_close(final, clean_trace.resid_final[:, -1], 1e-5)
    with pytest.raises(ValueError):
        fw.resume(w, resid, layer, "post", start, corrupted_trace)
