"""One analysis per module, pure functions over the engine; each result type renders its own tables and JSON.

predict, lens (logit lens, direct logit attribution), patching (activation patching; its bfloat16 screen and page-time
cost model beside it), attribution (attribution patching over all neurons), congruence, search (stand-out and mutual
pairs), atlas (vocabulary composition of every neuron), drivers (what feeds a neuron).

Layer 2: may import core.engine and the leaf modules; never core.corpus, core.serving or the entry points.
"""
