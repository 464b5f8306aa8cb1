"""The post's facts in one place: "We Found An Neuron in GPT-2" (Miller & Neo, 2023), and what this project measured.

The CLI's defaults, the pages' defaults, reproduce, the benchmarks and the tests read them from here. Engine
functions take none of these as defaults: their callers pass them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.engine.model import EMBEDDED, GEMMA3

# The post's prompt pair: GPT-2 large says " an" after the apple prompt and " a" after the lemon one.
CLEAN = "I climbed up the pear tree and picked a pear. I climbed up the apple tree and picked"
CORRUPTED = "I climbed up the pear tree and picked a pear. I climbed up the lemon tree and picked"
ANSWER, WRONG = " an", " a"

# A pair that differs at token 2 (the slow case for patching: almost every position must be recomputed), where
# attribution patching ranks L29.N1326 first but exact patching finds L21.N29 (0.330) on the embedded model.
EARLY_CLEAN = "I ate an orange for breakfast and an apple for lunch. For dinner I ate"
EARLY_CORRUPTED = "I ate a banana for breakfast and a pear for lunch. For dinner I ate"

# Gemma 3 270M says " a" on the post's own prompt (P(" an") = 0.056); on this pair it says " an" (0.751) vs " a".
GEMMA3_CLEAN = "My brother is an architect. My sister is also"
GEMMA3_CORRUPTED = "My brother is a lawyer. My sister is also"
# The pair the story is told on, per model (the post's pair unless the model does not predict " an" on it).
STORY_PAIRS = {GEMMA3: (GEMMA3_CLEAN, GEMMA3_CORRUPTED)}


def pair(model_name: str | None) -> tuple[str, str]:
    """(clean, corrupted): the story pair of this model (the pages' default prompts)."""
    return STORY_PAIRS.get(model_name or "", (CLEAN, CORRUPTED))


# The an-neuron each model is known for: the post's for GPT-2 large, measured here for the embedded models
# (Gemma 3's writes " a" against " an" and fires negative on the clean prompt: docs/families.md).
KNOWN_NEURONS = {EMBEDDED: (25, 1527), "gpt2-large": (31, 892), GEMMA3: (13, 1278)}
# Other neurons of the embedded model the project's scans look at besides the an-neuron.
EMBEDDED_SCAN_NEURONS = [(25, 1527), (27, 554)]


@dataclass(frozen=True)
class Expected:
    """A published (or previously measured) number and the tolerance a reproduction must meet."""

    value: Any
    tolerance: float | None  # None: must be equal
    why: str


# The post (Miller & Neo 2023) on GPT-2 large, TransformerLens default processing. Tolerances: probabilities
# are quoted to 0.1 %, but the post's exact TransformerLens version and fp precision are unknown, so ±2 points;
# the neuron score is quoted as "~0.49", so ±0.05; congruences are quoted to 2 decimals, so ±0.05.
POST_GPT2_LARGE = {
    "clean_p_answer": Expected(0.649, 0.02, "post: P(' an') = 64.9 %"),
    "clean_p_wrong": Expected(0.242, 0.02, "post: P(' a') = 24.2 %"),
    "corrupted_p_wrong": Expected(0.851, 0.02, "post: lemon, P(' a') = 85.1 %"),
    "corrupted_p_answer": Expected(0.032, 0.02, "post: lemon, P(' an') = 3.2 %"),
    "lens_jump_layer": Expected(31, None, "post: the logit diff jumps after MLP 31"),
    "standout_layer": Expected(31, None, "post: MLP 31 stands out in layer patching (MLP 0 aside)"),
    "an_neuron": Expected("L31.N892", None, "post: L31.N892"),
    "an_neuron_score": Expected(0.49, 0.05, "post: N892 restores ~0.49 of the logit diff"),
    "congruence_W_E_answer": Expected(2.75, 0.05, "original notebook: W_E[' an'] · W_out[31, 892] = 2.75"),
    "congruence_W_E_wrong": Expected(0.17, 0.05, "original notebook: W_E[' a'] · W_out[31, 892] = 0.17"),
}
# This project's own measurement on the embedded model (Nov 2026, tests/test_embedded.py asserts the same).
PROJECT_SMOLLM2 = {
    "clean_p_answer": Expected(0.607, 0.01, "measured here"),
    "clean_p_wrong": Expected(0.297, 0.01, "measured here"),
    "corrupted_p_wrong": Expected(0.889, 0.01, "measured here"),
    "corrupted_p_answer": Expected(0.028, 0.01, "measured here"),
    "standout_layer": Expected(25, None, "measured here"),
    "an_neuron": Expected("L25.N1527", None, "measured here"),
    "an_neuron_score": Expected(0.613, 0.02, "measured here"),
    "an_neuron_rank_among_neurons_W_U": Expected(1, None, "measured here"),
}
# Gemma 3 270M (Nov 2026, tests/test_gemma3.py asserts the same). The first two state that the post's prompt
# does not work on it; the rest are on GEMMA3_CLEAN / GEMMA3_CORRUPTED.
PROJECT_GEMMA3 = {
    "post_prompt_top1": Expected(" an", None, "the post: GPT-2 large's top-1 on its prompt is ' an'"),
    "post_prompt_p_answer": Expected(0.056, 0.01, "measured here: Gemma 3 says ' a' (0.787) on the post's prompt"),
    "clean_p_answer": Expected(0.751, 0.01, "measured here, on Gemma 3's pair"),
    "corrupted_p_wrong": Expected(0.843, 0.01, "measured here, on Gemma 3's pair"),
    "standout_layer": Expected(3, None, "measured here: MLP 3 on the differing token itself (0.965)"),
    "an_neuron": Expected("L13.N1278", None, "measured here"),
    "an_neuron_score": Expected(0.351, 0.02, "measured here"),
}
# Reference numbers per model name: reproduce writes a verdict for each.
EXPECTED = {
    "gpt2-large": POST_GPT2_LARGE,
    "openai-community/gpt2-large": POST_GPT2_LARGE,
    EMBEDDED: PROJECT_SMOLLM2,
    GEMMA3: PROJECT_GEMMA3,
}
