"""Benchmark: greedy generation on the embedded model — the engine's KV-cached decoding vs transformers' `generate`.

Run alone (other processes on the cores distort it):  python bench/generate.py [--threads N] [--reps R]
64 new tokens from the post's ~20-token prompt, greedy, one sequence, both on the same fp32 weights and threads.
Prints the figures, then a last line
`tokens_per_s=X hf_tokens_per_s=Y ratio=X/Y bandwidth_efficiency=E steer_overhead=O dose_points=21 dose_seconds=D`:
- X: core.analyses.generate.generate; Y: transformers' `generate` (eager attention, its own KV cache);
- E = X × (bytes of weights read per generated token) / (this machine's memory copy bandwidth, measured here:
  bytes read + bytes written per second by a 256 MB tensor copy, STREAM's convention). Decoding one token reads
  every matrix once (the unembedding included: tied to the embedding, read as W_U), so E says how close to the
  memory limit it runs;
- O = (time with 3 interventions at every position − time without) / time without, same tokens otherwise;
- D: seconds for core.analyses.steering.dose_response with 21 clamp values (one prompt forward + one batched
  resume), the prompt forward included.
Each figure is the median of --reps runs, ours and transformers' interleaved so drift hits both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from core.analyses import generate as gen  # noqa: E402
from core.analyses import steering  # noqa: E402
from core.analyses.congruence import label  # noqa: E402
from core.engine.model import EMBEDDED, embedded_folder, load_model  # noqa: E402
from core.story import ANSWER, CLEAN, KNOWN_NEURONS, WRONG  # noqa: E402

NEW_TOKENS = 64


def weight_bytes_per_token(w) -> int:
    """Bytes of parameters one decoding step reads: every layer's matrices and vectors, the final norm and the
    unembedding (the embedding contributes one row: left out)."""
    tensors = [
        w.W_QKV,
        w.b_QKV,
        w.W_O,
        w.b_O,
        w.W_in,
        w.b_in,
        w.W_gate,
        w.W_out,
        w.b_out,
        w.W_U,
        w.b_U,
        w.ln1_w,
        w.ln1_b,
        w.ln2_w,
        w.ln2_b,
        w.lnf_w,
        w.lnf_b,
        w.q_norm_w,
        w.k_norm_w,
        w.attn_post_w,
        w.mlp_post_w,
    ]
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def copy_bandwidth(device: torch.device, megabytes: int = 256, seconds: float = 2.0) -> float:
    """Bytes moved per second (read + written) copying one large tensor into another."""
    src = torch.ones(megabytes << 18, device=device)  # 4-byte floats
    dst = torch.empty_like(src)
    dst.copy_(src)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        dst.copy_(src)
        reps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2.0 * src.numel() * src.element_size() * reps / (time.perf_counter() - start)


def read_bandwidth(device: torch.device, megabytes: int = 256, seconds: float = 1.0) -> float:
    """Bytes read per second summing one large tensor (what decoding does with the weights; printed beside E)."""
    src = torch.ones(megabytes << 18, device=device)
    src.sum()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        src.sum()
        reps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return src.numel() * src.element_size() * reps / (time.perf_counter() - start)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model = load_model(EMBEDDED, device=args.device)
    device = model.device
    hf = AutoModelForCausalLM.from_pretrained(embedded_folder(), dtype=torch.float32, attn_implementation="eager")
    hf = hf.to(device).eval()
    ids = model.prompt_ids(CLEAN)
    prompt = torch.tensor([ids], device=device)
    layer, neuron = KNOWN_NEURONS[EMBEDDED]
    interventions = [
        steering.parse_intervention(model, f"L{layer}.N{neuron}:set=-4"),
        steering.parse_intervention(model, "L20.N33:add=10"),
        steering.parse_intervention(model, "L10.N5:direction=4"),
    ]
    edits = [iv.edit(None) for iv in interventions]

    def ours(with_edits: bool) -> gen.Generation:
        return gen.generate(model, ids, NEW_TOKENS, edits=edits if with_edits else (), stop_ids=())

    @torch.no_grad()
    def theirs() -> torch.Tensor:
        return hf.generate(prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)

    def dose() -> steering.DoseResponse:
        return steering.dose_response(model, CLEAN, layer, neuron, ANSWER, WRONG, points=21)

    # Warm-up (allocator, rotary tables, lazy kernels), and the check that both decode the same tokens.
    mine, reference = ours(False), theirs()
    same = mine.token_ids[0] == reference[0, len(ids) :].tolist()
    ours(True)
    dose()
    plain, steered, hf_times, dose_times = [], [], [], []
    for _ in range(args.reps):
        plain.append(timed(lambda: ours(False)))
        hf_times.append(timed(theirs))
        steered.append(timed(lambda: ours(True)))
        dose_times.append(timed(dose))
    bandwidth, reading = copy_bandwidth(device), read_bandwidth(device)
    per_token = weight_bytes_per_token(model.weights)
    t_ours, t_hf = statistics.median(plain), statistics.median(hf_times)
    t_steer, t_dose = statistics.median(steered), statistics.median(dose_times)
    x, y = NEW_TOKENS / t_ours, NEW_TOKENS / t_hf
    efficiency = x * per_token / bandwidth
    overhead = (t_steer - t_ours) / t_ours
    print(f"model {model.name} on {device}; torch threads {torch.get_num_threads()}; load {os.getloadavg()[0]:.2f}")
    print(
        f"prompt {len(ids)} tokens, {NEW_TOKENS} new tokens, greedy, one sequence; same tokens as transformers: {same}"
    )
    print(f"ours: {t_ours:.3f} s ({x:.1f} tokens/s); transformers generate: {t_hf:.3f} s ({y:.1f} tokens/s)")
    print(
        f"weights read per token {per_token / 1e6:.0f} MB; memory copy bandwidth {bandwidth / 1e9:.1f} GB/s; "
        f"limit {bandwidth / per_token:.1f} tokens/s; read-only bandwidth {reading / 1e9:.1f} GB/s "
        f"(E against it: {x * per_token / reading:.2f})"
    )
    print(f"3 interventions ({', '.join(iv.spec for iv in interventions)}): {t_steer:.3f} s")
    print(f"dose-response, 21 points on {label(layer, neuron)}: {t_dose:.3f} s")
    print(
        f"tokens_per_s={x:.2f} hf_tokens_per_s={y:.2f} ratio={x / y:.2f} bandwidth_efficiency={efficiency:.2f} "
        f"steer_overhead={overhead:.3f} dose_points=21 dose_seconds={t_dose:.3f}"
    )


if __name__ == "__main__":
    main()
