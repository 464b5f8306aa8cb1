"""What every benchmark shares. Benchmarks run as `python bench/NAME.py` from the repo root with nothing else set, so
importing this first (`import _common`) puts the repo on sys.path and keeps the Hugging Face Hub offline (each hub
call burns ~25 s of retries without a network). It also says how the machine was set when a figure was taken."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def machine() -> str:
    """torch's threads and the load average: a benchmark's figures are only comparable on a quiet machine."""
    import torch

    return f"torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.2f}"
