"""Background training jobs: a row in `jobs`, run by its own process, reporting through the store.

    submit_job -> queued -> (dispatch) running -> finished | failed | cancelled
                                         \\-> interrupted (the process died without a clean exit) -> resume_job

The dashboard never trains: it submits, and `dispatch` starts `python -m engine.train.run --job ID` (or
torchrun with N processes) in a new session when the job's device is free: one running job per device,
the rest wait in order. The training process claims the row, writes step and epoch metrics to
`job_metrics` and its live progress to the row, checkpoints atomically each epoch, and on success
installs the model under RADLENS_HOME/models as a candidate. A job whose launcher pid is gone while the
row still says running is interrupted; resuming continues from its last complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import torch

from engine.background import alive, start_process
from engine.config import Config
from engine.errors import JobError
from engine.models.catalog import active_model
from engine.models.checkpoint import atomic_write
from engine.models.registry import get_spec, list_models
from engine.store import Store, utc_now
from engine.train.data import DATASETS
from engine.train.reviews import usable_review_ids

__all__ = ["JobSpec", "STATUSES", "RESUMABLE", "submit_job", "dispatch", "cancel_job", "resume_job", "list_jobs",
           "get_job", "job_metrics", "log_tail", "JobReporter", "resource_usage", "visible_gpus", "job_folder"]

STATUSES = ("queued", "running", "finished", "failed", "cancelled", "interrupted")
RESUMABLE = ("interrupted", "cancelled", "failed")
_ACTIVE = ("queued", "running")
# Jobs run at the lowest CPU priority: the dashboard's inference threads preempt them, so a job can use
# every core while the dashboard is idle and the dashboard stays fast while it trains (bench.train serving).
NICENESS = 19
_STEP_WRITE_S = 1.0  # step metrics are written at most once a second (and at each epoch's last step)
_DIED = "the training process ended without finishing (killed, or the machine stopped); resume continues " \
        "from the last complete epoch"


@dataclass(frozen=True)
class JobSpec:
    """What the Training form asks for. Everything else comes from the training program's defaults."""

    dataset: str
    arch: str
    size: int = 224
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    augment: bool = True
    balance: str = "weights"  # weights: inverse-frequency class weights in the loss; none
    device: str = "auto"  # auto, cpu or cuda
    fine_tune: bool = False  # start from the task's active model (same architecture)
    use_reviews: bool = False  # add every usable clinician review to the training split
    with_base_train: bool = True  # ... together with the dataset's own training split
    data_path: str = ""  # for the folder dataset
    gpus: int = 1  # > 1: torchrun with one process per GPU
    patience: int = 8
    seed: int = 0
    threads: int = 0  # CPU threads of the training process; 0: torch's default (all cores)


def visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def job_folder(config: Config, job_id: int) -> Path:
    return config.home / "jobs" / str(job_id)


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if visible_gpus() else "cpu"
    if device == "cuda" and not visible_gpus():
        raise JobError("device cuda was chosen but no GPU is visible to torch; choose cpu or auto")
    if device not in ("cpu", "cuda"):
        raise JobError(f"Unknown device {device!r}. Use auto, cpu or cuda")
    return device


def _argv(config: Config, store: Store, spec: JobSpec, job_id: int, device: str) -> tuple[list[str], dict]:
    """The training program's command line for the job, and what the row records beside it."""
    task = get_spec(spec.arch).task
    name = f"{spec.dataset.replace('_', '-')}-{spec.arch.replace('_', '-')}-job{job_id}"
    argv = ["--dataset", spec.dataset, "--model", spec.arch, "--size", str(spec.size), "--epochs", str(spec.epochs),
            "--patience", str(spec.patience), "--batch-size", str(spec.batch_size), "--lr", str(spec.lr),
            "--seed", str(spec.seed), "--device", device, "--name", name, "--version", f"job{job_id}",
            "--output", str(job_folder(config, job_id)), "--balance", spec.balance]
    if spec.threads:
        argv += ["--threads", str(spec.threads)]
    if spec.data_path:
        argv += ["--data-path", spec.data_path]
    if not spec.augment:
        argv.append("--no-augment")
    if spec.fine_tune:
        base = active_model(config, store, task)
        if base.card["arch"] != spec.arch:
            raise JobError(f"fine-tuning starts from the active {task} model, {base.name} ({base.card['arch']}): "
                           f"choose {base.card['arch']} or turn fine-tuning off")
        argv += ["--init-from", str(base.path)]
    reviews: list[int] = []
    if spec.use_reviews:
        if task != "classification":
            raise JobError("reviews carry labels, so they can train classifiers only")
        reviews = usable_review_ids(store, active_model(config, store, task).card["labels"])
        if not reviews:
            raise JobError("no review gives a usable label yet: agree with a prediction or correct its label "
                           "on the Diagnosis page first")
        argv += ["--review-ids", ",".join(map(str, reviews))] + ([] if spec.with_base_train else ["--reviews-only"])
    return argv, {"task": task, "model_name": name, "review_ids": json.dumps(reviews)}


def _validate(spec: JobSpec) -> None:
    if spec.arch not in list_models():
        raise JobError(f"Unknown architecture {spec.arch!r}. Available: {', '.join(list_models())}")
    if spec.dataset not in DATASETS:
        raise JobError(f"Unknown dataset {spec.dataset!r}. Available: {', '.join(DATASETS)}")
    task = get_spec(spec.arch).task
    if DATASETS[spec.dataset].task != task:
        raise JobError(f"{spec.arch} is a {task} model; dataset {spec.dataset} is for {DATASETS[spec.dataset].task}")
    for field, value, low in (("epochs", spec.epochs, 1), ("batch size", spec.batch_size, 2),
                              ("image size", spec.size, 16), ("GPUs", spec.gpus, 1)):
        if value < low:
            raise JobError(f"{field} must be at least {low} (got {value})")
    if not spec.lr > 0:
        raise JobError(f"the learning rate must be positive (got {spec.lr})")
    if spec.gpus > 1 and spec.gpus > visible_gpus():
        raise JobError(f"{spec.gpus} GPUs were asked for; {visible_gpus()} are visible")


def submit_job(config: Config, store: Store, spec: JobSpec, start: bool = True) -> int:
    """Queue a training job (audited) and start it if its device is free; returns the job id."""
    _validate(spec)
    device = _resolve_device(spec.device)
    with store.write() as db:
        job_id = db["jobs"].insert({"kind": "train", "status": "queued", "device": device, "actor": config.user,
                                    "created_at": utc_now(), "resumes": 0}).last_pk
        argv, extra = _argv(config, store, spec, job_id, device)
        db["jobs"].update(job_id, {"config": json.dumps({"spec": asdict(spec), "argv": argv}),
                                   "output": str(job_folder(config, job_id)), **extra})
        Store.audit(db, config.user, "job.start", "job", job_id,
                    {"dataset": spec.dataset, "arch": spec.arch, "epochs": spec.epochs, "device": device,
                     "reviews": len(json.loads(extra["review_ids"]))})
    if start:
        dispatch(config, store)
    return job_id


def _mark_dead(db) -> None:
    for row in list(db.query("SELECT id, pid FROM jobs WHERE status = 'running'")):
        if not alive(row["pid"]):
            db["jobs"].update(row["id"], {"status": "interrupted", "error": _DIED, "updated_at": utc_now()})


def _command(job: dict) -> list[str]:
    gpus = json.loads(job["config"])["spec"]["gpus"]
    program = ["-m", "engine.train.run", "--job", str(job["id"])]
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", *program]
    return [sys.executable, *program]


def _launch(config: Config, job: dict) -> int:
    return start_process(config, _command(job), job_folder(config, job["id"]) / "log.txt", job["actor"])


def dispatch(config: Config, store: Store) -> list[int]:
    """Mark dead jobs interrupted, then start the oldest queued job of every idle device; returns started ids."""
    started = []
    with store.write() as db:
        _mark_dead(db)
        busy = {r[0] for r in db.execute("SELECT DISTINCT device FROM jobs WHERE status = 'running'")}
        for job in list(db.query("SELECT * FROM jobs WHERE status = 'queued' ORDER BY id")):
            if job["device"] in busy:
                continue
            busy.add(job["device"])
            try:
                pid = _launch(config, job)
            except OSError as error:
                db["jobs"].update(job["id"], {"status": "failed", "error": f"could not start: {error}",
                                              "finished_at": utc_now()})
                continue
            db["jobs"].update(job["id"], {"status": "running", "pid": pid, "started_at": job["started_at"] or utc_now(),
                                          "updated_at": utc_now(), "error": None})
            started.append(job["id"])
    return started


def get_job(store: Store, job_id: int) -> dict:
    row = store.row("jobs", job_id)
    if row is None:
        raise JobError(f"training job {job_id} does not exist")
    row["config"] = json.loads(row["config"] or "{}")
    row["progress"] = json.loads(row["progress"] or "{}")
    row["review_ids"] = json.loads(row["review_ids"] or "[]")
    return row


def list_jobs(store: Store) -> list[dict]:
    """Every job, newest first, with dead ones marked interrupted."""
    with store.write() as db:
        _mark_dead(db)
    with store.read() as db:
        rows = list(db.query("SELECT id FROM jobs ORDER BY id DESC"))
    return [get_job(store, r["id"]) for r in rows]


def cancel_job(config: Config, store: Store, job_id: int) -> None:
    """Stop a queued or running job (its process group gets SIGTERM); audited; the queue moves on."""
    with store.write() as db:
        job = next(iter(db.query("SELECT status, pid FROM jobs WHERE id = ?", [job_id])), None)
        if job is None or job["status"] not in _ACTIVE:
            raise JobError(f"job {job_id} is {job['status'] if job else 'unknown'}; only queued or running jobs "
                           "can be cancelled")
        db["jobs"].update(job_id, {"status": "cancelled", "finished_at": utc_now(), "updated_at": utc_now(),
                                   "error": f"cancelled by {config.user}"})
        Store.audit(db, config.user, "job.cancel", "job", job_id, {"was": job["status"]})
    if job["status"] == "running" and alive(job["pid"]):
        try:
            os.killpg(job["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    dispatch(config, store)


def resume_job(config: Config, store: Store, job_id: int) -> None:
    """Queue an interrupted, cancelled or failed job again; it continues from its last complete epoch."""
    get_job(store, job_id)  # a clear error for an unknown id
    with store.write() as db:
        _mark_dead(db)
        status = db["jobs"].get(job_id)["status"]
        if status not in RESUMABLE:
            raise JobError(f"job {job_id} is {status}; only {', '.join(RESUMABLE)} jobs can be resumed")
        db.execute("UPDATE jobs SET status = 'queued', resumes = coalesce(resumes, 0) + 1, pid = NULL, error = NULL, "
                   "finished_at = NULL, updated_at = ? WHERE id = ?", [utc_now(), job_id])
        Store.audit(db, config.user, "job.resume", "job", job_id, {"was": status})
    dispatch(config, store)


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


def resource_usage(device: torch.device, process: psutil.Process) -> dict[str, float]:
    """CPU and memory of the training process; GPU memory and utilisation on CUDA."""
    usage = {"cpu_percent": process.cpu_percent(), "rss_mb": process.memory_info().rss / 2**20,
             "ram_percent": psutil.virtual_memory().percent}
    if device.type == "cuda":
        usage["gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        try:
            usage["gpu_util_percent"] = float(torch.cuda.utilization(device))
        except Exception:  # noqa: BLE001 - needs pynvml; utilisation is optional, memory is not
            pass
    return usage


class JobReporter:
    """The training process's side of a job: claim the row, report steps and epochs, finish or fail."""

    def __init__(self, config: Config, store: Store, job_id: int, device: torch.device):
        self.config, self.store, self.job_id, self.device = config, store, job_id, device
        self.process = psutil.Process()
        self.process.cpu_percent()  # the first call only starts the measurement
        self._epoch_started = self._last_write = time.time()
        self._pending_images, self._pending_s, self._losses = 0, 0.0, []
        self._epoch_seconds: list[float] = []
        self._progress: dict = {}  # what the row shows; step and epoch reports update their own keys

    def claim(self) -> dict:
        with self.store.write() as db:
            job = db["jobs"].get(self.job_id)
            if job["status"] != "running":  # cancelled between dispatch and start
                raise JobError(f"job {self.job_id} is {job['status']}, not running")
            db["jobs"].update(self.job_id, {"updated_at": utc_now()})
        job = get_job(self.store, self.job_id)
        self._progress = {k: v for k, v in job["progress"].items() if k not in ("phase", "eta_s")}  # a resume's
        return job

    def phase(self, text: str) -> None:
        """What the job is doing outside the training steps (loading data, the final evaluation)."""
        self._progress["phase"] = text
        with self.store.write() as db:
            db["jobs"].update(self.job_id, {"progress": json.dumps(self._progress), "updated_at": utc_now()})

    def start_epoch(self, epoch: int) -> None:
        self._epoch_started = self._step_started = time.time()

    def step(self, epoch: int, epochs: int, step: int, steps: int, loss: float, images: int) -> None:
        now = time.time()
        self._pending_images += images
        self._pending_s += now - self._step_started
        self._losses.append(loss)
        self._step_started = now
        if now - self._last_write < _STEP_WRITE_S and step < steps:
            return
        speed = self._pending_images / max(self._pending_s, 1e-9)
        done_epochs = epoch + step / steps
        per_epoch = (sum(self._epoch_seconds) / len(self._epoch_seconds) if self._epoch_seconds
                     else (now - self._epoch_started) / (step / steps))
        progress = {"phase": "training", "epoch": epoch, "epochs": epochs, "step": step, "steps": steps,
                    "images_per_s": round(speed, 2), "eta_s": round((epochs - done_epochs) * per_epoch, 1)}
        global_step = epoch * steps + step
        rows = [{"name": "loss", "value": sum(self._losses) / len(self._losses)},
                {"name": "images_per_s", "value": speed}]
        self._write(epoch, global_step, rows, progress)
        self._last_write, self._pending_images, self._pending_s, self._losses = now, 0, 0.0, []

    def epoch(self, record: dict, steps: int) -> None:
        self._epoch_seconds.append(record["seconds"])
        values = {k: v for k, v in record.items() if k not in ("epoch", "epochs", "best_epoch")
                  and isinstance(v, (int, float))}
        usage = resource_usage(self.device, self.process)
        rows = [{"name": k if k != "seconds" else "epoch_seconds", "value": float(v)}
                for k, v in {**values, **usage}.items()]
        progress = {"phase": "validated", "best_epoch": record["best_epoch"], "last_epoch": record["epoch"],
                    **{k: round(v, 1) for k, v in usage.items()}}
        self._write(record["epoch"], (record["epoch"] + 1) * steps, rows, progress)

    def _write(self, epoch: int, step: int, rows: list[dict], progress: dict) -> None:
        self._progress.update(progress)
        progress, now = self._progress, utc_now()
        with self.store.write() as db:
            db["job_metrics"].insert_all([{"job_id": self.job_id, "epoch": epoch, "step": step, "created_at": now, **r}
                                          for r in rows])
            db["jobs"].update(self.job_id, {"progress": json.dumps(progress), "updated_at": now})

    def finish(self, weights: Path) -> str:
        """Install the trained weights as a candidate model; the row says finished. Returns the model name."""
        models = self.config.home / "models"
        for source in (weights, weights.with_suffix(".json")):
            atomic_write(models / source.name, lambda tmp, source=source: shutil.copyfile(source, tmp))
        name = weights.stem
        with self.store.write() as db:
            db.execute("UPDATE jobs SET status = 'finished', model_name = ?, finished_at = ?, updated_at = ?, "
                       "error = NULL WHERE id = ? AND status = 'running'", [name, utc_now(), utc_now(), self.job_id])
            Store.audit(db, self.config.user, "job.finish", "job", self.job_id, {"model": name})
        return name

    def fail(self, message: str) -> None:
        """Record the failure, unless the job was cancelled (then the cancel is what happened)."""
        with self.store.write() as db:
            db.execute("UPDATE jobs SET status = 'failed', error = ?, finished_at = ?, updated_at = ? "
                       "WHERE id = ? AND status = 'running'", [message, utc_now(), utc_now(), self.job_id])
