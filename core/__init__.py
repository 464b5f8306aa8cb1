"""Token Neuron Explorer's engine: analyses over plain weight tensors (no UI imports here)."""

import os

# torch's OpenMP worker threads spin while they wait for work. When anything else wants a core — the browser on a
# laptop, another visitor's page on a hosted server — a spinning pool loses its time slices at every barrier and
# runs ~2× slower than one thread (measured here: 0.25 vs 0.53 steps/s with one busy process beside it); sleeping
# waiters do not. Set before torch loads its OpenMP runtime; an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
