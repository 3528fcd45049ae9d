"""The training program: `python -m engine.train.run --dataset cxr_pneumonia --model resnet18 ...`.

One program for both tasks: the architecture's task (registry) picks the loss, the validation score used
for early stopping (AUC or Dice) and what the card reports (TASKS below); the loop, resume, checkpoints
and logging are shared. Used for the shipped models and by background jobs. Writes into --output:
  metrics.jsonl   one line per epoch (train loss, validation loss and score, learning rate, seconds)
  progress.json   the latest state, rewritten atomically (what the dashboard polls)
  state.pt        model + optimizer + scheduler + RNG state after the last epoch (--resume continues it)
  <name>.safetensors + <name>.json   the final model and its card (best validation-score epoch; for
                  a classifier also temperature-calibrated, operating and OOD thresholds set on validation)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import random
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from sklearn.metrics import roc_auc_score

from engine.config import Config
from engine.errors import EngineError, TrainingDiverged, is_disk_full, short_reason
from engine.ingest import open_store
from engine.models.checkpoint import (atomic_write, load_model, load_state, remove_stale_temps, save_model,
                                      save_state)
from engine.models.ood import fit_gaussian, mahalanobis
from engine.models.preprocess import Preprocessing
from engine.models.registry import cam_layer, create_model, get_spec, list_models
from engine.train import segmentation
from engine.train.data import DATASETS, augmentation, load_dataset, mask_augmentation
from engine.train.loop import class_weights, predict, train_one_epoch, warmup_cosine
from engine.train.metrics import fit_temperature, split_report, threshold_for_specificity
from engine.train.reviews import add_reviews

__all__ = ["get_args_parser", "main"]

OOD_QUANTILE = 0.99  # validation images above the threshold: 1 %


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a RadLens classifier or segmentation model and write its "
                                "weights and model card")
    p.add_argument("--dataset", default="cxr_pneumonia", choices=list(DATASETS))
    p.add_argument("--data-path", type=Path, help="folder for --dataset folder (manifest.csv or split/label/files)")
    p.add_argument("--model", default="resnet18", choices=list_models(), help="a registered architecture; its "
                   "task (classification or segmentation) must be the dataset's")
    p.add_argument("--pretrained", action="store_true", help="start from ImageNet weights in the local torch cache")
    p.add_argument("--size", type=int, default=224, help="square input size in pixels")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=8, help="stop after this many epochs without a better "
                   "validation score (AUC for classification, Dice for segmentation)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--name", help="model name (default: <dataset>-<model>)")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--output", type=Path, help="run folder (default: $RADLENS_HOME/runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue from <output>/state.pt at its epoch + 1")
    p.add_argument("--half", action="store_true", help="store fp16 weights (metrics are computed with them)")
    p.add_argument("--init-from", type=Path, help="fine-tune: start from these installed weights (same architecture; "
                   "their normalisation is kept)")
    p.add_argument("--no-augment", action="store_true", help="train on the images as they are")
    p.add_argument("--balance", choices=("weights", "none"), default="weights",
                   help="classification: inverse-frequency class weights in the loss (weights) or none")
    p.add_argument("--review-ids", type=lambda text: [int(i) for i in text.split(",") if i],
                   help="comma-separated review ids whose cases join the training split (classification)")
    p.add_argument("--reviews-only", action="store_true", help="train on the reviewed cases only, without the "
                   "dataset's own training split (validation and test stay the dataset's)")
    p.add_argument("--job", type=int, help="run training job ID of the store (its arguments come from the job)")
    return p


def _seed(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _hardware(device: torch.device, world: int) -> str:
    processes = f" x {world} processes (torchrun)" if world > 1 else ""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}{processes}, torch {torch.__version__}"
    return (f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads{processes}, "
            f"torch {torch.__version__}")


def _command(args: argparse.Namespace, world: int) -> str:
    """The command that reproduces this run (a job's arguments, without --job and --resume)."""
    argv = [a for a in (getattr(args, "command_argv", None) or sys.argv[1:]) if a != "--resume"]
    launcher = f"torchrun --nproc-per-node={world}" if world > 1 else "python"
    return f"{launcher} -m engine.train.run " + shlex.join(argv)


def _distributed(device_arg: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun (WORLD_SIZE > 1) joins the process group: NCCL with one GPU
    per process when CUDA is used, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = device_arg == "cuda" or (device_arg == "auto" and torch.cuda.is_available())
    if world == 1:
        return 0, 1, torch.device("cuda" if cuda else "cpu") if device_arg == "auto" else torch.device(device_arg)
    local = int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local)
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return torch.distributed.get_rank(), world, torch.device(f"cuda:{local}" if cuda else "cpu")


def _rank0_says(flag: bool, world: int, device: torch.device) -> bool:
    """Rank 0's decision (e.g. early stopping), the same on every rank."""
    if world == 1:
        return flag
    value = torch.tensor([int(flag)], device=device)
    torch.distributed.broadcast(value, src=0)
    return bool(value.item())


def _log(out: Path, record: dict) -> None:
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    atomic_write(out / "progress.json", lambda tmp: tmp.write_text(json.dumps(record)))
    print(json.dumps(record), flush=True)


def _positive_prob(logits: torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    return torch.softmax(logits / temperature, dim=1)[:, 1].numpy()


def main(args: argparse.Namespace, job=None) -> dict | None:
    """Train, checkpoint every epoch, and write the model and its card (rank 0); returns the card (rank 0).
    `job` (a jobs.JobReporter) also receives step and epoch metrics for the dashboard."""
    started = time.time()
    config = Config.from_env()
    name = args.name or f"{args.dataset}-{args.model}"
    out = args.output or config.home / "runs" / name
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world, device = _distributed(args.device)
    writer = rank == 0
    if job:
        job.device = device
    if writer:
        remove_stale_temps(out)  # left by a process killed mid-write; the file under the real name is intact
    generator = _seed(args.seed)  # the same shuffling order on every rank ...
    torch.manual_seed(args.seed + rank)  # ... but each rank its own augmentation draws
    task_name = get_spec(args.model).task
    if DATASETS[args.dataset].task != task_name:
        raise EngineError(f"{args.model} is a {task_name} model; dataset {args.dataset!r} is for "
                          f"{DATASETS[args.dataset].task}")
    task = TASKS[task_name]

    if job:
        job.phase("loading data")
    # Normalisation statistics come from the training split at the model's input size.
    splits = load_dataset(args.dataset, Preprocessing(size=args.size), config.data_dir, args.data_path)
    base = load_model(args.init_from) if args.init_from else None
    reviews = (add_reviews(splits, config, open_store(config), args.review_ids, Preprocessing(size=args.size),
                           not args.reviews_only) if args.review_ids else None)
    train, val = splits.sets["train"], splits.sets["val"]
    prep = (Preprocessing(size=args.size, mean=base.preprocessing.mean, std=base.preprocessing.std) if base else
            Preprocessing(size=args.size, mean=round(float(train.images.mean()), 4),
                          std=round(float(train.images.std()), 4)))
    n_classes = len(splits.label_names)
    if n_classes != 2:  # the card's metrics, threshold and calibration are defined for two classes
        raise EngineError(f"the training program handles two labels (negative, positive); got {splits.label_names}")

    model = create_model(args.model, num_classes=n_classes, pretrained=args.pretrained)
    if base:
        if base.card["arch"] != args.model:
            raise EngineError(f"--init-from {base.name} is a {base.card['arch']}, not a {args.model}")
        model.load_state_dict(base.model.state_dict())
    model = model.to(device, memory_format=torch.channels_last)
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                    else None) if world > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = -(-(len(train) // world) // args.batch_size)
    scheduler = warmup_cosine(optimizer, int(args.warmup_epochs * steps), args.epochs * steps)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    loss_fn = task.loss(train, args.balance).to(device)
    augment = torchvision.transforms.v2.Identity() if args.no_augment else task.augmentation()

    start_epoch, best = 0, {"score": -1.0, "epoch": -1, "state": None}
    if args.resume and (out / "state.pt").is_file():
        state = load_state(out / "state.pt")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, best = state["epoch"] + 1, state["best"]

    epochs_run = start_epoch
    for epoch in range(start_epoch, args.epochs):
        epochs_run = epoch + 1
        t0 = time.time()
        if job:
            job.start_epoch(epoch)
        on_step = (lambda step, n, loss, images: job.step(epoch, args.epochs, step, n, loss, images)) if job else None
        try:
            train_loss = train_one_epoch(net, train, prep, loss_fn, optimizer, scheduler, scaler, augment,
                                         args.batch_size, generator, device, (rank, world), on_step)
        except TrainingDiverged as error:
            kept = f"epoch {epoch} (kept)" if epoch else "none yet"
            raise TrainingDiverged(f"{error} of epoch {epoch + 1}: training stopped. Last complete checkpoint: "
                                   f"{kept}. Start again with a lower learning rate than {args.lr:g}") from None
        stop = False
        if writer:
            scores = task.validate(model, val, prep, device, args.model)
            score = scores.pop("score")
            if score > best["score"]:
                best = {"score": score, "epoch": epoch,
                        "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            record = {"epoch": epoch, "epochs": args.epochs, "train_loss": round(train_loss, 5), **scores,
                      "best_epoch": best["epoch"], "lr": optimizer.param_groups[0]["lr"],
                      "seconds": round(time.time() - t0, 1)}
            save_state(out / "state.pt", {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "epoch": epoch, "best": best})
            _log(out, record)  # after the checkpoint: a logged epoch is always a resumable one
            if job:
                job.epoch(record, steps)
            stop = epoch - best["epoch"] >= args.patience
        if _rank0_says(stop, world, device):
            break

    if world > 1:
        # Drop DDP's reducer while the group is alive, after every rank's last collective: freeing it at
        # exit instead deadlocks gloo's worker threads against the GIL.
        torch.distributed.barrier()
        del net
        torch.distributed.destroy_process_group()
    if not writer:
        return None

    if job:
        job.phase("evaluating the best epoch on the held-out splits and writing the model card")
    model.load_state_dict(best["state"])
    if args.half:  # evaluate exactly the weights that will be stored
        model.load_state_dict({k: v.half().float() if v.is_floating_point() else v
                               for k, v in model.state_dict().items()})
    card = task.describe(model, args, splits, prep, device)
    card.update({"name": name, "version": args.version, "arch": args.model,
                 "model_args": {"num_classes": n_classes}, "labels": splits.label_names,
                 "preprocessing": prep.to_dict()})
    card["data"] = {"dataset": args.dataset, "description": splits.description, "counts": splits.counts()}
    if reviews:
        card["data"]["reviews"] = reviews
        card["data"]["description"] += (f"; training split {'plus' if reviews['with_base_train'] else 'replaced by'} "
                                        f"{len(reviews['used'])} clinician-reviewed case(s)")
    card["training"] = {
        "command": _command(args, world),
        "best_epoch": best["epoch"], f"best_{task.score}": best["score"], "epochs_run": epochs_run,
        "optimizer": f"AdamW lr {args.lr} wd {args.weight_decay}, warmup {args.warmup_epochs} epoch + cosine",
        "loss": task.loss_text if args.balance == "weights" else task.loss_text.split(" with ")[0],
        "augmentation": "none" if args.no_augment else task.augmentation_text,
        "seed": args.seed, "batch_size": args.batch_size, "pretrained": args.pretrained,
        "fine_tuned_from": {"name": base.name, "version": base.version, "weights_sha256": base.sha256} if base else None,
        "processes": world, "job": args.job,
        "weights_dtype": "float16" if args.half else "float32",
        "hardware": _hardware(device, world), "wall_time_s": round(time.time() - started, 1),
    }
    card["limitations"] = list(splits.limitations)
    extras = card.pop("_extras", {})
    sha = save_model(out / f"{name}.safetensors", model.cpu(), card, extras=extras, half=args.half)
    print(json.dumps({"weights": str(out / f"{name}.safetensors"), "sha256": sha,
                      "test": task.headline(card["metrics"]["test"])}), flush=True)
    return card


def _validate_classifier(model, val, prep, device, arch) -> dict:
    logits, _ = predict(model, val.images, prep, cam_layer(model, arch), device)
    auc = float(roc_auc_score(val.labels.numpy(), _positive_prob(logits)))
    return {"score": auc, "val_loss": round(float(torch.nn.functional.cross_entropy(logits, val.labels)), 5),
            "val_auc": round(auc, 5)}


def _describe_classifier(model, args, splits, prep, device) -> dict:
    """Temperature, operating threshold and OOD threshold fitted on validation; the test split reported."""
    sets, feature_layer = splits.sets, cam_layer(model, args.model)
    outputs = {s: predict(model, sets[s].images, prep, feature_layer, device) for s in ("train", "val", "test")}
    labels = {s: sets[s].labels.numpy() for s in sets}
    temperature = fit_temperature(outputs["val"][0], sets["val"].labels)
    threshold = threshold_for_specificity(labels["val"], _positive_prob(outputs["val"][0], temperature), 0.90)
    mean, precision = fit_gaussian(outputs["train"][1])
    val_ood = mahalanobis(outputs["val"][1], mean, precision).numpy()
    ood_threshold = float(np.quantile(val_ood, OOD_QUANTILE))
    metrics = {s: split_report(outputs[s][0], labels[s], temperature, threshold) for s in ("val", "test")}
    return {
        "task": "classification", "positive_label": splits.label_names[1],
        "calibration": {"method": "temperature scaling", "temperature": temperature, "fitted_on": "val"},
        "operating_point": {"threshold": threshold, "applies_to": "calibrated probability of "
                            f"{splits.label_names[1]}", "rule": "lowest threshold with validation specificity >= 0.90"},
        "ood": {"method": "Mahalanobis distance of pooled CAM-layer features to the training set",
                "layer": get_spec(args.model).cam_layer, "threshold": ood_threshold,
                "rule": f"{OOD_QUANTILE:.0%} quantile of the validation images' scores"},
        "cam": {"method": "gradcam", "layer": get_spec(args.model).cam_layer, "target": "predicted class"},
        "metrics": metrics,
        "_extras": {"ood_mean": mean, "ood_precision": precision},
    }


@dataclass(frozen=True)
class Task:
    """What differs between training a classifier and a segmentation model; the rest is shared."""

    loss: Callable  # (training set, --balance) -> loss module
    loss_text: str
    augmentation: Callable
    augmentation_text: str
    validate: Callable  # (model, val set, prep, device, arch) -> {"score": early-stopping score, ...logged}
    score: str  # the score's name in the card
    describe: Callable  # (model, args, splits, prep, device) -> the task's part of the card
    headline: Callable[[dict], dict]  # the test metrics printed at the end


TASKS = {
    "classification": Task(
        loss=lambda train, balance: torch.nn.CrossEntropyLoss(
            weight=class_weights(train.labels, 2) if balance == "weights" else None),
        loss_text="cross-entropy with inverse-frequency class weights",
        augmentation=augmentation,
        augmentation_text="affine (rotate <= 7 deg, shift <= 5 %, scale 0.92-1.08), brightness/contrast 0.15; "
                          "no flips",
        validate=_validate_classifier, score="val_auc", describe=_describe_classifier,
        headline=lambda m: {"auc": m["auc"]}),
    "segmentation": Task(
        loss=lambda train, balance: segmentation.seg_loss(),
        loss_text="MONAI DiceCELoss (Dice + cross-entropy, softmax, equal weights)",
        augmentation=mask_augmentation,
        augmentation_text="joint image/mask: horizontal flip, affine (rotate <= 15 deg, shift <= 5 %, scale "
                          "0.9-1.1), brightness/contrast 0.2",
        validate=lambda model, val, prep, device, arch: segmentation.validate(model, val, prep, device),
        score="val_dice",
        describe=lambda model, args, splits, prep, device: segmentation.describe(model, args.model, splits, prep,
                                                                                  device),
        headline=lambda m: {"dice": m["dice"]["mean"], "hc_abs_error_mm": m["hc_abs_error_mm"]["mean"]}),
}

def failure_message(error: BaseException, args: argparse.Namespace) -> str:
    """One line saying what went wrong and what to do, for the job row and the log."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return (f"CUDA ran out of memory at batch size {args.batch_size} (image size {args.size}): start the job again "
                f"with a batch size of {max(1, args.batch_size // 2)} or smaller")
    if is_disk_full(error):
        # A failed write() carries no file name; the folder is what the user needs to free space in.
        folder = Path(error.filename).parent if error.filename else (args.output or "$RADLENS_HOME/runs")
        return (f"the disk is full (writing to {folder}): the job stopped and the last complete checkpoint is "
                "intact; free space there and resume")
    if isinstance(error, EngineError):
        return str(error)
    return f"{type(error).__name__}: {short_reason(error)}"


class _Cancelled(SystemExit):
    """SIGTERM from cancel_job: unwinds through the atomic writers so no temp file is left."""


def _on_sigterm(signum, frame):
    raise _Cancelled(128 + signum)


def run_job(job_id: int) -> None:
    """Run job `job_id` in this process (or as one rank of its torchrun group) and record how it ended."""
    from engine.train import jobs  # jobs starts this program; importing it at the top would be circular

    config = Config.from_env()
    store = open_store(config)
    rank = int(os.environ.get("RANK", "0"))
    job = jobs.get_job(store, job_id)
    args = get_args_parser().parse_args([*job["config"]["argv"], "--resume"])
    args.command_argv, args.job = job["config"]["argv"], job_id
    signal.signal(signal.SIGTERM, _on_sigterm)
    os.nice(jobs.NICENESS - os.nice(0))
    reporter = None
    try:
        if rank == 0:
            reporter = jobs.JobReporter(config, store, job_id, torch.device("cpu"))
            reporter.claim()
        card = main(args, reporter)
        if reporter:
            reporter.finish(args.output / f"{card['name']}.safetensors")
    except _Cancelled:
        print("cancelled", flush=True)
        raise
    except BaseException as error:
        message = failure_message(error, args)
        print(f"error: {message}", flush=True)
        if reporter:
            reporter.fail(message)
        raise SystemExit(1) from None
    finally:
        if rank == 0:
            jobs.dispatch(config, store)  # the next queued job on this device


if __name__ == "__main__":
    parsed = get_args_parser().parse_args()
    try:
        if parsed.job is not None:
            run_job(parsed.job)
        else:
            main(parsed)
    except EngineError as error:
        sys.exit(f"error: {error}")
