"""Batch runs: a model over a folder, zip or manifest of images, as a job of the one job machinery.

    start_batch -> job 'batch' + its fixed shards (index ranges of the source listing) in `batch_shards`
    run_batch   -> the pending shards go to a backend (engine.batch.backends); this process is the single
                   writer: each complete shard is written to its Parquet file (temporary name, then renamed)
                   and loaded into SQLite in one transaction that also marks the shard loaded

A shard is loaded exactly once (its status is part of the transaction that adds its rows), and a row is keyed
by (input hash, weights hash), so a killed worker, a killed job resumed, or a second run over the same images
never duplicates a row. A Parquet file written before the job died is loaded on resume without recomputing.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.batch.backends import BACKENDS, Shard, ShardResult
from engine.batch.sources import DEFAULT_MAX_ITEMS, Source, open_source
from engine.batch.work import COLUMNS, ERROR, Item, Options, batch_tasks
from engine.context import Context
from engine.errors import BatchSourceError, JobError
from engine.jobs.queue import (
    Job,
    JobProgress,
    JobRun,
    dispatch,
    get_job,
    job_folder,
    run_job,
    submit,
    update_job,
)
from engine.models.device import choose_device
from engine.models.installed import active_model, find_model
from engine.models.scope import ANALYSED, NOT_ANALYSED, abstention_text
from engine.store import Store, utc_now
from engine.writers.spreadsheet import SafeDictWriter

__all__ = ["BatchRequest", "start_batch", "run_batch", "batch_summary", "batch_rows", "list_batches",
           "DEFAULT_SHARD_SIZE"]

DEFAULT_SHARD_SIZE = 256
MAX_SHARDS = 100_000


@dataclass(frozen=True)
class BatchRequest:
    """What a user asks for (the CLI's arguments, the page's form)."""

    source: str
    task: str = "classification"
    model: str = ""  # an installed model of the task (default: the active one)
    cam: bool = False
    backend: str = "local"
    workers: int = 2
    shard_size: int = DEFAULT_SHARD_SIZE
    batch_size: int = 16
    pixel_mm: float | None = None
    device: str = "auto"
    cases: bool = False  # the analysed images also become cases (normal ingest), with their result logged

    def check(self) -> None:
        if self.task not in batch_tasks():
            raise JobError(f"batch runs do {', '.join(batch_tasks())}; not {self.task!r}")
        if self.backend not in BACKENDS:
            raise JobError(f"unknown backend {self.backend!r}; use {' or '.join(BACKENDS)}")
        for label, value in (("workers", self.workers), ("shard size", self.shard_size),
                             ("batch size", self.batch_size)):
            if value < 1:
                raise JobError(f"{label} must be at least 1 (got {value})")


def start_batch(ctx: Context, request: BatchRequest, background: bool = True) -> int:
    """Check the request, list the source, record the job and its shards; returns the job id. A signed-in user
    may read only under the configured batch folders; the CLI anywhere its user can."""
    ctx.require("batch.run")
    if request.cases:
        ctx.require("case.upload")
    request.check()
    roots = None if ctx.user.role == "system" else ctx.config.allowed_batch_roots
    source = open_source(request.source, roots, ctx.config.batch_max_items)
    installed = find_model(ctx.config, request.model) if request.model else active_model(ctx, request.task)
    if installed.task != request.task:
        raise JobError(f"{installed.name} is a {installed.task} model; choose a {request.task} model")
    from engine.models.checkpoint import sha256_of

    shards = [(i, start, min(start + request.shard_size, len(source)))
              for i, start in enumerate(range(0, len(source), request.shard_size))]
    if len(shards) > MAX_SHARDS:
        raise JobError(f"{len(shards):,} shards; use a larger shard size (at most {MAX_SHARDS:,} shards)")
    config = {**asdict(request), "source": str(source.location), "source_kind": source.kind, "items": len(source),
              "fingerprint": source.fingerprint, "fingerprint_v": 2,
              "roots": [str(r) for r in roots] if roots is not None else None,
              "model": installed.name, "model_version": installed.card.version,
              "model_path": str(installed.path), "weights_sha256": sha256_of(installed.path),
              "device": choose_device(request.device)}

    job_id = submit(ctx, "batch", device=config["device"], task=request.task, config=config, start=False,
                    detail={"model": installed.name, "items": len(source), "shards": len(shards),
                            "backend": request.backend}, here=not background)
    with ctx.store.write() as db:  # before any dispatch: a started run finds its shards
        db["batch_shards"].insert_all({"job_id": job_id, "shard": i, "start": a, "stop": b, "status": "pending"}
                                      for i, a, b in shards)
    if background:
        dispatch(ctx)
    return job_id


def worker_options(config: dict, ctx: Context) -> Options:
    return Options(task=config["task"], model_path=config["model_path"], weights_sha256=config["weights_sha256"],
                   source_kind=config["source_kind"], source_location=config["source"],
                   limits=asdict(ctx.config.limits), cam=config["cam"], pixel_mm=config["pixel_mm"],
                   batch_size=config["batch_size"], device=config["device"], roots=_roots(config))


def _roots(config: dict) -> tuple[str, ...] | None:
    roots = config.get("roots")
    return tuple(roots) if roots is not None else None


def _shard_file(ctx: Context, job_id: int, shard: int) -> Path:
    return job_folder(ctx.config, job_id) / "shards" / f"{shard:06d}.parquet"


def _source_of(config: dict) -> Source:
    source = open_source(config["source"], _roots(config) and tuple(map(Path, config["roots"])),
                         max_items=max(config["items"], DEFAULT_MAX_ITEMS))
    # runs started before content stamps compare the listing only
    now = source.fingerprint if config.get("fingerprint_v") == 2 else source.names_fingerprint
    if now != config["fingerprint"] or len(source) != config["items"]:
        raise BatchSourceError(f"the source changed since this run started ({config['items']:,} items then, "
                               f"{len(source):,} now, or files renamed or replaced); start a new run")
    return source


def run_batch(ctx: Context, job_id: int, progress: Callable[[JobProgress], None] | None = None) -> dict:
    """Execute a batch job in this process (the job's own, or the CLI's foreground run); then start the next
    queued job of its lane. SIGTERM (cancel) stops the workers and leaves every loaded shard in place."""
    previous = signal.signal(signal.SIGTERM, _exit_on_term) if _main_thread() else None
    try:
        return run_job(ctx, job_id, "batch", lambda run: _run(ctx, run, progress))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _exit_on_term(signum, frame):
    raise SystemExit(143)  # unwinds: the backend's pool or Ray cluster is shut down on the way out


def _run(ctx: Context, run: JobRun, progress: Callable[[JobProgress], None] | None) -> dict:
    job, job_id = run.job, run.job.id
    config = job.config
    source = _source_of(config)
    pending = _pending(ctx.store, job_id)
    for number, start, stop in list(pending):  # written before the job died: load, do not recompute
        if (path := _shard_file(ctx, job_id, number)).is_file():
            _load(ctx, job, _read_shard(path, number))
            pending.remove((number, start, stop))
    if config.get("cases"):  # loaded before the job died, their cases not all landed yet
        for number in _without_cases(ctx.store, job_id):
            _land(ctx, job, source, _read_shard(_shard_file(ctx, job_id, number), number))
    shards = [Shard(n, tuple(Item(n, i, source.names[i]) for i in range(a, b))) for n, a, b in pending]
    meter = _Meter(ctx.store, job_id, config["items"], progress)
    # the Ray cluster comes from the server's configuration only (RADLENS_RAY_ADDRESS), never from a request
    backend = BACKENDS[config["backend"]](shards, worker_options(config, ctx), config["workers"],
                                          ctx.config.ray_address)
    with closing(backend):  # a cancel or Ctrl-C shuts the pool or the Ray cluster down at once
        for result in backend:
            _store_shard(ctx, job, source, result)
            meter.shard_done(result)
    counts = batch_summary(ctx.store, job_id)
    run.finish({k: counts[k] for k in ("items", "analysed", "not_analysed", "failed", "new_rows")},
               progress=json.dumps({**meter.progress, "phase": "finished"}))
    return batch_summary(ctx.store, job_id)


def _store_shard(ctx: Context, job: Job, source: Source, result: ShardResult) -> None:
    start = time.perf_counter()
    _write_shard(_shard_file(ctx, job.id, result.number), result)
    _load(ctx, job, result)
    result.timings["write"] = time.perf_counter() - start
    if job.config.get("cases"):
        _land(ctx, job, source, result)


def _land(ctx: Context, job: Job, source: Source, result: ShardResult) -> None:
    from engine.batch.cases import land_as_cases

    start = time.perf_counter()
    land_as_cases(ctx, job.id, job.config, source.names, result.rows)
    with ctx.store.write() as db:
        db["batch_shards"].update((job.id, result.number), {"cases_at": utc_now()})
    result.timings["cases"] = time.perf_counter() - start


def _without_cases(store: Store, job_id: int) -> list[int]:
    with store.read() as db:
        return [r[0] for r in db.execute("SELECT shard FROM batch_shards WHERE job_id = ? AND status = 'loaded' "
                                         "AND cases_at IS NULL ORDER BY shard", [job_id])]


def _pending(store: Store, job_id: int) -> list[tuple[int, int, int]]:
    with store.read() as db:
        return [tuple(r) for r in db.execute("SELECT shard, start, stop FROM batch_shards WHERE job_id = ? AND "
                                             "status != 'loaded' ORDER BY shard", [job_id])]


class _Meter:
    """Live progress on the job row (and the CLI's bar): images done, images/s, ETA, failures, stage seconds."""

    def __init__(self, store: Store, job_id: int, total: int, callback):
        self.store, self.job_id, self.callback = store, job_id, callback
        self.started, self.done_here = time.monotonic(), 0
        self.stages: dict[str, float] = {}
        with store.read() as db:
            done, failed = db.execute("SELECT coalesce(sum(stop - start), 0), coalesce(sum(failed), 0) FROM "
                                      "batch_shards WHERE job_id = ? AND status = 'loaded'", [job_id]).fetchone()
        self.progress: JobProgress = {"phase": "analysing", "done": done, "total": total, "failures": failed}
        self._report()

    def shard_done(self, result: ShardResult) -> None:
        self.done_here += len(result.rows)
        for stage, seconds in result.timings.items():
            self.stages[stage] = self.stages.get(stage, 0.0) + seconds
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done_here / elapsed
        done = self.progress["done"] + len(result.rows)
        self.progress = {**self.progress, "done": done, "images_per_s": round(rate, 2),
                         "eta_s": round((self.progress["total"] - done) / rate, 1) if rate else 0.0,
                         "failures": self.progress["failures"] + sum(r["status"] == ERROR for r in result.rows),
                         "stage_seconds": {k: round(v, 3) for k, v in self.stages.items()}}
        self._report()

    def _report(self) -> None:
        update_job(self.store, self.job_id, self.progress)
        if self.callback:
            self.callback(self.progress)


def _typed(value, kind):
    if value is None:
        return None
    return kind(value) if kind in (int, float) else value


def _write_shard(path: Path, result: ShardResult) -> None:
    """The shard's rows as Parquet, under a temporary name renamed into place: a file there is complete."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {int: pa.int64(), float: pa.float64(), str: pa.string(), bytes: pa.binary()}
    schema = pa.schema([(name, types[kind]) for name, kind in COLUMNS.items()],
                       metadata={"timings": json.dumps(result.timings), "worker": result.worker})
    columns = {name: [_typed(r.get(name), kind) for r in result.rows] for name, kind in COLUMNS.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(pa.Table.from_pydict(columns, schema=schema), tmp)
    os.replace(tmp, path)


def _read_shard(path: Path, number: int) -> ShardResult:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    return ShardResult(number, table.to_pylist(), json.loads(meta.get("timings", "{}")), meta.get("worker", ""))


def _load(ctx: Context, job: Job, result: ShardResult) -> None:
    """The single writer: a shard's rows and its 'loaded' mark in one transaction (or none of it)."""
    config, now = job.config, utc_now()
    common = {"job_id": job.id, "weights_sha256": config["weights_sha256"], "task": config["task"],
              "model_name": config["model"], "model_version": config["model_version"], "device": config["device"],
              "created_at": now}
    results = [{**{k: v for k, v in r.items() if k != "shard"}, **common}
               for r in result.rows if r["status"] != ERROR]
    failures = [{"job_id": job.id, "item": r["item"], "reason": r["status_reason"], "created_at": now}
                for r in result.rows if r["status"] == ERROR]
    with ctx.store.write() as db:
        status = db.execute("SELECT status FROM batch_shards WHERE job_id = ? AND shard = ?",
                            [job.id, result.number]).fetchone()
        if status is None or status[0] == "loaded":
            return
        before = db.conn.total_changes
        if results:
            db["batch_results"].insert_all(results, ignore=True)
        added = db.conn.total_changes - before  # INSERT OR IGNORE counts only the rows it added
        if failures:
            db["batch_failures"].insert_all(failures, ignore=True)
        labels = Counter(r["label"] for r in results if r["status"] == ANALYSED and r.get("label"))
        db["batch_shards"].update((job.id, result.number), {
            "status": "loaded", "analysed": sum(r["status"] == ANALYSED for r in results),
            "not_analysed": sum(r["status"] != ANALYSED for r in results), "failed": len(failures),
            "new_rows": added, "labels": json.dumps(labels), "seconds": round(sum(result.timings.values()), 3),
            "worker": result.worker, "loaded_at": now})


def batch_summary(store: Store, job_id: int) -> dict:
    """Counts of a run (its loaded shards), the stage seconds it spent and, for classification, its labels."""
    job = get_job(store, job_id)
    with store.read() as db:
        counts = db.execute(
            "SELECT count(*), coalesce(sum(status = 'loaded'), 0), coalesce(sum(analysed), 0), "
            "coalesce(sum(not_analysed), 0), coalesce(sum(failed), 0), coalesce(sum(new_rows), 0) "
            "FROM batch_shards WHERE job_id = ?", [job_id]).fetchone()
        labels = Counter()
        for (text,) in db.execute("SELECT labels FROM batch_shards WHERE job_id = ? AND labels IS NOT NULL",
                                  [job_id]):
            labels.update(json.loads(text))
    shards, loaded, analysed, not_analysed, failed, new_rows = counts
    return {"job_id": job_id, "status": job.status.value, "items": job.config.get("items", 0), "shards": shards,
            "shards_loaded": loaded, "analysed": analysed, "not_analysed": not_analysed, "failed": failed,
            "new_rows": new_rows, "already_known": analysed + not_analysed - new_rows, "labels": dict(labels),
            "model": job.config.get("model"), "backend": job.config.get("backend"),
            "progress": job.progress, "error": job.error}


EXPORT_COLUMNS = ("item", "path", "status", "status_reason", "label", "probability", "threshold", "uncertainty",
                  "ood_score", "ood_flag", "circumference", "area", "unit", "spacing_mm", "spacing_source",
                  "modality", "body_part", "rows", "cols", "input_sha256")
HIDDEN_PATH = "(hidden: another user's run)"


def paths_visible(ctx: Context, job) -> bool:
    """File names often name patients: a run's paths are shown to its owner and to clinicians only."""
    return ctx.user.role in ("clinician", "system") or ctx.user.id == job.actor


def batch_rows(ctx: Context, job_id: int, with_paths: bool = False) -> Iterator[dict]:
    """Every item of a run as its shards' Parquet files hold it (also those known from an earlier run), in
    source order; `with_paths` adds each file's path from the source listing (computed now, never stored),
    or HIDDEN_PATH for a user who may not see them (paths_visible)."""
    ctx.require("batch.run")
    job = get_job(ctx.store, job_id)
    if with_paths and not paths_visible(ctx, job):
        yield from ({**row, "path": HIDDEN_PATH} for row in batch_rows(ctx, job_id))
        return
    source = _source_of(job.config) if with_paths else None
    for number, _, _ in _shards(ctx.store, job_id):
        path = _shard_file(ctx, job_id, number)
        if not path.is_file():
            continue
        for row in _read_shard(path, number).rows:
            row.pop("overlay_png", None)
            if source is not None:
                row["path"] = source.path_of(source.names[row["item"]])
            yield _as_shown(row)


def write_results_csv(ctx: Context, job_id: int, handle) -> int:
    """The run's rows as CSV (EXPORT_COLUMNS, every cell defused for spreadsheets); returns how many."""
    writer = SafeDictWriter(handle, EXPORT_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    count = 0
    for row in batch_rows(ctx, job_id, with_paths=True):
        writer.writerow(row)
        count += 1
    return count


RESULT_FIELDS = ("label", "probability", "probabilities", "probabilities_raw", "uncertainty", "circumference", "area",
                 "mask_pixels")


def _as_shown(row: dict) -> dict:
    """An abstention as every surface shows it: the reason in words, no label, probability or measurement (the
    network's output stays in the store and the Parquet files, for research)."""
    if row["status"] != NOT_ANALYSED:
        return row
    return {**row, **dict.fromkeys(RESULT_FIELDS), "status_reason": abstention_text(row["status_reason"])}


def _shards(store: Store, job_id: int) -> list[tuple[int, int, int]]:
    with store.read() as db:
        return [tuple(r) for r in db.execute("SELECT shard, start, stop FROM batch_shards WHERE job_id = ? "
                                             "ORDER BY shard", [job_id])]


def list_batches(store: Store) -> list[dict]:
    from engine.jobs.queue import list_jobs

    return [batch_summary(store, job.id) for job in list_jobs(store, "batch")]

