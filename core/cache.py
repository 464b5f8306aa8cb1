"""Disk cache for analysis results: keyed by (model fingerprint, analysis, params); atomic; self-healing.

Entries are numpy .npz files (no pickle: allow_pickle=False on read). A write goes to a temp file in the same
folder and is renamed into place, so a reader never sees half an entry; an entry that fails to load (truncated,
corrupt) is deleted and reported as a miss, so it is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from core.model import cache_root


def key_path(fingerprint: str, analysis: str, params: dict[str, Any]) -> Path:
    blob = json.dumps({"model": fingerprint, "analysis": analysis, "params": params}, sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:24]
    return cache_root() / "results" / analysis / f"{digest}.npz"


def load(path: Path) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError):
        path.unlink(missing_ok=True)  # corrupt or truncated: drop it, the caller recomputes
        return None


def save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
