"""Disk cache for analysis results: keyed by (model fingerprint, analysis, params); atomic; self-healing.

Entries are numpy .npz files (no pickle: allow_pickle=False on read). The cache is bounded: after each write the
least recently used entries are deleted until it fits TNE_CACHE_MAX_MB (core.hosting). A write goes to a temp file in
the same folder and is renamed into place, so a reader never sees half an entry; an entry that fails to load (truncated,
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

from core.hosting import limits


def cache_root() -> Path:
    """Where converted weights and analysis results live: $TNE_CACHE_DIR or ~/.cache/token-neuron-explorer."""
    env = os.environ.get("TNE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "token-neuron-explorer"


def key_path(fingerprint: str, analysis: str, params: dict[str, Any]) -> Path:
    blob = json.dumps({"model": fingerprint, "analysis": analysis, "params": params}, sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:24]
    return cache_root() / "results" / analysis / f"{digest}.npz"


def load(path: Path) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        os.utime(path)  # mark as recently used: pruning drops the least recently used entries first
        return arrays
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError):
        path.unlink(missing_ok=True)  # corrupt or truncated: drop it, the caller recomputes
        return None


def save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    prune(limits().cache_max_mb * 1024 * 1024)


def prune(max_bytes: int) -> int:
    """Delete least recently used result entries until results + scans fit in max_bytes; returns bytes freed.

    Converted model weights (models/) are never pruned: they are needed to run at all.
    """
    entries = []
    for folder in ("results", "scans"):
        for path in (cache_root() / folder).rglob("*.npz"):
            try:
                stat = path.stat()
            except FileNotFoundError:  # another process pruned it
                continue
            entries.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in entries)
    freed = 0
    for _, size, path in sorted(entries):
        if total - freed <= max_bytes:
            break
        path.unlink(missing_ok=True)
        freed += size
    return freed
