"""The post's facts in one place: "We Found An Neuron in GPT-2" (Miller & Neo, 2023), and what this project measured.

The CLI's defaults, the pages' defaults, reproduce, the benchmarks and the tests read them from here.
"""

from __future__ import annotations

from core.model import EMBEDDED

# The post's prompt pair: GPT-2 large says " an" after the apple prompt and " a" after the lemon one.
CLEAN = "I climbed up the pear tree and picked a pear. I climbed up the apple tree and picked"
CORRUPTED = "I climbed up the pear tree and picked a pear. I climbed up the lemon tree and picked"
ANSWER, WRONG = " an", " a"

# A pair that differs at token 2 (the slow case for patching: almost every position must be recomputed), where
# attribution patching ranks L29.N1326 first but exact patching finds L21.N29 (0.330) on the embedded model.
EARLY_CLEAN = "I ate an orange for breakfast and an apple for lunch. For dinner I ate"
EARLY_CORRUPTED = "I ate a banana for breakfast and a pear for lunch. For dinner I ate"

# The an-neuron each model is known for: the post's for GPT-2 large, measured here for the embedded model.
KNOWN_NEURONS = {EMBEDDED: (25, 1527), "gpt2-large": (31, 892)}
