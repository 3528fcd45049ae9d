"""The training process's side of a job: claim the row, report steps and epochs (with CPU/GPU usage),
install the model and finish, or fail with one line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import torch

from engine.context import Context
from engine.jobs.queue import claim_job, fail_job, finish_job, update_job
from engine.models.installed import install_candidate
from engine.store import utc_now

__all__ = ["JobReporter", "resource_usage"]

_STEP_WRITE_S = 1.0  # step metrics are written at most once a second (and at each epoch's last step)


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

    def __init__(self, ctx: Context, job_id: int, device: torch.device):
        self.ctx, self.store, self.job_id, self.device = ctx, ctx.store, job_id, device
        self.process = psutil.Process()
        self.process.cpu_percent()  # the first call only starts the measurement
        self._epoch_started = self._last_write = time.time()
        self._pending_images, self._pending_s, self._losses = 0, 0.0, []
        self._epoch_seconds: list[float] = []
        self._progress: dict = {}  # what the row shows; step and epoch reports update their own keys

    def claim(self):
        job = claim_job(self.store, self.job_id)
        self._progress = {k: v for k, v in job.progress.items() if k not in ("phase", "eta_s")}  # a resume's
        return job

    def phase(self, text: str) -> None:
        """What the job is doing outside the training steps (loading data, the final evaluation)."""
        self._progress["phase"] = text
        update_job(self.store, self.job_id, self._progress)

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

    def finish(self, weights: Path, install=install_candidate) -> str:
        """Install the trained weights (as a candidate model, by default); the row says finished. Returns the
        installed name."""
        name = install(self.ctx.config, weights)
        finish_job(self.store, self.job_id, self.ctx.actor, {"model": name}, model_name=name)
        return name

    def fail(self, message: str) -> None:
        fail_job(self.store, self.job_id, message)
