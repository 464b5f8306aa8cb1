"""The engine: a model's weights and how to run them.

- `model`    the adapter, the ONLY module that knows transformers / TransformerLens: load by name, folder, embedded
- `families` one record per architecture family: how its checkpoint's weights map onto the engine's layout
- `forward`  the hook-free forward over plain weight tensors (run, resume from the middle, keys/values)
- `tokens`   prompts and single-token targets, with helpful refusals
- `metric`   the logit difference, unembedding only the two tokens it needs

Layer 1: may import the leaf modules at core/ (errors, progress, jsonable, hosting, cache) and each other;
nothing above.
"""
