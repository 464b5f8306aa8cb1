"""Patching: identities, and equality with the one-forward-per-patch method run through TransformerLens hooks."""

import dataclasses

import numpy as np
import pytest
import torch

from core.analyses import patching
from core.analyses import screen as bf16
from core.engine import forward as fw
from core.engine import tokens
from core.errors import UserError
from core.story import CLEAN, CORRUPTED

ANSWER, WRONG = " an", " a"


def setup_for(model, clean=CLEAN, corrupted=CORRUPTED, ablation="clean"):
    c, k = tokens.pair(model, clean, corrupted)
    return patching.prepare(
        model, c, k, tokens.single_token(model, ANSWER), tokens.single_token(model, WRONG), ablation
    )


def hooked_logit_diff(setup, hooks, ids) -> float:
    """The reference: a full TransformerLens forward with hooks (the post's one-pass-per-patch method)."""
    logits = setup.model.bridge.run_with_hooks(ids, fwd_hooks=hooks)
    return float(logits[0, -1, setup.metric.answer] - logits[0, -1, setup.metric.wrong])


def reference_score(setup, hook_name, edit):
    """Patch via a hook on the base run; edit(tensor, clean_value) → patched tensor."""
    clean_cache = setup.model.bridge.run_with_cache(setup.clean.tensor(setup.model.device))[1]
    base_prompt = setup.corrupted if setup.ablation == "clean" else setup.clean

    def hook(tensor, hook):
        return edit(tensor.clone(), clean_cache[hook_name].reshape(tensor.shape))

    patched = hooked_logit_diff(setup, [(hook_name, hook)], base_prompt.tensor(setup.model.device))
    return (patched - setup.base_logit_diff) / (setup.other_logit_diff - setup.base_logit_diff)


@torch.no_grad()
def test_layer_position_scores_equal_hooked_patching(tiny):
    setup = setup_for(tiny)
    result = patching.patch_layers(setup)
    P = len(setup.clean.ids)
    for kind, hook in [("resid_pre", "hook_resid_pre"), ("attn_out", "hook_attn_out"), ("mlp_out", "hook_mlp_out")]:
        for layer in range(tiny.n_layers):
            for pos in (setup.start_pos, P - 2, P - 1):

                def edit(t, clean, pos=pos):
                    t[:, pos] = clean[:, pos]
                    return t

                expected = reference_score(setup, f"blocks.{layer}.{hook}", edit)
                assert result.scores[kind][layer, pos] == pytest.approx(expected, abs=1e-4)
        if kind != "resid_pre":
            expected = reference_score(setup, f"blocks.{tiny.n_layers - 1}.{hook}", lambda t, clean: clean)
            assert result.all_positions[kind][tiny.n_layers - 1] == pytest.approx(expected, abs=1e-4)
    # Positions before the first difference carry equal activations in both runs: exactly 0.
    assert np.all(result.scores["resid_pre"][:, : setup.start_pos] == 0)


@torch.no_grad()
def test_patch_nothing_is_corrupted_and_the_only_difference_is_everything(tiny):
    # Prompts that differ only in the last token: patching resid_pre there, at any layer, restores the clean run.
    setup = setup_for(tiny, "The cat sat on the mat and", "The cat sat on the mat or")
    result = patching.patch_layers(setup)
    assert np.allclose(result.scores["resid_pre"][:, -1], 1.0, atol=1e-4)
    assert np.all(result.scores["resid_pre"][:, :-1] == 0)
    # Patching nothing: resuming from the corrupted run's own residual, at every layer, gives the corrupted diff.
    w, base = tiny.weights, setup.corrupted_trace
    for layer in range(tiny.n_layers):
        for stage, resid in (("pre", base.resid_pre[layer]), ("mid", base.resid_mid[layer])):
            final = fw.resume(w, resid[:, setup.start_pos :], layer, stage, setup.start_pos, base)
            assert float(setup.metric(w, final)[0]) == pytest.approx(setup.corrupted_logit_diff, abs=1e-5)
    empty = patching.patch_neurons(setup, 0, neurons=[])
    assert empty.scores.size == 0 and empty.frame().empty


@torch.no_grad()
def test_layer_totals_run_once_per_setup_and_never_leak(tiny, monkeypatch):
    """The first chart's layer totals are reused by the neurons phase: one computation per Setup, copies handed out."""
    setup = setup_for(tiny)
    first = patching.patch_layer_totals(setup)
    expected = {kind: scores.copy() for kind, scores in first.items()}
    first["mlp_out"][:] = 99.0  # a caller editing its result must not change what the next phase reads
    calls = []
    real = patching.score_joins
    monkeypatch.setattr(patching, "score_joins", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = patching.patch_layer_totals(setup)
    assert not calls
    for kind in expected:
        np.testing.assert_array_equal(again[kind], expected[kind])
    # another Setup (a copy, another ablation) computes its own: the memo is never shared
    assert dataclasses.replace(setup).shared == {}
    zero = patching.patch_layer_totals(setup_for(tiny, ablation="zero"))
    assert len(calls) == 1 and not np.allclose(zero["mlp_out"], expected["mlp_out"])


@torch.no_grad()
def test_all_neurons_together_equal_mlp_out_and_batched_equals_loop(tiny):
    setup = setup_for(tiny)
    layers = patching.patch_layers(setup)
    for layer in range(tiny.n_layers):
        sweep = patching.patch_neurons(setup, layer)
        assert sweep.layer_score == pytest.approx(layers.all_positions["mlp_out"][layer], abs=1e-4)
        small_batches = patching.patch_neurons(setup, layer, max_batch_tokens=7)
        np.testing.assert_allclose(sweep.scores, small_batches.scores, atol=5e-5)  # fp32: batch shapes differ
    # Batched = the post's one-forward-per-neuron loop, through TransformerLens hooks.
    layer = tiny.n_layers - 2
    sweep = patching.patch_neurons(setup, layer)
    for n in list(np.argsort(-np.abs(sweep.scores))[:4]) + [0, tiny.d_mlp - 1]:

        def edit(t, clean, n=int(n)):
            t[..., n] = clean[..., n]
            return t

        expected = reference_score(setup, f"blocks.{layer}.mlp.hook_post", edit)
        assert sweep.scores[n] == pytest.approx(expected, abs=1e-4)


@torch.no_grad()
def test_head_scores_equal_hooked_patching(tiny):
    setup = setup_for(tiny)
    result = patching.patch_heads(setup, per_position=True)
    assert patching.patch_heads(setup).per_position is None  # per position only on request (P times the work)
    H = tiny.n_heads
    for layer in range(tiny.n_layers):
        for head in (0, H - 1):

            def edit_all(t, clean, head=head):
                v, c = t.view(*t.shape[:2], H, -1), clean.reshape(*t.shape[:2], H, -1)
                v[:, :, head] = c[:, :, head]
                return t

            expected = reference_score(setup, f"blocks.{layer}.attn.hook_z", edit_all)
            assert result.all_positions[layer, head] == pytest.approx(expected, abs=1e-4)
            for pos in (setup.start_pos, len(setup.clean.ids) - 1):

                def edit_one(t, clean, head=head, pos=pos):
                    v, c = t.view(*t.shape[:2], H, -1), clean.reshape(*t.shape[:2], H, -1)
                    v[:, pos, head] = c[:, pos, head]
                    return t

                expected = reference_score(setup, f"blocks.{layer}.attn.hook_z", edit_one)
                assert result.per_position[layer, head, pos] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("ablation", ["zero", "mean", "negate"])
@torch.no_grad()
def test_ablations_equal_hooked_ablations(tiny, ablation):
    setup = setup_for(tiny, ablation=ablation)
    layer = 1
    sweep = patching.patch_neurons(setup, layer)
    layers = patching.patch_layers(setup)
    for n in (0, 5):

        def edit(t, clean, n=n):
            if ablation == "zero":
                t[..., n] = 0
            elif ablation == "mean":
                t[..., n] = t[..., n].mean(dim=1, keepdim=True)
            else:
                t[..., n] = -t[..., n]
            return t

        expected = reference_score(setup, f"blocks.{layer}.mlp.hook_post", edit)
        assert sweep.scores[n] == pytest.approx(expected, abs=1e-4)
    # ablations start at position 0 (nothing is shared with another run); a patch at pos recomputes pos.. only
    for pos in (0, 2):

        def edit_pos(t, clean, pos=pos):
            if ablation == "zero":
                t[:, pos] = 0
            elif ablation == "mean":
                t[:, pos] = t.mean(dim=1)
            else:
                t[:, pos] = -t[:, pos]
            return t

        for kind, hook in (("attn_out", "hook_attn_out"), ("resid_pre", "hook_resid_pre")):
            expected = reference_score(setup, f"blocks.{layer}.{hook}", edit_pos)
            assert layers.scores[kind][layer, pos] == pytest.approx(expected, abs=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("ablation", ["clean", "zero"])
def test_screened_sweep_keeps_fp32_where_it_counts(tiny, monkeypatch, ablation):
    """The bfloat16 screen: verified rows equal the fp32 sweep, the rest are marked and close; nothing else moves."""
    setup = setup_for(tiny, ablation=ablation)
    layer = 1
    exact = patching.patch_neurons(setup, layer)
    assert exact.exact is None and exact.precision() == "fp32, every neuron"
    monkeypatch.setattr(bf16, "screen_pays", lambda device: True)
    monkeypatch.setattr(bf16, "SCREEN_VERIFY", 0)
    raw = patching.patch_neurons(setup, layer, screen=True)  # the bare screen: no row recomputed
    assert not raw.is_exact().any()
    monkeypatch.setattr(bf16, "SCREEN_VERIFY", 4)
    must = [int(np.argsort(np.abs(raw.scores))[0])]  # the smallest row: verified only because it is asked for
    got = patching.patch_neuron_sets(setup, {layer: None, 0: [3, 5]}, screen=True, verify={layer: must})
    sweep, mask = got[layer], got[layer].is_exact()
    chosen = set(np.argsort(-raw.scores)[:4]) | set(np.argsort(-np.abs(raw.scores))[:4]) | set(must)
    assert chosen <= set(np.flatnonzero(mask)) and not mask.all()
    # beyond those, only rows within twice the measured screen error of the best were recomputed
    margin = 2 * sweep.screen_error
    best, best_size = exact.scores[list(chosen)].max(), np.abs(exact.scores[list(chosen)]).max()
    extra = sorted(set(np.flatnonzero(mask)) - chosen)
    assert all(raw.scores[i] + margin >= best or abs(raw.scores[i]) + margin >= best_size for i in extra)
    np.testing.assert_array_equal(sweep.scores[~mask], raw.scores[~mask])
    np.testing.assert_allclose(sweep.scores[mask], exact.scores[mask], atol=1e-5)
    screened = np.abs(sweep.scores[~mask] - exact.scores[~mask])
    assert screened.max() > 1e-6  # they really are the bfloat16 screen's, not fp32 relabelled
    # the winners are found: no unverified row is better than the best verified one
    assert exact.scores.argmax() in set(np.flatnonzero(mask)) and np.abs(exact.scores).argmax() in set(
        np.flatnonzero(mask)
    )
    assert sweep.layer_score == pytest.approx(exact.layer_score, abs=1e-5)  # the whole-layer row stays fp32
    listed = patching.patch_neurons(setup, 0, neurons=[3, 5])
    assert got[0].exact is None and got[0].scores == pytest.approx(listed.scores, abs=1e-5)  # lists stay fp32
    assert "bfloat16" in sweep.precision() and sweep.frame().exact.sum() == mask.sum()
    monkeypatch.setattr(bf16, "screen_pays", lambda device: False)  # a GPU, a CPU without fast bf16
    assert patching.patch_neurons(setup, layer, screen=True).exact is None


def test_bad_patching_inputs_are_refused(tiny):
    with pytest.raises(UserError, match="same number of tokens"):
        tokens.pair(tiny, CLEAN, "short")
    with pytest.raises(UserError, match="same tokens"):
        tokens.pair(tiny, CLEAN, CLEAN)
    c, k = tokens.pair(tiny, CLEAN, CORRUPTED)
    an = tokens.single_token(tiny, ANSWER)
    with pytest.raises(UserError, match="same token"):
        patching.prepare(tiny, c, k, an, an)
    with pytest.raises(UserError, match="ablation"):
        patching.prepare(tiny, c, k, an, tokens.single_token(tiny, WRONG), "shuffle")
    setup = setup_for(tiny)
    with pytest.raises(UserError, match="layer 99 is out of range"):
        patching.patch_neurons(setup, 99)
    with pytest.raises(UserError, match="neurons must be in"):
        patching.patch_neurons(setup, 0, neurons=[tiny.d_mlp])
