"""Scale-out on Ray: the corpus scan as a Ray Data pipeline, the all-neurons × vocabulary search split by layer
blocks across Ray actors. Results equal the single-process ones (same batches, same per-batch code, same
aggregation and top-2 merge); only where the work runs changes.

Ray is optional (`pip install -r requirements-scale.txt`). Without an address this starts an in-process local Ray
instance with `workers` CPUs; with `address` (or RAY_ADDRESS) it joins that cluster. A worker needs this repository
on its PYTHONPATH, the pinned requirements, the embedded model's package (or access to the model named), and
TNE_CACHE_DIR pointing at a writable folder; GPUs are used when a worker has one (`gpus_per_worker`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from core import cache
from core.analyses import search
from core.corpus import scan
from core.engine.model import Model, Processing
from core.errors import UserError
from core.progress import Progress

# Called in a worker after each batch it ran, with how many it has run (a test passes one that kills the worker).
AfterBatch = Callable[[int], None]

REPO_ROOT = str(Path(__file__).resolve().parents[2])
FORWARDED_ENV = ("TNE_CACHE_DIR", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TNE_HOSTED", "TNE_MODELS")


def _ray():
    try:
        import ray
    except ImportError as err:
        raise UserError("Ray is not installed; pip install -r requirements-scale.txt (an optional extra)") from err
    return ray


def connect(address: str | None = None, workers: int = 2) -> Any:
    """Start (or join) Ray with the environment workers need to import `core` and find the model cache."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "include_dashboard": False, "log_to_driver": False}
    if address:
        kwargs["address"] = address
    else:
        kwargs["num_cpus"] = workers
    try:
        ray.init(**kwargs)
    except Exception as err:  # connection refused, bad address, …
        raise UserError(f"could not start or join Ray ({address or 'local'}): {err}") from err
    return ray


def _pack(part: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **part)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
    return buffer.getvalue()


def _unpack(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


class ScanWorker:
    """A Ray Data actor: loads the model once, runs scan batches (the single-process `scan._run_batch`)."""

    def __init__(
        self,
        model_name: str,
        processing: Processing,
        neurons: list,
        target: int,
        batch_size: int,
        gpu: bool,
        after_batch: AfterBatch | None = None,
    ) -> None:
        import torch

        from core.engine.model import load_model

        torch.set_num_threads(1)  # one worker per core
        self.model = load_model(model_name, device="cuda" if gpu else "cpu", processing=processing)
        self.neurons = [tuple(n) for n in neurons]
        self.target, self.batch_size = target, batch_size
        self.after_batch = after_batch
        self.done = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts = []
        for index, payload in zip(batch["index"], batch["contexts"]):
            contexts = [(doc, ids) for doc, ids in json.loads(payload)]
            part = scan._run_batch(self.model, contexts, int(index) * self.batch_size, self.neurons, self.target)
            parts.append(_pack(part))
            self.done += 1
            if self.after_batch is not None:
                self.after_batch(self.done)
        return {"index": batch["index"], "part": np.array(parts, dtype=object)}


def pipeline(
    items: list[dict], worker: type, kwargs: dict, workers: int, address: str | None, gpus_per_worker: float
) -> Iterator[dict]:
    """The one Ray Data pipeline of corpus work: each item (a dict of plain values) goes to one call of a `worker`
    actor (built once per worker with `kwargs`: it loads the model), rows come back as they finish. A killed
    worker is replaced and its item retried. Used by the scan (ScanWorker) and the dashboards
    (core.corpus.dashboards.DashboardWorker)."""
    ray = connect(address, workers)
    data = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        worker,
        fn_constructor_kwargs=kwargs,
        batch_size=1,
        concurrency=workers,
        num_cpus=1,
        num_gpus=gpus_per_worker,
        max_restarts=-1,  # a killed worker is replaced …
        max_task_retries=-1,  # … and its batch retried
    )
    yield from data.iter_rows()


def ray_scan(
    model: Model,
    spec: scan.ScanSpec,
    workers: int = 2,
    address: str | None = None,
    gpus_per_worker: float = 0,
    progress: Progress | None = None,
    after_batch: AfterBatch | None = None,
) -> scan.ScanResult:
    """`scan.scan` with the batches run by a Ray Data pipeline of model actors. Same cache parts, same result.

    after_batch: called in each worker after each batch (tests inject a worker's death here)."""
    scan.check_view(spec)
    work = scan.plan(model, spec)
    parts = {i: part for i in range(len(work.batches)) if (part := work.cached_part(i)) is not None}  # resume
    todo = [i for i in range(len(work.batches)) if i not in parts]
    done = sum(len(p["token"]) for p in parts.values())
    if todo:
        items = [{"index": i, "contexts": json.dumps(work.batches[i])} for i in todo]
        kwargs = {
            "model_name": model.name,
            "processing": model.processing["name"],
            "neurons": list(work.spec.neurons),
            "target": work.spec.target,
            "batch_size": work.spec.batch_size,
            "gpu": gpus_per_worker > 0,
            "after_batch": after_batch,
        }
        for row in pipeline(items, ScanWorker, kwargs, workers, address, gpus_per_worker):
            index, part = int(row["index"]), _unpack(row["part"])
            cache.save(work.part_path(index), part)
            parts[index] = part
            done += len(part["token"])
            if progress:
                progress(done, work.total)
    seen = work.records([parts[i] for i in range(len(work.batches))])
    return scan.summarise(model, seen, work.spec, engine=f"ray ({workers} workers)")


class TablesWorker:
    """A Ray actor computing the search's running top-2s for a block of layers."""

    def __init__(self, model_name: str, processing: Processing, gpu: bool) -> None:
        import torch

        from core.engine.model import load_model

        torch.set_num_threads(1)
        self.model = load_model(model_name, device="cuda" if gpu else "cpu", processing=processing)

    def block(self, matrix: str, first: int, last: int) -> dict[str, np.ndarray]:
        w = self.model.weights
        sub = dataclasses.replace(self.model, weights=dataclasses.replace(w, W_out=w.W_out[first:last]))
        return search.compute_tables(sub, matrix).arrays()


def ray_tables(
    model: Model,
    matrix: str = "W_U",
    workers: int = 2,
    address: str | None = None,
    layers_per_block: int | None = None,
    gpus_per_worker: float = 0,
    progress: Progress | None = None,
) -> search.Tables:
    """`search.compute_tables` split by layer blocks across Ray actors, merged to the same top-2s."""
    ray = connect(address, workers)
    from ray.util import ActorPool

    L, m = model.n_layers, model.d_mlp
    per = layers_per_block or max(1, L // (2 * workers))
    blocks = [(first, min(first + per, L)) for first in range(0, L, per)]
    actor = ray.remote(num_cpus=1, num_gpus=gpus_per_worker, max_restarts=-1, max_task_retries=-1)(TablesWorker)
    pool = ActorPool([actor.remote(model.name, model.processing["name"], gpus_per_worker > 0) for _ in range(workers)])
    results = list(pool.map(lambda a, b: a.block.remote(matrix, *b), blocks))
    import torch

    neuron_ids = np.concatenate([r["neuron_top_ids"] for r in results])
    neuron_vals = np.concatenate([r["neuron_top_vals"] for r in results])
    token_vals = torch.full((2, model.d_vocab), -torch.inf)
    token_ids = torch.zeros(2, model.d_vocab, dtype=torch.long)
    for i, ((first, _), r) in enumerate(zip(blocks, results)):
        token_vals, token_ids = search.merge_top2(
            token_vals,
            token_ids,
            torch.from_numpy(r["token_top_vals"].T.copy()),
            torch.from_numpy(r["token_top_ids"].T.astype(np.int64) + first * m),
        )
        if progress:
            progress(i + 1, len(blocks))
    return search.Tables(neuron_ids, neuron_vals, token_ids.T.int().numpy().copy(), token_vals.T.numpy().copy())
