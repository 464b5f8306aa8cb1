"""Analyses over a corpus of real text.

- `sources`     corpora (bundled, Brown, files, hub datasets) read into token streams
- `scan`        one neuron set against one target token over a corpus (the post's corpus check)
- `dashboards`  every neuron's max-activating examples and activation histogram in one pass
- `distributed` the optional Ray engine for scan, search and dashboards

Layer 3: may import core.analyses, core.engine and the leaf modules; never core.serving or the entry points.
"""
