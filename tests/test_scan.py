"""Corpus scan: activations equal TransformerLens's, bins equal pandas, examples are the argmax, resume is exact."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from core.corpus import scan
from core.corpus.sources import load_corpus
from core.errors import UserError

TEXTS = [
    "I climbed up the apple tree and picked an apple. Then I ate an orange and a pear.",
    "An owl is an animal that hunts at night. A cat is a pet; an elephant is not.",
    "The quick brown fox jumps over the lazy dog, again and again, until an hour has passed.",
] * 3


@pytest.fixture()
def corpus_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TNE_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(TEXTS)))
    return path


NEURONS = [(0, 3), (2, 17), (2, 5)]


@pytest.fixture(params=[None, 5], ids=["the batch at once", "5-position logit chunks"])
def logit_rows(request, monkeypatch):
    """The top-1 and the target's statistics are computed logit_rows positions at a time, across the batch's
    contexts: 5 splits every context and straddles their boundaries."""
    if request.param is not None:
        monkeypatch.setattr(scan, "logit_rows", lambda model: request.param)
    return request.param


@torch.no_grad()
def test_recorded_activations_equal_run_with_cache(tiny, corpus_file, logit_rows):
    seen = scan.records(tiny, scan.ScanSpec(NEURONS, 281, str(corpus_file), max_tokens=10_000, ctx=12, batch_size=3))
    data = seen.data
    contexts = scan.chunks(tiny, load_corpus(str(corpus_file)).texts, 12, 10_000)
    skip = 1 if tiny.prepend_bos else 0
    assert len(data["token"]) == sum(len(ids) - skip for _, ids in contexts)
    for chunk, (doc, ids) in enumerate(contexts):
        rows = data["chunk"] == chunk
        logits, cache = tiny.bridge.run_with_cache(torch.tensor([ids]))
        for column, (layer, neuron) in enumerate(NEURONS):
            expected = cache[f"blocks.{layer}.mlp.hook_post"][0, skip:, neuron]
            np.testing.assert_allclose(data["act"][rows, column], expected.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(data["top1"][rows], logits[0, skip:].argmax(-1).numpy())
        probs = logits[0, skip:].softmax(-1)[:, 281]
        np.testing.assert_allclose(data["prob"][rows], probs.numpy(), rtol=1e-4, atol=1e-7)
        np.testing.assert_array_equal(data["next"][rows], np.array(ids[skip + 1 :] + [-1]))
        assert (data["doc"][rows] == doc).all()


def test_bins_totals_and_examples_equal_a_direct_computation(tiny, corpus_file):
    target = 281  # ' an'
    result = scan.scan(
        tiny,
        scan.ScanSpec(
            NEURONS,
            target,
            str(corpus_file),
            max_tokens=10_000,
            bin_width=0.25,
            top_examples=5,
            window=3,
            ctx=12,
            batch_size=3,
        ),
    )
    data = scan.records(tiny, scan.ScanSpec(NEURONS, target, str(corpus_file), 10_000, ctx=12, batch_size=3)).data
    for column, (layer, neuron) in enumerate(NEURONS):
        s = result.neurons[f"L{layer}.N{neuron}"]
        frame = pd.DataFrame(
            {"act": data["act"][:, column], "top1": data["top1"] == target, "next": data["next"] == target}
        )
        frame["lo"] = np.floor(frame.act / 0.25) * 0.25
        expected = (
            frame.groupby("lo")
            .agg(count=("top1", "size"), top1_share=("top1", "mean"), true_next_share=("next", "mean"))
            .reset_index()
        )
        np.testing.assert_allclose(s.bins.lo, expected.lo, atol=1e-9)
        np.testing.assert_array_equal(s.bins["count"], expected["count"])
        np.testing.assert_allclose(s.bins.top1_share, expected.top1_share)
        np.testing.assert_allclose(s.bins.true_next_share, expected.true_next_share)
        assert s.bins["count"].sum() == s.totals["positions"] == len(frame)
        assert s.totals["target_true_next"] == int(frame.next.sum()) > 0
        assert s.totals["target_top1"] == int(frame.top1.sum())
        # max-activating examples: the true top positions, highest first, with their own activation in focus
        top = np.sort(frame.act.to_numpy())[::-1][:5]
        np.testing.assert_allclose(s.examples.activation, top, rtol=1e-6)
        for ex in s.examples.itertuples():
            assert ex.token_activations[ex.focus] == pytest.approx(ex.activation)
            assert len(ex.tokens) == len(ex.token_activations) <= 7
        assert s.correlation["logit"] == pytest.approx(np.corrcoef(frame.act, data["logit"])[0, 1], abs=1e-6)


def test_interrupted_scan_resumes_to_identical_results(tiny, corpus_file):
    spec = scan.ScanSpec(dataset=str(corpus_file), neurons=NEURONS, target=281, max_tokens=10_000, ctx=12, batch_size=2)
    reference = scan.scan(tiny, spec, use_cache=False).to_json()
    calls = []

    def stop_after_two(done, total):
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scan.scan(tiny, spec, progress=stop_after_two)
    recomputed = []
    resumed = scan.scan(tiny, spec, progress=lambda d, t: recomputed.append(d))
    assert resumed.to_json() == reference
    assert recomputed[-1] == reference["positions"]


@pytest.mark.parametrize("per_forward", [1, 2, 7])
def test_forwards_sized_by_memory_give_the_same_parts(tiny, corpus_file, monkeypatch, per_forward):
    """Parts on disk are plan batches whatever the memory allows: a forward of 1 or 2 contexts (a part in several
    forwards) or of 7 (two parts of 3 in one forward, then a part alone) saves the same records, and a scan
    resumed from parts written with another forward size reads them back."""
    spec = scan.ScanSpec(NEURONS, 281, str(corpus_file), max_tokens=10_000, ctx=12, batch_size=3)
    reference = scan.records(tiny, spec, use_cache=False).data
    monkeypatch.setattr(scan, "forward_contexts", lambda model, ctx, layers: per_forward)
    written = scan.plan(tiny, spec)
    assert len(written.batches) > 3
    seen = scan.records(tiny, spec).data
    for name in scan.PART_FIELDS:
        np.testing.assert_allclose(seen[name], reference[name], rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(seen["top1"], reference["top1"])
    for index in range(len(written.batches)):
        part = written.cached_part(index)
        assert part is not None and set(part["chunk"]) == set(range(3 * index, 3 * index + len(written.batches[index])))
    written.part_path(1).unlink()  # resumed with another forward size: the rest is read back, part 1 recomputed
    monkeypatch.setattr(scan, "forward_contexts", lambda model, ctx, layers: 8)
    resumed = scan.records(tiny, spec).data
    for name in scan.PART_FIELDS:
        np.testing.assert_allclose(resumed[name], reference[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_forward_contexts_follow_the_memory_budget(tiny, monkeypatch):
    """A scan forward holds what TNE_MEMORY_BUDGET_MB leaves after the weights, at most 2048 CPU tokens."""
    assert scan.forward_contexts(tiny, 256, 3) == 8
    w = tiny.weights
    per_context = 64 * (scan.memory.forward_bytes_per_token(w, 64) + 3 * w.d_mlp * scan.memory.element_bytes(w))
    held = scan.memory.held_bytes(w)
    monkeypatch.setenv("TNE_MEMORY_BUDGET_MB", str((held + 5 * per_context + per_context // 2) / 2**20))
    assert scan.forward_contexts(tiny, 64, 3) == 5
    monkeypatch.setenv("TNE_MEMORY_BUDGET_MB", str((held + 10) / 2**20))
    assert scan.forward_contexts(tiny, 64, 3) == 1  # a context over the budget still runs, alone


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda p: p / "missing.jsonl", "does not exist"),
        (lambda p: (p / "empty.txt").write_text("") or p / "empty.txt", "is empty"),
        (lambda p: (p / "blank.txt").write_text("\n  \n") and p / "blank.txt", "is empty"),
        (lambda p: (p / "bin.txt").write_bytes(b"\x00\x01\x02" * 100) and p / "bin.txt", "looks binary"),
        (lambda p: (p / "latin.txt").write_bytes("caf\xe9 ".encode("latin-1") * 50) and p / "latin.txt", "not UTF-8"),
        (
            lambda p: (p / "notext.jsonl").write_text('{"body": "x", "title": "y"}\n') and p / "notext.jsonl",
            "found columns: body, title",
        ),
        (lambda p: (p / "data.xml").write_text("<a/>") and p / "data.xml", "unknown type"),
    ],
)
def test_bad_corpora_are_refused(tiny, tmp_path, make, needle):
    path = make(tmp_path)
    with pytest.raises(UserError, match=needle):
        scan.scan(tiny, scan.ScanSpec([(0, 1)], 281, str(path), max_tokens=100))


def test_bad_scan_settings_are_refused(tiny, corpus_file):
    for kwargs, needle in [
        ({"max_tokens": 0}, "token budget 0"),
        ({"max_tokens": 10**12}, "out of range"),
        ({"neurons": [(9, 1)]}, "layer 9"),
        ({"neurons": []}, "no neurons"),
        ({"target": -1}, "target id"),
        ({"bin_width": 0}, "bin width"),
        ({"ctx": 4}, "context length"),
    ]:
        args = dict(dataset=str(corpus_file), neurons=[(0, 1)], target=281, max_tokens=100) | kwargs
        with pytest.raises(UserError, match=needle):
            scan.scan(tiny, scan.ScanSpec(**args))


def test_hosted_scan_caps(tiny, corpus_file, monkeypatch):
    monkeypatch.setenv("TNE_HOSTED", "1")
    monkeypatch.setenv("TNE_MAX_SCAN_NEURONS", "2")
    with pytest.raises(UserError, match="3 neurons given; this demo scans at most 2 at once"):
        scan.records(tiny, scan.ScanSpec(NEURONS, 281, None, 100, ctx=12))
    with pytest.raises(UserError, match="top examples must be 1..20"):
        scan.check_view(scan.ScanSpec(NEURONS, 281, bin_width=0.5, top_examples=21, window=3))
    monkeypatch.delenv("TNE_HOSTED")
    with pytest.raises(UserError, match=r"more than 1000 bins; use a width of at least"):
        scan.scan(
            tiny,
            scan.ScanSpec(NEURONS[:1], 281, str(corpus_file), max_tokens=200, bin_width=1e-6, ctx=12),
            use_cache=False,
        )


def test_bundled_corpus_is_real_text():
    corpus = load_corpus()
    assert len(corpus.texts) == 41 and "State of the Union" in corpus.description + corpus.texts[0]
    assert sum(len(t) for t in corpus.texts) > 1_000_000
