"""The heavy analyses as jobs: module-level functions of (model, plain inputs) → picklable results.

The pages call them through core.serving.worker.run, which runs them in this process or, on a hosted server, in a
worker process (its own interpreter and GIL, see core/serving/worker.py). So everything here takes and returns plain
data: input
texts and numbers in, dataclasses of numpy arrays and DataFrames out; no Streamlit.

Patching inputs travel as one `patching.PatchInputs` (frozen, hashable); both runs of an input set are computed once
per process and shared by the page's phases (`setup`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from core.analyses import attribution, patching, search, steering
from core.analyses.patching import PatchInputs
from core.corpus import scan
from core.engine import tokens
from core.engine.model import Model
from core.progress import Progress

_SETUPS: OrderedDict[tuple[str, PatchInputs], patching.Setup] = OrderedDict()
_SETUPS_LOCK = threading.Lock()
SETUPS_KEPT = 4  # both runs of the last few input sets (one per visitor working on the page at the same time)


def setup(model: Model, key: PatchInputs) -> patching.Setup:
    """Both runs of one input set, computed once per process (read-only: the engine never mutates a Setup)."""
    with _SETUPS_LOCK:
        hit = _SETUPS.get((model.fingerprint, key))
        if hit is not None:
            _SETUPS.move_to_end((model.fingerprint, key))
            return hit
    made = key.prepare(model)
    with _SETUPS_LOCK:
        _SETUPS[(model.fingerprint, key)] = made
        while len(_SETUPS) > SETUPS_KEPT:
            _SETUPS.popitem(last=False)
    return made


def patch_summary(model: Model, key: PatchInputs) -> dict:
    """Both runs and the conventions: the setup's to_json() (the head of `python -m core patch --json`)."""
    return setup(model, key).to_json()


def patch_layer_totals(model: Model, key: PatchInputs, progress: Progress | None = None) -> dict[str, np.ndarray]:
    return patching.patch_layer_totals(setup(model, key))


def patch_layers(model: Model, key: PatchInputs, progress: Progress | None = None) -> patching.LayerPatching:
    return patching.patch_layers(setup(model, key), progress=progress)


def patch_heads(
    model: Model, key: PatchInputs, per_position: bool = False, progress: Progress | None = None
) -> patching.HeadPatching:
    return patching.patch_heads(setup(model, key), per_position=per_position, progress=progress)


@dataclass
class NeuronsView:
    """The Patching page's neuron results: the sweep of one layer and (clean patching) the top neuron anywhere."""

    sweep: patching.NeuronPatching
    top: attribution.TopNeurons | None  # None for ablations (attribution approximates clean patching only)
    attribution: np.ndarray | None  # [L, d_mlp]
    effect: patching.Effect  # the sweep's top neuron in absolute terms
    layer_effect: patching.Effect  # the whole swept layer in absolute terms


def patch_top_neurons(
    model: Model, key: PatchInputs, layer: int, top_k: int, progress: Progress | None = None
) -> NeuronsView:
    """Sweep `layer`; for clean patching also attribution over every neuron, verified exactly (shared sweeps).

    Full sweeps are screened in bfloat16 where that pays (their top rows fp32; every headline number is exact).
    """
    made = setup(model, key)
    totals = patching.patch_layer_totals(made)["mlp_out"]
    if made.ablation == "clean":
        approx = attribution.attribute(made)
        found = attribution.find_top_neurons(
            made, approx, top_k, layer_totals=totals, extra_sweeps=(layer,), progress=progress, screen=True
        )
        sweep, neurons = found.sweeps[layer], approx.neurons
    else:
        found, neurons = None, None
        sweep = patching.patch_neurons(made, layer, progress=progress, screen=True)
    best = int(sweep.winners(1).neuron.iloc[0])
    return NeuronsView(
        sweep, found, neurons, patching.neuron_effect(made, layer, best), patching.neuron_effect(made, layer)
    )


def search_table(model: Model, kind: str, matrix: str, top_k: int, progress: Progress | None = None) -> pd.DataFrame:
    return search.search(model, kind, matrix, top_k, progress=progress)  # type: ignore[arg-type]


def corpus_scan(model: Model, spec: scan.ScanSpec, progress: Progress | None = None) -> scan.ScanResult:
    return scan.scan(model, spec, progress=progress)


def steer(
    model: Model,
    prompt: str,
    specs: Sequence[str],
    positions: str,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seeds: Sequence[int],
    progress: Progress | None = None,
    on_event: Callable[[Any], None] | None = None,
) -> steering.SteerResult:
    """Baseline and steered continuations (steering.steer); every step's TokenEvent goes to on_event as it is made
    (the page streams them; in a worker, emitting is also where a stopped visitor's cancel lands, between two
    tokens). Interventions travel as their specs ('L25.N1527:negate') and are parsed here."""
    p = tokens.prompt(model, prompt)
    interventions = [steering.parse_intervention(model, spec, positions, len(p.ids)) for spec in specs]
    return steering.steer(model, p, interventions, max_new_tokens, temperature, top_p, seeds, on_token=on_event)
