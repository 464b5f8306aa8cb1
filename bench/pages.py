"""The Patching page, headless: seconds from Run to a settled page, per phase, for clean patching and each ablation.

Two views of the same work, both on the embedded model:
- engine phases, in the page's order (both runs → each layer whole = the first chart → the neurons: attribution,
  sweeps screened in bfloat16 where that pays, absolute effects → heads → layers × positions), timed one by one
  with the same core calls;
- the whole page in Streamlit's AppTest (a fresh cache per scenario: results from an earlier scenario never help),
  from the Run click to the end of the script. The first scenario is the first Run after the "server" start.
  Where the page leaves layers × positions to a press (its estimate is over GRID_AUTO_S), the press is timed too
  and printed apart: the page settles without it.

Scenarios: the post's pair (apple → lemon) with clean patching and each ablation, and a pair that differs at token 2.
Run alone (2 cores); `--threads N` sets torch's threads. Last line:
    patching_page_s=X ablation_page_s=Y first_chart_s=Z      (worst case of each; goal X ≤ 8, Y ≤ 8, Z ≤ 3)
"""

from __future__ import annotations

import argparse
import time

import _common  # noqa: F401  (first: the repo on sys.path, the hub offline)
import torch

from core import story
from core.analyses import attribution, cost, patching
from core.engine import speed, tokens

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


def page_seconds(clean: str, corrupted: str, ablation: str) -> tuple[float, float, float | None]:
    """(seconds to open the page, from the Run click to the end, from the grid's press to the end or None when the
    grid ran with the page) in AppTest, caches emptied first."""
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
    grid = None
    if any(b.key == "patching:grid" for b in at.button):
        began = time.perf_counter()
        at.button(key="patching:grid").click().run()
        grid = time.perf_counter() - began
    return opened, ran, grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from core.engine.model import EMBEDDED, load_model

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"matmul {speed.matmul_flops_per_s('cpu') / 1e9:.0f} GFLOP/s"
    )
    page: dict[str, float] = {}
    first_chart: list[float] = []
    for i, (name, clean, corrupted, ablation) in enumerate(SCENARIOS):
        opened, ran, grid = page_seconds(clean, corrupted, ablation)  # first: also loads the model
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
        on_press = f"; layers × positions on press: {grid:.1f} s more" if grid is not None else ""
        print(
            f"{name}: page {ran:.1f} s after Run (opened in {opened:.1f} s{' incl. the model load' if i == 0 else ''}"
            f"{on_press}); engine {sum(times.values()):.1f} s = {phases}; fp32 estimate of all {estimate:.1f} s",
            flush=True,
        )
    clean_worst = max(v for k, v in page.items() if k.endswith("clean"))
    ablation_worst = max(v for k, v in page.items() if not k.endswith("clean"))
    print(
        f"patching_page_s={clean_worst:.1f} ablation_page_s={ablation_worst:.1f} first_chart_s={max(first_chart):.1f}"
    )


if __name__ == "__main__":
    main()
