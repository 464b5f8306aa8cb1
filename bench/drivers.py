"""What drives the an-neuron, batched vs the notebook way.

On the embedded model, for L25.N1527 on the post's pair: the decomposition of the neuron's input plus path patching
of every upstream component (the embedding, every head of layers 0..25, every MLP of layers 0..24), as
`core.analyses.drivers.drivers` computes it (both runs once, one batched pass resuming from layer 26), against a
hooked loop
on TransformerLens's bridge: for each component, a first forward of the corrupted prompt with the component's
clean − corrupted output added to the MLP's input only (`blocks.25.ln2.hook_in`) that reads the neuron (stopping
after block 25), and a second full forward with that activation put into `mlp.hook_post`. Both measured here, in
one run; the scores are compared too.

    .venv/bin/python bench/drivers.py   (OMP_NUM_THREADS=1 to compare with one thread)

Last line: speedup_vs_loop=X seconds=Y (Y: the batched time).
"""

from __future__ import annotations

import os
import time

import _common  # noqa: F401  (first: the repo on sys.path, the hub offline)
import numpy as np
import torch

from core import story
from core.analyses import drivers
from core.engine import tokens
from core.engine.model import EMBEDDED, load_model


def hooked_loop(model, clean, corrupted, answer, wrong, layer, neuron, labels):
    """One pair of hooked bridge forwards per component (the notebook way); returns {label: (neuron, ld) scores}."""
    bridge = model.bridge
    c_cache = bridge.run_with_cache(clean.tensor(model.device))[1]
    k_cache = bridge.run_with_cache(corrupted.tensor(model.device))[1]
    ids = corrupted.tensor(model.device)
    hook_in, hook_post = f"blocks.{layer}.ln2.hook_in", f"blocks.{layer}.mlp.hook_post"
    c_act = float(c_cache[hook_post][0, -1, neuron])
    k_act = float(k_cache[hook_post][0, -1, neuron])
    clean_ld = float((lambda lg: lg[answer] - lg[wrong])(bridge(clean.tensor(model.device))[0, -1]))
    corr_ld = float((lambda lg: lg[answer] - lg[wrong])(bridge(ids)[0, -1]))
    out = {}
    for label in labels:
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

        def add(t, hook, delta=delta):
            return t + delta

        def read(t, hook, box=box):
            box.append(t[..., neuron].clone())

        bridge.run_with_hooks(ids, fwd_hooks=[(hook_in, add), (hook_post, read)], stop_at_layer=layer + 1)

        def put(t, hook, box=box):
            t = t.clone()
            t[..., neuron] = box[0]
            return t

        logits = bridge.run_with_hooks(ids, fwd_hooks=[(hook_post, put)])[0, -1]
        out[label] = (
            (float(box[0][0, -1]) - k_act) / (c_act - k_act),
            (float(logits[answer] - logits[wrong]) - corr_ld) / (clean_ld - corr_ld),
        )
    return out


@torch.no_grad()
def main() -> None:
    model = load_model(EMBEDDED, device="cpu", keep_bridge=True)
    layer, neuron = story.KNOWN_NEURONS[model.name]
    clean, corrupted = tokens.pair(model, story.CLEAN, story.CORRUPTED)
    answer, wrong = tokens.single_token(model, story.ANSWER), tokens.single_token(model, story.WRONG)
    pair = (clean, corrupted, answer, wrong)
    print(
        f"{model.name} L{layer}.N{neuron}; {len(clean.ids)} tokens; torch threads {torch.get_num_threads()} "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); load average {os.getloadavg()[0]:.2f}"
    )
    drivers.drivers(model, clean, layer, neuron, pair=pair)  # warm-up (rotary tables, allocator)
    times = []
    for _ in range(3):
        began = time.perf_counter()
        result = drivers.drivers(model, clean, layer, neuron, pair=pair)
        times.append(time.perf_counter() - began)
    batched = min(times)
    paths = result.path_patching
    assert paths is not None
    print(
        f"batched: decomposition ({len(result.components)} components) + path patching ({len(paths)} rows): "
        f"{batched:.3f} s (best of 3: {', '.join(f'{t:.3f}' for t in times)})"
    )
    labels = list(paths.label)
    began = time.perf_counter()
    reference = hooked_loop(model, clean, corrupted, answer, wrong, layer, neuron, labels)
    loop = time.perf_counter() - began
    print(f"hooked loop: {2 * len(labels) + 4} bridge forwards (2 per component + 4 runs): {loop:.2f} s")
    frame = paths.set_index("label")
    neuron_err = max(abs(frame.loc[k, "neuron_restored"] - v[0]) for k, v in reference.items())
    ld_err = max(abs(frame.loc[k, "logit_diff_restored"] - v[1]) for k, v in reference.items())
    print(f"max |batched − loop|: neuron_restored {neuron_err:.2e}, logit_diff_restored {ld_err:.2e}")
    top = paths.head(3)
    print(
        "top paths: "
        + ", ".join(f"{r.label} {r.neuron_restored:.3f}/{r.logit_diff_restored:.3f}" for r in top.itertuples())
    )
    assert np.isfinite(neuron_err) and neuron_err < 1e-3 and ld_err < 1e-3
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"speedup_vs_loop={loop / batched:.1f} seconds={batched:.3f}")


if __name__ == "__main__":
    main()
