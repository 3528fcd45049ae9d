"""Training benchmarks.

throughput: images/s of the shipped classifier's recipe (resnet18, 224 px, batch 32, augmentation, class-
  weighted loss, AdamW, channels_last; AMP on CUDA) over real cxr_pneumonia training films, after warm-up
  steps, on the given device and threads. In the same run, the data pipeline alone (augmentation +
  normalisation + copy to the device of the same batches) in images/s: when it is several times faster
  than a training step, the pipeline is not the bottleneck.
time-to-auc: the shipped recipe from scratch (`python -m engine.train.run`, the card's exact arguments)
  with the wall time at which validation AUC first reaches the shipped card's best (0.9957), capped.
kills: kill -9 of a training job at 10 random moments (1-12 s after each (re)start) across a short run
  (48 films, 48 px, 20 epochs), resuming after each; reports how many kills hit a checkpoint write (a temp file
  left behind), whether
  every state.pt loaded, and whether the final per-epoch numbers and weights equal an uninterrupted run.
serving: what the dashboard's user feels while a job trains: the Diagnosis call (classify + single-pass
  Grad-CAM of a real film, the dashboard's torch threads) and a worklist page query, idle and then while a
  job of the shipped recipe (cxr_pneumonia, 224 px, at the jobs' niceness) trains with --job-threads.

Run: python -m bench.train throughput [--device cpu] [--threads 2] | time-to-auc [--minutes 15] | kills | serving
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import report
from engine.config import Config
from engine.context import Context
from engine.data.loaders import augmentation, load_dataset
from engine.inference.predict import PRECISIONS, autocast
from engine.jobs.queue import NICENESS, get_job, list_jobs, resume_job
from engine.jobs.training import TrainConfig, TrainingRequest, submit_training
from engine.models.checkpoint import load_state
from engine.models.installed import SHIPPED_DIR
from engine.models.preprocess import Preprocessing
from engine.models.registry import create_model
from engine.tasks.classification import class_weights

ROOT = Path(__file__).resolve().parent.parent
CARD = json.loads((SHIPPED_DIR / "cxr-pneumonia-resnet18.json").read_text())


def throughput(device: torch.device, steps: int, warmup: int, precision: str = "auto") -> dict:
    prep = Preprocessing(size=224, mean=CARD["preprocessing"]["mean"], std=CARD["preprocessing"]["std"])
    train = load_dataset("cxr_pneumonia", prep, Config.from_env().data_dir, only=("train",)).sets["train"]
    model = create_model("resnet18", num_classes=2).to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    loss_fn = torch.nn.CrossEntropyLoss(weight=class_weights(train.labels, 2)).to(device)
    augment, batch = augmentation(), 32
    generator = torch.Generator().manual_seed(0)

    def batches():
        while True:
            idx = torch.randperm(len(train), generator=generator)[:batch]
            x, y = train.batch(idx, augment)
            yield prep.normalize(x).to(device, memory_format=torch.channels_last, non_blocking=True), y.to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    source = batches()
    step_s = []
    for i in range(warmup + steps):
        x, y = next(source)
        sync()
        start = time.perf_counter()
        with autocast(device, precision):
            loss = loss_fn(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        sync()
        if i >= warmup:
            step_s.append(time.perf_counter() - start)
    data_s = []
    for _ in range(steps):
        start = time.perf_counter()
        next(source)
        sync()
        data_s.append(time.perf_counter() - start)
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {"device": str(device), "precision": precision, "threads": torch.get_num_threads(), "batch_size": batch,
            "steps": steps,
            "train_step_images_per_s": round(batch / median(step_s), 2),
            "end_to_end_images_per_s": round(batch / (median(step_s) + median(data_s)), 2),
            "data_pipeline_images_per_s": round(batch / median(data_s), 2),
            "data_share_of_step": round(median(data_s) / (median(step_s) + median(data_s)), 3),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


def time_to_auc(scratch: Path, minutes: float, threads: int) -> dict:
    target = CARD["training"]["best_val_auc"]
    argv = [sys.executable, "-u", "-m", "engine.train.run", "--dataset", "cxr_pneumonia", "--model", "resnet18",
            "--size", "224", "--epochs", "30", "--patience", "8", "--threads", str(threads), "--name", "bench",
            "--output", str(scratch)]
    started = time.time()
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    epochs, reached = [], None
    for line in process.stdout:
        if not line.startswith("{\"epoch\""):
            continue
        record = json.loads(line)
        epochs.append({"epoch": record["epoch"] + 1, "val_auc": record["val_auc"],
                       "elapsed_s": round(time.time() - started, 1)})
        print(epochs[-1], flush=True)
        if reached is None and record["val_auc"] >= round(target, 5):  # the log rounds to 5 decimals
            reached = epochs[-1]
        if reached or time.time() - started > minutes * 60:
            process.kill()
            break
    process.wait()
    return {"target_val_auc": target, "threads": threads, "cap_minutes": minutes, "reached": reached,
            "epochs": epochs, "command": " ".join(argv[2:])}


def _data_folder(root: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.conftest import write_cxr_subset  # the tests' 48-film subset

    return write_cxr_subset(root / "data")


def _wait_end(store, job_id, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = next(j for j in list_jobs(store) if j.id == job_id)
        if job.status not in ("queued", "running"):
            return job
        time.sleep(0.1)
    raise RuntimeError(f"job {job_id} did not end")


def kills(root: Path, n: int, seed: int) -> dict:
    os.environ["RADLENS_HOME"] = str(root / "home")
    config = Config.from_env()
    ctx = Context.open(config)
    store = ctx.store
    spec = TrainingRequest(TrainConfig(dataset="folder", model="resnet18", size=48, epochs=20, batch_size=8,
                                       patience=100, data_path=_data_folder(root)))
    reference = submit_training(ctx, spec)
    started = time.time()
    assert _wait_end(store, reference).status == "finished"
    duration = time.time() - started
    rng = random.Random(seed)
    job_id = submit_training(ctx, spec)
    folder = config.home / "jobs" / str(job_id)
    results, seen = [], set()
    for k in range(n):
        # From each (re)start: start-up and data loading take ~6 s here, an epoch ~1 s, so the kills land in
        # loading, mid-epoch, validation and checkpoint writes, and ten of them span the run.
        delay = rng.uniform(1.0, 12.0)
        time.sleep(delay)
        job = get_job(store, job_id)
        if job.status != "running":
            results.append({"kill": k + 1, "delay_s": round(delay, 2), "killed": False, "status": job.status})
            break
        epoch_before = job.progress.get("last_epoch")
        os.kill(job.pid, signal.SIGKILL)
        time.sleep(0.3)
        temps = sorted(p.name for p in folder.glob(".*.tmp") if p.name not in seen)  # new ones: this kill's
        seen.update(temps)
        state = folder / "state.pt"
        try:
            loaded_epoch = load_state(state)["epoch"] if state.exists() else None
            loads = True
        except Exception:  # noqa: BLE001 - a corrupt checkpoint is exactly what this counts
            loaded_epoch, loads = None, False
        status = _wait_end(store, job_id, 10).status
        results.append({"kill": k + 1, "delay_s": round(delay, 2), "killed": True, "status_after": status,
                        "last_logged_epoch": epoch_before, "state_epoch": loaded_epoch, "state_loads": loads,
                        "mid_write": bool(temps), "temp_files": temps})
        print(results[-1], flush=True)
        resume_job(ctx, job_id)
    final = _wait_end(store, job_id)
    lines = lambda j: [json.loads(x) for x in  # noqa: E731
                       (config.home / "jobs" / str(j) / "metrics.jsonl").read_text().splitlines()]
    resumed, uninterrupted = lines(job_id), lines(reference)
    a, b = (load_state(config.home / "jobs" / str(j) / "state.pt")["model"] for j in (job_id, reference))
    return {
        "kills": results, "killed": sum(r["killed"] for r in results),
        "resumable": sum(r["killed"] and r["status_after"] == "interrupted" and r["state_loads"] for r in results),
        "corrupt_checkpoints": sum(r["killed"] and not r["state_loads"] for r in results),
        "mid_checkpoint_write": sum(r.get("mid_write", False) for r in results),
        "final_status": final.status, "epochs_logged": [r["epoch"] for r in resumed],
        "max_abs_diff_val_auc": max(abs(x["val_auc"] - y["val_auc"]) for x, y in zip(resumed, uninterrupted)),
        "max_abs_diff_train_loss": max(abs(x["train_loss"] - y["train_loss"]) for x, y in zip(resumed, uninterrupted)),
        "max_abs_diff_weights": max(float((a[k].float() - b[k].float()).abs().max()) for k in a),
        "uninterrupted_run_s": round(duration, 1),
    }


def serving(root: Path, repeats: int, job_threads: int) -> dict:
    from bench.common import summary, timed
    from engine.cases.worklist import WorklistQuery, query_worklist
    from engine.data.loaders import gray_of_file
    from engine.jobs.queue import cancel_job
    from engine.tasks.classification import load_classifier

    os.environ["RADLENS_HOME"] = str(root / "home")
    config = Config.from_env()
    ctx = Context.open(config)
    store = ctx.store
    classifier = load_classifier(ctx)
    with open(config.data_dir / "cxr_pneumonia" / "manifest.csv", newline="") as f:
        test_film = next(r["path"] for r in csv.DictReader(f) if r["demo_split"] == "test")
    film = gray_of_file(config.data_dir / "cxr_pneumonia" / test_film)
    classifier.classify(film)  # warm-up

    def measure() -> dict:
        return {"diagnosis": summary(timed(lambda: classifier.classify(film), repeats)),
                "worklist": summary(timed(lambda: query_worklist(store, WorklistQuery()), repeats))}

    idle = measure()
    job_id = submit_training(ctx, TrainingRequest(TrainConfig(dataset="cxr_pneumonia", model="resnet18", epochs=1,
                                                                 threads=job_threads)))
    deadline = time.time() + 300
    while not get_job(store, job_id).progress.get("step") and time.time() < deadline:
        time.sleep(0.5)
    busy = measure()
    speed = get_job(store, job_id).progress.get("images_per_s")
    cancel_job(ctx, job_id)
    return {"idle": idle, "while_training": busy, "job_threads": job_threads or torch.get_num_threads(),
            "job_niceness": NICENESS, "job_images_per_s": speed, "dashboard_threads":
        torch.get_num_threads(), "diagnosis_slowdown": round(busy["diagnosis"]["median_ms"] /
                                                            idle["diagnosis"]["median_ms"], 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("throughput", "time-to-auc", "kills", "serving"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--minutes", type=float, default=15)
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--seed", type=int, default=6)
    p.add_argument("--job-threads", type=int, default=0, help="serving: the job's threads (0: all cores)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="throughput: training arithmetic")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.what == "throughput":
        report(f"train_throughput_{args.device}_{args.threads}t_{args.precision}",
               throughput(torch.device(args.device), args.steps, args.warmup, args.precision))
        return
    # The other modes write checkpoints (~0.5 GB for kills) into a scratch folder removed afterwards.
    with tempfile.TemporaryDirectory(prefix=f"bench-{args.what}-", ignore_cleanup_errors=True) as tmp:
        scratch = Path(tmp)
        if args.what == "time-to-auc":
            report("train_time_to_auc", time_to_auc(scratch, args.minutes, args.threads))
        elif args.what == "kills":
            report("train_kills", kills(scratch, args.n, args.seed))
        else:
            report(f"train_serving_job{args.job_threads}t", serving(scratch, args.steps, args.job_threads))


if __name__ == "__main__":
    main()
