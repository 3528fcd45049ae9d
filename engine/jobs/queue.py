"""One queue for every kind of background work (training runs, heatmap audits): a row in `jobs`, run by its
own process, reporting through the store.

    submit -> queued -> (dispatch) running -> finished | failed | cancelled
                                     \\-> interrupted (its process died without a clean exit) -> resume_job

The dashboard never runs the work: it submits, and `dispatch` starts the kind's program in a new session
when its lane is free (one running job per kind and device; the rest wait in order). Dispatch happens when
a job is submitted, when one ends (its process calls it), and on an explicit refresh. Reads never write:
a running job whose process is gone reads as interrupted, and the next dispatch records it so.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TypedDict

from engine.config import Config
from engine.context import Context
from engine.errors import JobError, short_reason
from engine.jobs.process import alive, start_process, start_time
from engine.store import Store, utc_now

__all__ = ["run_job", "JobRun", "JobStatus", "ACTIVE", "RESUMABLE", "JobProgress", "JobKind", "KINDS", "Job", "submit",
           "dispatch", "get_job", "list_jobs", "cancel_job", "resume_job", "claim_job", "update_job",
           "finish_job", "fail_job", "job_metrics", "log_tail", "job_folder", "NICENESS", "lower_priority"]

# Jobs run at the lowest CPU priority: the dashboard's inference threads preempt them, so a job can use
# every core while the dashboard is idle and the dashboard stays fast while it trains (bench.train serving).
NICENESS = 19


def lower_priority() -> None:
    """This process to the jobs' priority (from any lower niceness; never raised back)."""
    os.nice(max(0, NICENESS - os.nice(0)))

_DIED = "the job's process ended without finishing (killed, or the machine stopped); resume continues " \
        "from the last complete step it saved"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
RESUMABLE = (JobStatus.INTERRUPTED, JobStatus.CANCELLED, JobStatus.FAILED)


class JobProgress(TypedDict, total=False):
    """What a running job reports; each kind fills the keys that apply to it."""

    phase: str  # what it is doing now, in words
    done: int  # items finished (audit images)
    total: int
    epoch: int  # training: 0-based epoch, step within it, and the run's length
    epochs: int
    step: int
    steps: int
    images_per_s: float
    eta_s: float
    best_epoch: int
    last_epoch: int
    cpu_percent: float
    rss_mb: float
    ram_percent: float
    gpu_memory_mb: float
    gpu_util_percent: float
    failures: int  # batch runs: items that could not be read or decoded
    stage_seconds: dict  # batch runs: worker seconds per stage (read, decode, preprocess, forward, ...)


@dataclass(frozen=True)
class JobKind:
    name: str
    title: str
    argv: Callable[[Job], list[str]]  # the program's arguments after the Python executable
    lane: str  # how the kind shares the machine, in words (one running job per kind and device)


def _train_argv(job: Job) -> list[str]:
    program = ["-m", "engine.train.run", "--job", str(job.id)]
    gpus = job.config.get("gpus", 1)
    return ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", *program] if gpus > 1 \
        else program


# Each kind names its program by module, so the queue never imports the layers that do the work.
KINDS: dict[str, JobKind] = {k.name: k for k in (
    JobKind("train", "Training", _train_argv, "one running training job per device"),
    JobKind("gan", "GAN training", lambda job: ["-m", "engine.train.gan", "--job", str(job.id)],
            "one running GAN training per device"),
    JobKind("heatmap-audit", "Heatmap audit", lambda job: ["-m", "engine", "heatmap-audit", "--run", str(job.id)],
            "one running audit per device"),
    JobKind("analyse", "Analysis of PACS arrivals", lambda job: ["-m", "engine", "analyse", "--run", str(job.id)],
            "one running analysis per device"),
    JobKind("send", "Sending results to a PACS", lambda job: ["-m", "engine", "send", "--run", str(job.id)],
            "one running send per device"),
    JobKind("batch", "Batch run", lambda job: ["-m", "engine", "batch", "--run", str(job.id)],
            "one running batch run per device (its workers share the machine)"),
)}


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    status: JobStatus
    device: str
    task: str
    actor: str
    config: dict  # the kind's own configuration (a training job: {"train": TrainConfig dict, "gpus": n})
    progress: JobProgress
    error: str
    pid: int | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    output: str
    model_name: str
    review_ids: list[int]
    resumes: int

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @classmethod
    def from_row(cls, row: dict) -> Job:
        status, error = JobStatus(row["status"]), row["error"] or ""
        if status is JobStatus.RUNNING and not alive(row["pid"], row.get("pid_started")):
            status, error = JobStatus.INTERRUPTED, _DIED
        return cls(row["id"], row["kind"], status, row["device"] or "", row["task"] or "", row["actor"] or "",
                   json.loads(row["config"] or "{}"), json.loads(row["progress"] or "{}"), error, row["pid"],
                   row["created_at"], row["started_at"], row["finished_at"], row["output"] or "",
                   row["model_name"] or "", json.loads(row["review_ids"] or "[]"), row["resumes"] or 0)


def job_folder(config: Config, job_id: int) -> Path:
    return config.home / "jobs" / str(job_id)


def submit(ctx: Context, kind: str, *, device: str = "cpu", task: str = "", review_ids: list[int] | None = None,
           config: dict | None = None, complete: Callable[[int], dict] | None = None, detail: dict | None = None,
           start: bool = True, here: bool = False) -> int:
    """Queue a job of `kind` (audited as 'job.start') and dispatch; returns its id. `complete(job_id)`
    returns row values that need the id (its folder, a model name). `here=True` records it as running in
    this process (the CLI's foreground runs), so no dispatcher starts it too."""
    if kind not in KINDS:
        raise JobError(f"Unknown job kind {kind!r}. Available: {', '.join(KINDS)}")
    with ctx.store.write() as db:
        job_id = db["jobs"].insert({
            "kind": kind, "status": (JobStatus.RUNNING if here else JobStatus.QUEUED).value,
            "pid": os.getpid() if here else None, "pid_started": start_time(os.getpid()) if here else None,
            "started_at": utc_now() if here else None,
            "device": device, "task": task, "actor": ctx.actor,
            "config": json.dumps(config or {}), "review_ids": json.dumps(review_ids or []), "progress": "{}",
            "created_at": utc_now(), "updated_at": utc_now(), "resumes": 0}).last_pk
        extra = complete(job_id) if complete else {}
        if "config" in extra:
            extra["config"] = json.dumps(extra["config"])
        db["jobs"].update(job_id, {"output": str(job_folder(ctx.config, job_id)), **extra})
        ctx.audit(db, "job.start", "job", job_id, {"kind": kind, **(detail or {})})
    if start and not here:
        dispatch(ctx)
    return job_id


def _mark_dead(db) -> None:
    for row in list(db.query("SELECT id, pid, pid_started FROM jobs WHERE status = 'running'")):
        if not alive(row["pid"], row["pid_started"]):
            db["jobs"].update(row["id"], {"status": JobStatus.INTERRUPTED.value, "error": _DIED,
                                          "updated_at": utc_now()})


def _launch(config: Config, job: Job) -> int:
    return start_process(config, [sys.executable, *KINDS[job.kind].argv(job)],
                         job_folder(config, job.id) / "log.txt", job.actor)


def dispatch(ctx: Context) -> list[int]:
    """Record dead jobs as interrupted, then start the oldest queued job of every free lane (kind, device);
    returns the ids started."""
    started = []
    with ctx.store.write() as db:
        _mark_dead(db)
        busy = {(r[0], r[1]) for r in db.execute("SELECT DISTINCT kind, device FROM jobs WHERE status = 'running'")}
        for row in list(db.query("SELECT * FROM jobs WHERE status = 'queued' ORDER BY id")):
            job = Job.from_row(row)
            if (job.kind, job.device) in busy or job.kind not in KINDS:
                continue
            busy.add((job.kind, job.device))
            try:
                pid = _launch(ctx.config, job)
            except OSError as error:
                db["jobs"].update(job.id, {"status": JobStatus.FAILED.value, "error": f"could not start: {error}",
                                           "finished_at": utc_now()})
                continue
            db["jobs"].update(job.id, {"status": JobStatus.RUNNING.value, "pid": pid, "pid_started": start_time(pid),
                                       "updated_at": utc_now(),
                                       "started_at": job.started_at or utc_now(), "error": None})
            started.append(job.id)
    return started


def get_job(store: Store, job_id: int) -> Job:
    row = store.row("jobs", job_id)
    if row is None:
        raise JobError(f"job {job_id} does not exist; pick one from the list of jobs")
    return Job.from_row(row)


def list_jobs(store: Store, kind: str | None = None) -> list[Job]:
    """Every job (of `kind`), newest first; one whose process died reads as interrupted."""
    sql, params = "SELECT * FROM jobs", []
    if kind:
        sql, params = sql + " WHERE kind = ?", [kind]
    with store.read() as db:
        return [Job.from_row(r) for r in db.query(sql + " ORDER BY id DESC", params)]


def cancel_job(ctx: Context, job_id: int) -> None:
    """Stop a queued or running job (its process group gets SIGTERM); audited; the queue moves on."""
    ctx.require("job.manage")
    with ctx.store.write() as db:
        job = next(iter(db.query("SELECT status, pid, pid_started FROM jobs WHERE id = ?", [job_id])), None)
        if job is None or job["status"] not in ACTIVE:
            raise JobError(f"job {job_id} is {job['status'] if job else 'unknown'}; only queued or running jobs "
                           "can be cancelled")
        db["jobs"].update(job_id, {"status": JobStatus.CANCELLED.value, "finished_at": utc_now(),
                                   "updated_at": utc_now(), "error": f"cancelled by {ctx.actor}"})
        ctx.audit(db, "job.cancel", "job", job_id, {"was": job["status"]})
    if job["status"] == JobStatus.RUNNING and alive(job["pid"], job["pid_started"]):  # never an unrelated group
        try:
            os.killpg(job["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    dispatch(ctx)


def resume_job(ctx: Context, job_id: int, here: bool = False) -> None:
    """Queue an interrupted, cancelled or failed job again; it continues from what it last saved. `here=True`
    records it as running in this process (the CLI's foreground resume) instead of queueing it."""
    ctx.require("job.manage")
    get_job(ctx.store, job_id)  # a clear error for an unknown id
    with ctx.store.write() as db:
        _mark_dead(db)
        status = db["jobs"].get(job_id)["status"]
        if status not in RESUMABLE:
            raise JobError(f"job {job_id} is {status}; only {', '.join(RESUMABLE)} jobs can be resumed")
        pid = os.getpid() if here else None
        db.execute("UPDATE jobs SET status = ?, resumes = coalesce(resumes, 0) + 1, pid = ?, "
                   "pid_started = ?, error = NULL, finished_at = NULL, updated_at = ? WHERE id = ?",
                   [(JobStatus.RUNNING if here else JobStatus.QUEUED).value, pid, start_time(pid) if pid else None,
                    utc_now(), job_id])
        ctx.audit(db, "job.resume", "job", job_id, {"was": status})
    if not here:
        dispatch(ctx)


def claim_job(store: Store, job_id: int, pid: int | None = None) -> Job:
    """The job's own process takes the row: it must be running (not cancelled between dispatch and start)."""
    with store.write() as db:
        row = db["jobs"].get(job_id)
        if row["status"] != JobStatus.RUNNING:
            raise JobError(f"job {job_id} is {row['status']}, not running")
        mine = {"pid": pid, "pid_started": start_time(pid)} if pid else {}
        db["jobs"].update(job_id, {"updated_at": utc_now(), **mine})
    return get_job(store, job_id)


def update_job(store: Store, job_id: int, progress: JobProgress | None = None, **values) -> None:
    if progress is not None:
        values["progress"] = json.dumps(progress)
    with store.write() as db:
        db["jobs"].update(job_id, {**values, "updated_at": utc_now()})


def finish_job(store: Store, job_id: int, actor: str, detail: dict, **values) -> None:
    """The row says finished (unless it was cancelled meanwhile), with an audit row '<job>.finish'."""
    with store.write() as db:
        sets = ", ".join(f"{k} = ?" for k in values)
        db.execute(f"UPDATE jobs SET status = 'finished', finished_at = ?, updated_at = ?, error = NULL"
                   f"{', ' + sets if sets else ''} WHERE id = ? AND status = 'running'",
                   [utc_now(), utc_now(), *values.values(), job_id])
        store.audit(db, actor, "job.finish", "job", job_id, detail)


def fail_job(store: Store, job_id: int, message: str) -> None:
    """Record the failure in one line, unless the job was cancelled (then the cancel is what happened)."""
    with store.write() as db:
        db.execute("UPDATE jobs SET status = 'failed', error = ?, finished_at = ?, updated_at = ? "
                   "WHERE id = ? AND status = 'running'", [message, utc_now(), utc_now(), job_id])


def job_metrics(store: Store, job_id: int) -> list[dict]:
    with store.read() as db:
        return list(db.query("SELECT epoch, step, name, value, created_at FROM job_metrics WHERE job_id = ? "
                             "ORDER BY id", [job_id]))


def log_tail(config: Config, job_id: int, lines: int = 15) -> str:
    path = job_folder(config, job_id) / "log.txt"
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 16_384))
        return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])


class JobRun:
    """A job as its own process runs it: the claimed row, its progress and its finish."""

    def __init__(self, ctx: Context, job: Job):
        self.ctx, self.job = ctx, job

    def progress(self, **values) -> None:
        update_job(self.ctx.store, self.job.id, values)

    def finish(self, detail: dict, **values) -> None:
        finish_job(self.ctx.store, self.job.id, self.job.actor or self.ctx.actor, detail, **values)


def run_job(ctx: Context, job_id: int, what: str, work: Callable[[JobRun], dict]) -> dict:
    """The envelope every job kind's program runs in: claim the row (it must still be running), run `work` (which
    reports progress and finishes the row), record a failure or a stop as one line on the row (and raise JobError
    naming the job; a stop goes on as SystemExit), then start the next queued job of the lane, whatever
    happened."""
    try:
        run = JobRun(ctx, claim_job(ctx.store, job_id, os.getpid()))
        try:
            return work(run)
        except (Exception, SystemExit) as error:  # noqa: BLE001 - recorded on the row as one line, never lost
            message = "stopped (cancelled or terminated)" if isinstance(error, SystemExit) else short_reason(error)
            fail_job(ctx.store, job_id, message)
            if isinstance(error, SystemExit):
                raise
            raise JobError(f"{what} {job_id} failed: {message}") from error
    finally:
        dispatch(ctx)
