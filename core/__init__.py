"""Token Neuron Explorer's core: everything headless (no Streamlit here), in layers that import only downwards.

    layer 0  core/errors, progress, jsonable, hosting, cache, frames   leaves: import nothing from core/ but each other
    layer 1  core/engine/      the model adapter, families, the hook-free forward, tokens, the metric
    layer 2  core/analyses/    one analysis per module (predict, lens, patching, attribution, congruence, ...)
    layer 3  core/corpus/      corpora and the analyses over them (scan, dashboards, distributed)
    layer 4  core/serving/     admission, jobs, worker processes for a hosted app
    layer 5  core/cli/, reproduce, story, __main__    entry points and the post's facts

A module may import its own layer and those below, never above; no cycles. tests/test_layers.py checks it.
The app (app.py, pages/, ui/) sits above all of core/.
"""

import os

# torch's OpenMP worker threads spin while they wait for work. When anything else wants a core — the browser on a
# laptop, another visitor's page on a hosted server — a spinning pool loses its time slices at every barrier and
# runs ~2× slower than one thread (measured here: 0.25 vs 0.53 steps/s with one busy process beside it); sleeping
# waiters do not. Set before torch loads its OpenMP runtime; an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
