"""The Patching page, headless: seconds from Run to a settled page, per phase, for clean patching and each ablation.

Two views of the same work, both on the embedded model:
- engine phases, in the page's order (both runs → each layer whole = the first chart → the neurons: attribution,
  sweeps screened in bfloat16 where that pays, absolute effects → heads → layers × positions), timed one by one
  with the same core calls;
- the whole page in Streamlit's AppTest (a fresh cache per scenario: results from an earlier scenario never help),
  from the Run click to the end of the script. The first scenario is the first Run after the "server" start.
  Where the page leaves the heads or layers × positions to a press (their estimates are over HEADS_AUTO_S,
  GRID_AUTO_S), each press is timed too and printed apart: the page settles without them.

Scenarios: the post's pair (apple → lemon) with clean patching and each ablation, and a pair that differs at token 2.
Results go to a fresh cache folder (the converted model linked in): a disk cache left by an earlier run would reopen
the pages instead of computing them. Run alone (2 cores); `--threads N` sets torch's threads. Last line:
    patching_page_s=X ablation_page_s=Y first_chart_s=Z gflops=G patching_page_scaled_s=Xs ablation_page_scaled_s=Ys
(worst case of each; goal X ≤ 8, Y ≤ 8, Z ≤ 3 on the reference machine, whose fp32 matmul runs at REFERENCE_GFLOPS;
a machine of another speed meets it when the scaled figures, seconds × G / REFERENCE_GFLOPS, are ≤ 8.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (first: the repo on sys.path, the hub offline)
import torch

from core import story
from core.analyses import attribution, cost, patching
from core.engine import speed, tokens

# The fp32 matmul rate (bench's own line, GFLOP/s) of the machine the page's goal was set on: seconds measured on a
# machine of rate G compare with the goal as seconds × G / REFERENCE_GFLOPS (a slower box gets proportionally longer).
REFERENCE_GFLOPS = 205.0

SCENARIOS = [
    ("post pair, clean", story.CLEAN, story.CORRUPTED, "clean"),
    ("post pair, zero", story.CLEAN, story.CORRUPTED, "zero"),
    ("post pair, mean", story.CLEAN, story.CORRUPTED, "mean"),
    ("post pair, negate", story.CLEAN, story.CORRUPTED, "negate"),
    ("differs at token 2, clean", story.EARLY_CLEAN, story.EARLY_CORRUPTED, "clean"),
]


def engine_phases(model, clean: str, corrupted: str, ablation: str) -> dict[str, float]:
    """Seconds of each phase, in the order the page shows them (the page's own core calls)."""
    times: dict[str, float] = {}

    def timed(name, fn):
        began = time.perf_counter()
        out = fn()
        times[name] = time.perf_counter() - began
        return out

    c, k = tokens.pair(model, clean, corrupted)
    answer, wrong = tokens.single_token(model, story.ANSWER), tokens.single_token(model, story.WRONG)
    setup = timed("both runs", lambda: patching.prepare(model, c, k, answer, wrong, ablation))
    totals = timed("layers whole", lambda: patching.patch_layer_totals(setup))["mlp_out"]
    layer = patching.standout_mlp_layer(totals)

    def neurons():
        if ablation == "clean":
            approx = attribution.attribute(setup)
            found = attribution.find_top_neurons(setup, approx, 50, totals, extra_sweeps=(layer,), screen=True)
            sweep = found.sweeps[layer]
        else:
            sweep = patching.patch_neurons(setup, layer, screen=True)
        best = int(sweep.winners(1).neuron.iloc[0])
        return patching.neuron_effect(setup, layer, best), patching.neuron_effect(setup, layer)

    timed("neurons", neurons)
    timed("heads", lambda: patching.patch_heads(setup))
    timed("layers × positions", lambda: patching.patch_layers(setup))
    return times


def page_seconds(clean: str, corrupted: str, ablation: str) -> tuple[float, float, dict[str, float]]:
    """(seconds to open the page, from the Run click to the end, {what: seconds from its press to the end} for the
    heads and the grid where they waited for a press) in AppTest, caches emptied first."""
    import streamlit as st

    from core.serving import jobs
    from tests.test_app import open_page
    from ui import analyses

    st.cache_data.clear()
    jobs._SETUPS.clear()
    analyses._completed().clear()
    began = time.perf_counter()
    at = open_page("2_Patching.py", clean=clean, corrupted=corrupted, ablation=ablation)
    opened = time.perf_counter() - began
    began = time.perf_counter()
    at.button(key="patching:run").click().run()
    ran = time.perf_counter() - began
    if at.exception or at.error:
        raise SystemExit(f"the page failed: {[e.value for e in at.error]} {at.exception}")
    pressed = {}
    for what, button in (("heads", "patching:heads"), ("layers × positions", "patching:grid")):
        if any(b.key == button for b in at.button):
            began = time.perf_counter()
            at.button(key=button).click().run()
            pressed[what] = time.perf_counter() - began
    return opened, ran, pressed


def fresh_cache() -> Path:
    """A temporary TNE_CACHE_DIR for the results, with the converted model (and its GGUF source) linked in."""
    from core.cache import cache_root

    shared, fresh = cache_root(), Path(tempfile.mkdtemp(prefix="tne-pages-"))
    for folder in ("models", "gguf"):
        if (shared / folder).exists():
            (fresh / folder).symlink_to(shared / folder)
    os.environ["TNE_CACHE_DIR"] = str(fresh)
    return fresh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = fresh_cache()
    try:
        run()
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def run() -> None:
    from core.engine.model import EMBEDDED, load_model

    gflops = speed.matmul_flops_per_s("cpu") / 1e9
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, matmul {gflops:.0f} GFLOP/s")
    page: dict[str, float] = {}
    first_chart: list[float] = []
    for i, (name, clean, corrupted, ablation) in enumerate(SCENARIOS):
        opened, ran, pressed = page_seconds(clean, corrupted, ablation)  # first: also loads the model
        page[name] = ran
        model = load_model(EMBEDDED)  # the engine view reads the cached conversion (≈ 1 s + processing)
        times = engine_phases(model, clean, corrupted, ablation)
        c, k = tokens.pair(model, clean, corrupted)
        start = tokens.first_difference(c, k) if ablation == "clean" else 0
        work = cost.planned_work(
            model, len(c.ids), start, sweeps=attribution.SWEEP_MAX_LAYERS if ablation == "clean" else 1
        )
        work.pop("heads per position")
        estimate = cost.estimate_seconds(model, sum(work.values()))
        first_chart.append(times["both runs"] + times["layers whole"])
        phases = ", ".join(f"{k} {v:.2f}" for k, v in times.items())
        on_press = "".join(f"; {what} on press: {s:.1f} s more" for what, s in pressed.items())
        print(
            f"{name}: page {ran:.1f} s after Run (opened in {opened:.1f} s{' incl. the model load' if i == 0 else ''}"
            f"{on_press}); engine {sum(times.values()):.1f} s = {phases}; fp32 estimate of all {estimate:.1f} s",
            flush=True,
        )
    clean_worst = max(v for k, v in page.items() if k.endswith("clean"))
    ablation_worst = max(v for k, v in page.items() if not k.endswith("clean"))
    scale = gflops / REFERENCE_GFLOPS
    print(
        f"patching_page_s={clean_worst:.1f} ablation_page_s={ablation_worst:.1f} first_chart_s={max(first_chart):.1f} "
        f"gflops={gflops:.0f} patching_page_scaled_s={clean_worst * scale:.1f} "
        f"ablation_page_scaled_s={ablation_worst * scale:.1f}"
    )


if __name__ == "__main__":
    main()
