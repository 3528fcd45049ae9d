"""Where a batch run's shards are computed. Each backend takes the pending shards and yields every shard once it
is complete (all its rows), in any order; the run's single writer stores it. A shard whose worker died is
computed again from the start: nothing of it was stored, so a retry never duplicates a row.

- `local`: processes on this machine (spawned, at the job's low CPU priority), one model each.
- `ray`: Ray Data over a Ray cluster (a local one of `workers` CPUs, or `address`): a pool of model actors fed
  by `map_batches`; on GPU nodes, decoding runs as separate CPU tasks and each actor holds one GPU (AMP +
  channels_last in the classifier). Ray restarts a killed actor and retries its batch.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field

import numpy as np

from engine.batch.work import COLUMNS, STAGES, Analyser, Decoded, Decoder, Item, Options
from engine.errors import JobError
from engine.io.study import Spacing
from engine.jobs.queue import lower_priority

__all__ = ["Shard", "ShardResult", "BACKENDS", "run_local", "run_ray"]

log = logging.getLogger("radlens.batch")
MAX_RAY_BLOCKS = 20_000
MAX_POOL_RESTARTS = 3  # a local pool that breaks this often without finishing a shard fails the run (resumable)


@dataclass(frozen=True)
class Shard:
    number: int
    items: tuple[Item, ...]


@dataclass
class ShardResult:
    number: int
    rows: list[dict]
    timings: dict[str, float] = field(default_factory=dict)  # worker seconds per stage (STAGES)
    worker: str = ""


# --- local: a process pool -------------------------------------------------------------------------------------
_ANALYSER: Analyser | None = None


def _start_worker(options: Options, threads: int) -> None:
    global _ANALYSER
    import torch

    lower_priority()  # the job's priority, whatever the parent's (a foreground CLI run, a test)
    torch.set_num_threads(threads)
    _ANALYSER = Analyser(options)


def _run_shard(shard: Shard) -> ShardResult:
    timings: dict[str, float] = {}
    rows = _ANALYSER.analyse(list(shard.items), timings)
    return ShardResult(shard.number, rows, timings, f"pid {os.getpid()}")


def run_local(shards: list[Shard], options: Options, workers: int = 2, address: str = "") -> Iterator[ShardResult]:
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // workers)
    pending = {s.number: s for s in shards}
    restarts = 0
    while pending:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(options, threads))
        futures = {pool.submit(_run_shard, s): n for n, s in pending.items()}
        try:
            while futures:
                done, _ = wait(futures, return_when=FIRST_COMPLETED)
                for future in done:
                    number = futures.pop(future)
                    result = future.result()  # BrokenProcessPool when a worker died
                    pending.pop(number)
                    restarts = 0
                    yield result
        except BrokenProcessPool:
            restarts += 1
            log.warning("batch: a worker process died; %d shard(s) start again", len(pending))
            if restarts > MAX_POOL_RESTARTS:
                raise JobError(f"the batch workers died {restarts} times in a row without finishing a shard "
                               "(out of memory?); resume the job to try again") from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


# --- ray: Ray Data with a pool of model actors -----------------------------------------------------------------
def _items(batch) -> list[Item]:
    return [Item(int(s), int(i), str(n)) for s, i, n in zip(batch["shard"], batch["index"], batch["name"])]


def _frame(rows: list[dict], timings: dict[str, float], worker: str):
    """Rows as a pandas frame for Ray; the batch's stage seconds ride on its first row."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    for stage in STAGES:
        frame[f"t_{stage}"] = [timings.get(stage, 0.0)] + [0.0] * (len(rows) - 1) if rows else []
    frame["worker"] = worker
    return frame


class _RayAnalyser:
    """A Ray actor holding the model: items in, rows out (reading and decoding too, on a CPU-only cluster)."""

    def __init__(self, options: Options):
        self.analyser = Analyser(options)

    def __call__(self, batch):
        timings: dict[str, float] = {}
        rows = self.analyser.analyse(_items(batch), timings)
        return _frame(rows, timings, f"pid {self.analyser.pid}")


_DECODER: Decoder | None = None


def _ray_decode(batch, options: Options) -> dict:
    """A Ray task (GPU clusters): read and decode on a CPU, so the GPU actors only run the model."""
    global _DECODER
    import numpy as np

    if _DECODER is None or _DECODER.options != options:
        _DECODER = Decoder(options)  # one sandbox per Ray worker process, reused by its next tasks
    timings: dict[str, float] = {}
    decoded, failed = _DECODER.decode_all(_items(batch), timings)
    d_rows = [{"shard": d.item.shard, "index": d.item.index, "name": d.item.name, "image": d.gray,
               "modality": d.modality, "body_part": d.body_part, "spacing": json.dumps(asdict(d.spacing)),
               "failed": ""} for d in decoded]
    f_rows = [{"shard": r["shard"], "index": r["item"], "name": "", "image": np.zeros((1, 1), np.uint8),
               "modality": "", "body_part": "", "spacing": "", "failed": json.dumps(r)} for r in failed]
    out = d_rows + f_rows
    columns = {k: [r[k] for r in out] for k in ("shard", "index", "name", "modality", "body_part", "spacing", "failed")}
    columns["image"] = np.empty(len(out), dtype=object)
    columns["image"][:] = [r["image"] for r in out]
    columns["t_read"] = [timings.get("read", 0.0)] + [0.0] * (len(out) - 1)
    columns["t_decode"] = [timings.get("decode", 0.0)] + [0.0] * (len(out) - 1)
    return {k: np.asarray(v) if k != "image" else v for k, v in columns.items()}


class _RayModel:
    """A Ray actor holding the model (one GPU each) for images decoded by `_ray_decode` tasks."""

    def __init__(self, options: Options):
        self.analyser = Analyser(options)

    def __call__(self, batch):
        timings = {"read": float(np.sum(batch["t_read"])), "decode": float(np.sum(batch["t_decode"]))}
        failed = [json.loads(f) for f in batch["failed"] if f]
        decoded = [Decoded(Item(int(s), int(i), str(n)), np.asarray(image), str(m), str(b), Spacing(**json.loads(sp)))
                   for s, i, n, image, m, b, sp, f in zip(batch["shard"], batch["index"], batch["name"], batch["image"],
                                                          batch["modality"], batch["body_part"], batch["spacing"],
                                                          batch["failed"]) if not f]
        return _frame(failed + self.analyser.infer(decoded, timings), timings, f"pid {self.analyser.pid}")


def _pipeline(dataset, options: Options, workers: int, split: bool):
    if not split:  # CPU-only: each actor reads, decodes and infers (no copy of the decoded image between processes)
        return dataset.map_batches(_RayAnalyser, fn_constructor_args=(options,), batch_size=options.batch_size,
                                   batch_format="numpy", compute=_actors(workers), num_cpus=1)
    decoded = dataset.map_batches(_ray_decode, fn_args=(options,), batch_size=options.batch_size,
                                  batch_format="numpy", num_cpus=1)
    return decoded.map_batches(_RayModel, fn_constructor_args=(options,), batch_size=options.batch_size,
                               batch_format="numpy", compute=_actors(workers),
                               num_gpus=1 if options.device == "cuda" else 0, num_cpus=0 if options.device == "cuda"
                               else 1)


def _actors(size: int):
    import ray.data

    return ray.data.ActorPoolStrategy(size=size)


def _local_cluster_security(address: str) -> dict:
    """Ray's own processes listen on every interface (this Ray has no setting to bind them to loopback), so a
    local cluster started for a run takes a fresh token of its own (Ray's token authentication: a process
    without it cannot join, submit work or read objects) and advertises loopback addresses. A configured
    cluster (RADLENS_RAY_ADDRESS) brings its own RAY_AUTH_MODE / RAY_AUTH_TOKEN from the server's environment."""
    if address:
        return {}
    # Before Ray is imported (it reads both then); one token per process, so a second run in it still matches.
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    return {"_node_ip_address": "127.0.0.1"}


def run_ray(shards: list[Shard], options: Options, workers: int = 2, address: str = "",
            split: bool | None = None) -> Iterator[ShardResult]:
    """`split` (default: on GPU) decodes in CPU tasks before the model actors; Ray Data restarts a killed actor
    and retries its batch (its defaults: max_restarts=-1, max_task_retries=-1)."""
    security = _local_cluster_security(address)
    import ray
    import ray.data

    for name in ("ray", "ray.data"):  # their INFO lines (datasets, log folders) would go to the terminal
        logging.getLogger(name).setLevel(logging.WARNING)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address or None, num_cpus=None if address else workers, include_dashboard=False,
                 log_to_driver=False, configure_logging=False, runtime_env={"env_vars": {"TQDM_DISABLE": "1"}},
                 **security)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        items = [{"shard": s.number, "index": i.index, "name": i.name} for s in shards for i in s.items]
        expected = {s.number: len(s.items) for s in shards}
        # blocks of about one forward batch, so every actor gets work even from a single shard
        blocks = min(MAX_RAY_BLOCKS, max(1, -(-len(items) // options.batch_size)))
        dataset = ray.data.from_items(items, override_num_blocks=blocks)
        dataset = _pipeline(dataset, options, workers, options.device == "cuda" if split is None else split)
        buffers: dict[int, tuple[ShardResult, dict[int, dict]]] = {}
        for frame in dataset.iter_batches(batch_size=None, batch_format="pandas"):
            for row in frame.to_dict("records"):
                number = int(row["shard"])
                result, rows = buffers.setdefault(number, (ShardResult(number, []), {}))
                for stage in STAGES:
                    result.timings[stage] = result.timings.get(stage, 0.0) + float(row.pop(f"t_{stage}"))
                result.worker = row.pop("worker")
                rows[int(row["item"])] = {k: (None if _missing(v) else v) for k, v in row.items()}  # a re-run
                if len(rows) == expected[number]:  # batch's rows replace its first ones: still one per item
                    result.rows = [rows[i] for i in sorted(rows)]
                    del buffers[number]
                    yield result
    finally:
        if started_here:
            ray.shutdown()


def _missing(value) -> bool:
    try:
        return value is None or value != value  # pandas fills absent numbers with NaN
    except (TypeError, ValueError):
        return False


BACKENDS = {"local": run_local, "ray": run_ray}
