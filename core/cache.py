"""Disk cache for analysis results: keyed by (model fingerprint, analysis, params); atomic; self-healing.

Entries are numpy .npz files (no pickle: allow_pickle=False on read). The cache is bounded: after each write the
least recently used entries are deleted until it fits TNE_CACHE_MAX_MB (core.hosting). A write goes to a temp file in
the same folder and is renamed into place, so a reader never sees half an entry; an entry that fails to load (truncated,
corrupt) is deleted and reported as a miss, so it is recomputed. A writer killed mid-write (SIGKILL, out of memory)
leaves its temp file behind: temp names carry the writer's host and pid, and each process's first cache access deletes
the temps of writers that are gone (sweep_temps).

Fault injection, for the fault campaign only (bench/faults.py, tests/test_faults.py): TNE_FAULT_AT=POINT@N makes the
process SIGKILL itself the N-th time (default 1st) it reaches the named point — `cache.write` (an entry's temp file
half written, before its rename) or `dashboards.part` (a dashboards part between two batches). Unset: nothing happens.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import tempfile
import time
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


FAULT_ENV = "TNE_FAULT_AT"
_fault_hits: dict[str, int] = {}


def fault_due(name: str) -> bool:
    """True when TNE_FAULT_AT names this point and this is its N-th hit in this process (see the module's
    docstring); always False when it is unset. Test-only: the fault campaign kills a writer at an exact moment."""
    point, _, nth = os.environ.get(FAULT_ENV, "").partition("@")
    if point != name:
        return False
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    return _fault_hits[name] == int(nth or 1)


def fault_point(name: str) -> None:
    """SIGKILL this process here when fault_due(name)."""
    if fault_due(name):
        os.kill(os.getpid(), signal.SIGKILL)


TEMP_PREFIX = ".tmp-"
TEMP_MAX_AGE_S = 3600  # a temp of another host (a shared cache folder) is deleted once this old
SWEPT_FOLDERS = ("results", "scans", "dashboards")
_swept = False


def temp_prefix() -> str:
    """This process's temp-file prefix: `.tmp-<host>-<pid>-`, so a sweep can tell whether the writer still lives."""
    return f"{TEMP_PREFIX}{socket.gethostname().replace('-', '_')}-{os.getpid()}-"


def _writer_gone(name: str, age_s: float) -> bool:
    host, _, rest = name.removeprefix(TEMP_PREFIX).partition("-")
    pid = rest.partition("-")[0]
    if host != socket.gethostname().replace("-", "_") or not pid.isdigit():
        return age_s > TEMP_MAX_AGE_S  # another host's writer (or an old name): only once surely abandoned
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a live process of another user
        return False
    return int(pid) != os.getpid() and age_s > TEMP_MAX_AGE_S  # a reused pid: wait until surely abandoned


def sweep_temps() -> int:
    """Delete the temp files of writers that died mid-write under the cache folders; returns how many."""
    removed = 0
    now = time.time()
    for folder in SWEPT_FOLDERS:
        for path in (cache_root() / folder).rglob(f"{TEMP_PREFIX}*"):
            try:
                if path.is_file() and _writer_gone(path.name, now - path.stat().st_mtime):
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # swept by another process meanwhile
                continue
    return removed


def _sweep_once() -> None:
    global _swept
    if not _swept:
        _swept = True
        sweep_temps()


def load(path: Path) -> dict[str, np.ndarray] | None:
    _sweep_once()
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
    def write(handle: Any) -> None:
        np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle

    write_atomic(path, write, ".npz")
    prune(limits().cache_max_mb * 1024 * 1024)


def write_atomic(path: Path, write: Any, suffix: str = "") -> None:
    """write(handle) into a temp file beside `path`, synced, then renamed onto it: readers see all or nothing."""
    _sweep_once()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(), suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            if fault_due("cache.write"):  # the campaign's kill mid-write: half the file on disk, not renamed
                handle.flush()
                os.truncate(tmp, handle.tell() // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def prune(max_bytes: int) -> int:
    """Delete least recently used result entries until results + scans fit in max_bytes; returns bytes freed.

    Converted model weights (models/) are never pruned: they are needed to run at all.
    """
    entries = []
    for folder in ("results", "scans"):
        for path in (cache_root() / folder).rglob("*.npz"):
            if path.name.startswith(TEMP_PREFIX):  # another writer's entry in the making: not an entry yet
                continue
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


# ---------------------------------------------------------------- results as artefacts: a pickle-free object codec
# A result (dataclasses of the core/ui modules holding numpy arrays, tensors, DataFrames, dicts, lists, tuples and
# scalars) is stored as arrays plus one JSON tree that names them; loading rebuilds only dataclasses of this project's
# own modules (core.*, ui.*), so a cache file can never run code. Anything else raises Unencodable: not cached.

_META = "__meta__"
CODEC_VERSION = 1


class Unencodable(TypeError):
    """A value the codec does not store (a model, a function, an object array): the caller does not cache it."""


def _encode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    import dataclasses

    import pandas as pd
    import torch

    def array(a: np.ndarray) -> str:
        if a.dtype == object:
            raise Unencodable("object arrays need pickle")
        name = f"a{len(arrays)}"
        arrays[name] = a
        return name

    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)) and type(value) in (int, float):
        return value if isinstance(value, int) else {"float": repr(value)}  # repr keeps nan/inf and every bit
    if isinstance(value, np.generic):
        return {"scalar": array(np.asarray(value))}
    if isinstance(value, np.ndarray):
        return {"array": array(value)}
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        dtype = str(t.dtype).removeprefix("torch.")
        return {"tensor": array(t.float().numpy() if dtype == "bfloat16" else t.numpy()), "dtype": dtype}
    if isinstance(value, pd.DataFrame):
        columns: list[dict[str, Any]] = []
        for i in range(value.shape[1]):
            col = value.iloc[:, i]
            if col.dtype.kind in "biufcmM":
                columns.append({"array": array(col.to_numpy())})
            else:
                columns.append({"list": [_encode(v, arrays) for v in col.tolist()], "dtype": str(col.dtype)})
        index = value.index
        index_node = (
            {"range": [index.start, index.stop, index.step]}
            if isinstance(index, pd.RangeIndex)
            else {"list": [_encode(v, arrays) for v in index.tolist()]}
        )
        return {"frame": [_encode(n, arrays) for n in value.columns], "columns": columns, "index": index_node}
    if isinstance(value, (list, tuple)):
        return {"list" if isinstance(value, list) else "tuple": [_encode(v, arrays) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[_encode(k, arrays), _encode(v, arrays)] for k, v in value.items()]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        if not cls.__module__.startswith(("core.", "ui.")):
            raise Unencodable(f"{cls.__module__}.{cls.__qualname__} is not this project's")
        fields = {f.name: _encode(getattr(value, f.name), arrays) for f in dataclasses.fields(value)}
        return {"dataclass": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    raise Unencodable(f"{type(value).__name__} is not stored in the cache")


def _decode(node: Any, arrays: dict[str, np.ndarray]) -> Any:
    import dataclasses
    import importlib

    import pandas as pd
    import torch

    if node is None or isinstance(node, (bool, int, str)):
        return node
    if isinstance(node, float):
        return node
    if "float" in node:
        return float(node["float"])
    if "scalar" in node:
        return arrays[node["scalar"]][()]
    if "array" in node:
        return arrays[node["array"]]
    if "tensor" in node:
        return torch.from_numpy(arrays[node["tensor"]].copy()).to(getattr(torch, node["dtype"]))
    if "frame" in node:
        names = [_decode(n, arrays) for n in node["frame"]]
        index = node["index"]
        idx = (
            pd.RangeIndex(*index["range"])
            if "range" in index
            else pd.Index([_decode(v, arrays) for v in index["list"]])
        )
        data = {
            i: arrays[col["array"]]
            if "array" in col
            else pd.Series([_decode(v, arrays) for v in col["list"]], dtype=col["dtype"], index=idx)
            for i, col in enumerate(node["columns"])
        }
        frame = pd.DataFrame(data, index=idx)
        frame.columns = pd.Index(names) if names else frame.columns
        return frame
    if "list" in node:
        return [_decode(v, arrays) for v in node["list"]]
    if "tuple" in node:
        return tuple(_decode(v, arrays) for v in node["tuple"])
    if "dict" in node:
        return {_freeze(_decode(k, arrays)): _decode(v, arrays) for k, v in node["dict"]}
    if "dataclass" in node:
        module, _, qualname = node["dataclass"].partition(":")
        if not module.startswith(("core.", "ui.")):
            raise ValueError(f"{module} is not this project's")
        cls: Any = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise ValueError(f"{qualname} is not a dataclass")
        values = {name: _decode(v, arrays) for name, v in node["fields"].items()}
        init = {f.name for f in dataclasses.fields(cls) if f.init}
        obj = cls(**{k: v for k, v in values.items() if k in init})
        for name, v in values.items():
            if name not in init:
                object.__setattr__(obj, name, v)
        return obj
    raise ValueError(f"unknown cache node {sorted(node)}")


def _freeze(key: Any) -> Any:
    return tuple(_freeze(k) for k in key) if isinstance(key, list) else key


def save_object(path: Path, value: Any) -> None:
    """Store a result (see _encode) atomically; Unencodable when it holds something the codec refuses."""
    import time

    arrays: dict[str, np.ndarray] = {}
    meta = {"version": CODEC_VERSION, "computed_at": time.time(), "value": _encode(value, arrays)}
    arrays[_META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    save(path, arrays)


def load_object(path: Path) -> tuple[Any, float] | None:
    """The stored result and when it was computed (a Unix time), or None (missing, corrupt, another version)."""
    arrays = load(path)
    if arrays is None or _META not in arrays:
        return None
    try:
        meta = json.loads(arrays.pop(_META).tobytes().decode())
        if meta.get("version") != CODEC_VERSION:
            return None
        return _decode(meta["value"], arrays), float(meta["computed_at"])
    except (ValueError, KeyError, TypeError, AttributeError, ImportError):
        path.unlink(missing_ok=True)  # written by an older layout of the result types: recompute
        return None
