"""The engine's analyses behind `st.cache_data`, keyed by the model's fingerprint and the inputs.

The model itself is passed as `_model` (Streamlit does not hash arguments whose name starts with "_"); the
fingerprint stands for it in the cache key. Inputs are plain text/ints: tokenizing inside is cheap and keeps the
cache key readable. A UserError raised inside is not cached and reaches the page, which shows its message.

Long analyses draw their own progress bar *inside* the cached function and remove it at the end: Streamlit replays
what a cached function drew, so a bar created outside and updated inside would break on a cache hit (and a
replayed bar is created and removed again: nothing shows). Heavy analyses wait for a slot of the process-wide
admission gate inside the cached function (ui/admission.py), so a cache hit never queues.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core import cache
from core.analyses import activations, atlas, congruence, cost, drivers, effects, lens, patching, predict, search
from core.analyses.patching import PatchInputs
from core.corpus import dashboards, rarity, scan
from core.engine import tokens
from core.engine.model import Model
from core.serving import jobs, worker
from ui import charts
from ui.admission import admitted


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """An st.progress for the engine's `progress(done, total)` callback; removed when the work is done."""
    bar = st.progress(0.0, text=f"{label}…")

    def update(done: int, total: int) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=f"{label}: {done}/{total}")

    try:
        yield update
    finally:
        bar.empty()


# ---------------------------------------------------------------- the disk layer

T = TypeVar("T")


def on_disk(analysis: str, fingerprint: str, params: dict[str, Any], compute: Callable[[], T]) -> T:
    """The result stored under (fingerprint, analysis, params) if the disk cache has it, else compute() stored there.

    A value the codec refuses, or a disk that refuses the write, leaves only the memory cache (st.cache_data)."""
    path = cache.key_path(fingerprint, analysis, params)
    hit = cache.load_object(path)
    if hit is not None:
        value, computed_at = hit
        if dataclasses.is_dataclass(value):
            object.__setattr__(value, "from_disk", computed_at)  # survives st.cache_data's copies (pickled)
        return value
    value = compute()
    try:
        cache.save_object(path, value)
    except (cache.Unencodable, OSError):
        pass
    return value


def from_disk(*results: Any) -> float | None:
    """When the earliest of these results was computed, if any of them was read back from the disk cache."""
    times = [t for r in results if (t := getattr(r, "from_disk", None)) is not None]
    return min(times) if times else None


def reopened_caption(*results: Any) -> None:
    """A small caption when a result on the page came from the disk cache, not from a computation just now."""
    when = from_disk(*results)
    if when is not None:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(when))
        st.caption(f"Reopened from the disk cache (computed {stamp}); not recomputed.")


# ---------------------------------------------------------------- predictions and logit lens


@dataclass
class LensView:
    prompt: tokens.Prompt
    answer_id: int
    wrong_id: int
    top: pd.DataFrame  # rank, token, id, prob, logit
    result: lens.LensResult


@st.cache_data(show_spinner="Running the logit lens…", max_entries=32)
def lens_view(_model: Model, fingerprint: str, text: str, answer: str, wrong: str, top_k: int = 10) -> LensView:
    prompt = tokens.prompt(_model, text)
    answer_id, wrong_id = tokens.answer_pair(_model, answer, wrong)

    def compute() -> LensView:
        top = predict.top_k(_model, predict.last_logits(_model, prompt), top_k)
        return LensView(prompt, answer_id, wrong_id, top, lens.logit_lens(_model, prompt, answer_id, wrong_id))

    params = {"text": text, "answer": answer, "wrong": wrong, "top_k": top_k}
    return on_disk("lens_view", fingerprint, params, compute)


@st.cache_resource(max_entries=32, show_spinner=False)
def lens_figures(_view: LensView, fingerprint: str, text: str, answer: str, wrong: str) -> tuple[go.Figure, ...]:
    """The Logit lens page's three charts (lens lines, DLA bars, per-head map) of lens_view(…same inputs), built
    once and shared by every session: Plotly validates every property as a figure is built, 40–65 ms of the ~160 ms
    the server spent on a load of this light page. st.plotly_chart copies a figure (to_dict) and never changes it, so
    sharing one is safe."""
    result = _view.result
    return (
        charts.lens_lines(result.layers, answer, wrong),
        charts.dla_bar(result.components),
        charts.heads_heatmap(result.heads, "logit_diff", "Direct logit attribution per head", "logit diff"),
    )


# ---------------------------------------------------------------- patching


@st.cache_data(show_spinner="Running clean and corrupted prompts…", max_entries=32)
def patch_summary(_model: Model, fingerprint: str, key: PatchInputs) -> dict:
    """Both runs and the conventions: the setup's to_json() (the head of `python -m core patch --json`)."""
    return on_disk("patch_summary", fingerprint, {"key": key}, lambda: jobs.patch_summary(_model, key))


def estimate_seconds(model: Model, key: PatchInputs, per_position_heads: bool = False) -> dict[str, float]:
    """Seconds each phase of the page should take here (core.analyses.cost)."""
    return cost.page_estimates(model, key, per_position_heads)


# The heavy phases run through core.serving.worker (a worker process on a hosted server), inside an admission slot.


@st.cache_data(show_spinner="Patching each layer's attention and MLP at all positions…", max_entries=32)
def patch_layer_totals(_model: Model, fingerprint: str, key: PatchInputs) -> dict[str, np.ndarray]:
    return on_disk(
        "patch_layer_totals", fingerprint, {"key": key}, lambda: worker.run(jobs.patch_layer_totals, _model, key)
    )


@st.cache_data(show_spinner=False, max_entries=16)
def patch_layers(_model: Model, fingerprint: str, key: PatchInputs) -> patching.LayerPatching:
    def compute() -> patching.LayerPatching:
        with admitted("patching layers × positions"), progress_bar("patching every layer × position") as progress:
            return worker.run(jobs.patch_layers, _model, key, progress=progress)

    return on_disk("patch_layers", fingerprint, {"key": key}, compute)


@st.cache_data(show_spinner=False, max_entries=16)
def patch_heads(_model: Model, fingerprint: str, key: PatchInputs, per_position: bool = False) -> patching.HeadPatching:
    label = "patching every head at each position" if per_position else "patching every head"

    def compute() -> patching.HeadPatching:
        with admitted("patching heads"), progress_bar(label) as progress:
            return worker.run(jobs.patch_heads, _model, key, per_position, progress=progress)

    return on_disk("patch_heads", fingerprint, {"key": key, "per_position": per_position}, compute)


NeuronsView = jobs.NeuronsView


@st.cache_data(show_spinner=False, max_entries=16)
def patch_top_neurons(_model: Model, fingerprint: str, key: PatchInputs, layer: int, top_k: int) -> NeuronsView:
    """Sweep `layer`; for clean patching also attribution over every neuron, verified exactly (shared sweeps)."""

    def compute() -> NeuronsView:
        with admitted("patching neurons"), progress_bar("patching neurons (batches)") as progress:
            return worker.run(jobs.patch_top_neurons, _model, key, layer, top_k, progress=progress)

    return on_disk("patch_top_neurons", fingerprint, {"key": key, "layer": layer, "top_k": top_k}, compute)


@st.cache_resource
def _completed() -> set[tuple]:
    """(fingerprint, inputs) whose whole Patching page has been computed in this server process."""
    return set()


def _completed_marker(fingerprint: str, key: Hashable):
    return cache.key_path(fingerprint, "patching_page_completed", {"key": key})


def mark_completed(fingerprint: str, key: Hashable) -> None:
    _completed().add((fingerprint, key))
    marker = _completed_marker(fingerprint, key)
    if not marker.exists():
        try:
            cache.save(marker, {"completed": np.ones(1, dtype=np.uint8)})
        except OSError:
            pass


def was_completed(fingerprint: str, key: Hashable) -> bool:
    """True when the page was computed for these inputs, by this server or (its marker on disk) by any server that
    shares the cache folder: its results are cached, so a reopened link shows them without a Run."""
    if (fingerprint, key) in _completed():
        return True
    if _completed_marker(fingerprint, key).exists():
        _completed().add((fingerprint, key))
        return True
    return False


# ---------------------------------------------------------------- congruence and activations


@st.cache_data(show_spinner=False, max_entries=64)
def neuron_tokens(
    _model: Model, fingerprint: str, layer: int, neuron: int, matrix: str, top_k: int
) -> congruence.NeuronTokens:
    return congruence.neuron_to_tokens(_model, layer, neuron, matrix, top_k)


@st.cache_data(show_spinner=False, max_entries=64)
def token_neurons(_model: Model, fingerprint: str, token: str, matrix: str, top_k: int) -> congruence.TokenNeurons:
    return congruence.token_to_neurons(_model, tokens.single_token(_model, token), matrix, top_k)


@st.cache_data(show_spinner=False, max_entries=64)
def neuron_activations(_model: Model, fingerprint: str, text: str, layer: int, neuron: int) -> pd.DataFrame:
    return activations.neuron_activations(_model, tokens.prompt(_model, text), layer, neuron)


# ---------------------------------------------------------------- what drives a neuron


@st.cache_data(show_spinner="Splitting the neuron's input over every upstream component…", max_entries=32)
def drivers_view(
    _model: Model,
    fingerprint: str,
    text: str,
    layer: int,
    neuron: int,
    position: int | None,
    corrupted: str | None,
    answer: str,
    wrong: str,
) -> drivers.Drivers:
    """The decomposition on `text`; with `corrupted`, path patching of the pair (text, corrupted) too (one
    batched pass: light enough to need no admission slot)."""
    prompt = tokens.prompt(_model, text)
    pair = PatchInputs(text, corrupted, answer, wrong).resolve(_model) if corrupted else None
    params = {
        "text": text,
        "layer": layer,
        "neuron": neuron,
        "position": position,
        "corrupted": corrupted,
        "answer": answer,
        "wrong": wrong,
    }
    return on_disk(
        "drivers_view",
        fingerprint,
        params,
        lambda: drivers.drivers(_model, prompt, layer, neuron, position, pair, reads_from_heads=3),
    )


@st.cache_data(show_spinner=False, max_entries=64)
def attention_view(_model: Model, fingerprint: str, text: str, layer: int, head: int) -> drivers.AttentionPattern:
    return drivers.attention_pattern(_model, tokens.prompt(_model, text), layer, head)


@st.cache_data(show_spinner=False, max_entries=64)
def reads_from_view(
    _model: Model, fingerprint: str, text: str, head: tuple[int, int], neuron: tuple[int, int], position: int | None
) -> pd.DataFrame:
    return drivers.reads_from(_model, tokens.prompt(_model, text), head, neuron, position)


@st.cache_data(show_spinner=False, max_entries=64)
def upstream_view(
    _model: Model, fingerprint: str, text: str, layer: int, neuron: int, position: int | None, mlp_layer: int
) -> pd.DataFrame:
    result = drivers.decompose(_model, tokens.prompt(_model, text), layer, neuron, position)
    return drivers.upstream_neurons(result, _model, mlp_layer, top_k=20)


# ---------------------------------------------------------------- search


@st.cache_data(show_spinner=False, max_entries=16)
def search_table(_model: Model, fingerprint: str, kind: str, matrix: str, top_k: int) -> pd.DataFrame:
    if search.is_cached(_model, matrix):  # read back from the disk cache: light work, no slot needed
        return search.search(_model, kind, matrix, top_k)
    with admitted("the search"), progress_bar("congruence of every neuron × token, in blocks") as progress:
        return worker.run(jobs.search_table, _model, kind, matrix, top_k, progress=progress)


# ---------------------------------------------------------------- corpus scan


@dataclass
class ScanView:
    neurons: dict[str, Any]  # label "L25.N1527" → NeuronScan (bins, totals, correlation, examples)
    payload: dict  # ScanResult.to_json()


@st.cache_data(show_spinner=False, max_entries=8)
def corpus_scan(
    _model: Model,
    fingerprint: str,
    corpus: str | None,
    neurons: tuple[tuple[int, int], ...],
    target: str,
    max_tokens: int,
    bin_width: float,
    top_examples: int,
    window: int,
    ray_address: str | None = None,
) -> ScanView:
    """ray_address: None = this process; "local" = a local Ray instance; else a Ray cluster address."""
    target_id = tokens.single_token(_model, target, "target")
    spec = scan.ScanSpec(
        neurons, target_id, corpus, max_tokens=max_tokens, bin_width=bin_width, top_examples=top_examples, window=window
    )
    with admitted("the corpus scan"), progress_bar("scanning the corpus (positions)") as progress:
        if ray_address is None:
            result = worker.run(jobs.corpus_scan, _model, spec, progress=progress)
        else:
            from core.corpus import distributed

            result = distributed.ray_scan(
                _model, spec, address=None if ray_address == "local" else ray_address, progress=progress
            )
    return ScanView(dict(result.neurons), result.to_json())


# ---------------------------------------------------------------- one prompt: the neurons that matter (Prompt, Home)


@st.cache_data(show_spinner="Telling the story on this model (a few seconds, once)…", max_entries=8)
def home_story(_model: Model, fingerprint: str) -> dict:
    """The Home page's captions' numbers on the picked model's own story pair (core.reproduce.home_story)."""
    from core import reproduce

    return reproduce.home_story(_model)


@st.cache_data(show_spinner=False, max_entries=32)
def position_predictions(_model: Model, fingerprint: str, text: str, top_k: int) -> tuple[tokens.Prompt, pd.DataFrame]:
    """The prompt's tokens, and the top-k next tokens after every position (one forward)."""
    prompt = tokens.prompt(_model, text)
    return prompt, predict.top_k_per_position(_model, prompt, top_k)


def built_dashboards(model: Model) -> dashboards.DashboardSpec | None:
    """The largest dashboards built for the model on the default corpus (not cached: a build made meanwhile, from
    the command line or the Neuron page, shows up on the next rerun)."""
    return dashboards.find_built(model)


@st.cache_resource(max_entries=2, show_spinner="Reading the built dashboards…")
def _dashboards(_model: Model, fingerprint: str, spec: dashboards.DashboardSpec) -> dashboards.Dashboards:
    return dashboards.build(_model, spec)


@st.cache_data(show_spinner="Direct effects of every neuron and head, exact totals of the top ones…", max_entries=32)
def top_neurons(
    _model: Model,
    fingerprint: str,
    text: str,
    answer: str | None,
    wrong: str | None,
    position: int | None,
    top_k: int,
    ablation: str,
    spec: dashboards.DashboardSpec | None,
) -> effects.Effects:
    """core.analyses.effects.top_neurons on the text; ablation "mean" reads the corpus means of `spec`'s built
    dashboards (None: none built, which the engine refuses with the command that builds them)."""
    prompt = tokens.prompt(_model, text)
    means = None
    if ablation == "mean" and spec is not None:
        means = rarity.corpus_means(rarity.require(_model, _dashboards(_model, fingerprint, spec)))
    # Not behind the gate (1.6 s here): queued, the Prompt page waited up to 700 s behind other visitors' corpus
    # scans in bench/load.py; in this process it took 8-17 s under the same load.
    return effects.top_neurons(
        _model,
        prompt,
        answer,
        wrong,
        position=position,
        top_k=top_k,
        ablation=ablation,  # type: ignore[arg-type]  # checked by top_neurons (a UserError names the valid ones)
        means=means,  # type: ignore[arg-type]
    )


@st.cache_data(show_spinner=False, max_entries=32)
def neuron_facts(_model: Model, fingerprint: str, neurons: tuple[tuple[int, int], ...]) -> pd.DataFrame:
    """Per neuron: its most and least congruent token (W_U, one matmul) and its atlas classes when the atlas is
    on disk (never starts the atlas pass): layer, neuron, top_token, top_congruence, bottom_token,
    bottom_congruence, atlas."""
    frame = congruence.extreme_tokens(_model, list(neurons))
    classes: list[str | None] = [None] * len(neurons)
    if atlas.is_cached(_model):
        built = atlas.atlas(_model)
        for i, (layer, neuron) in enumerate(neurons):
            row = atlas.neuron_row(built, layer, neuron)
            if row is not None:
                classes[i] = ", ".join(c for c in atlas.CLASSES if row[c]) or "—"
    return frame.assign(atlas=classes)


@st.cache_data(show_spinner="Reading each neuron's corpus histogram…", max_entries=16)
def unusual_neurons(
    _model: Model, fingerprint: str, text: str, spec: dashboards.DashboardSpec, per_token: int
) -> pd.DataFrame:
    """rarity.unusual_neurons of the text against `spec`'s built dashboards."""
    return rarity.unusual_neurons(
        _model, tokens.prompt(_model, text), _dashboards(_model, fingerprint, spec), per_token=per_token
    )
