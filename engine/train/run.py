"""The training program: `python -m engine.train.run --dataset cxr_pneumonia --model resnet18 ...`.

One program for every task: the architecture's task (engine/tasks) picks the loss, the validation score
used for early stopping (AUC or Dice) and what the card reports; the loop, resume, checkpoints and logging
are shared. Its arguments are a `TrainConfig` (engine/jobs/training.py), whose fields also generate the
command line. Used for the shipped models and by background jobs. Writes into the run folder:
  metrics.jsonl   one line per epoch (train loss, validation loss and score, learning rate, seconds)
  progress.json   the latest state, rewritten atomically
  state.pt        model + optimizer + scheduler + RNG state after the last epoch (--resume continues it)
  <name>.safetensors + <name>.json   the final model and its card (best validation-score epoch; for
                  a classifier also temperature-calibrated, operating and OOD thresholds set on validation)
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision

from engine.config import Config
from engine.context import Context
from engine.data.loaders import Splits, load_dataset
from engine.data.reviews import add_reviews
from engine.errors import (
    DatasetError,
    EngineError,
    ModelMismatch,
    TrainingDiverged,
    is_disk_full,
    short_reason,
)
from engine.inference.predict import model_on_device
from engine.jobs.queue import dispatch, get_job, lower_priority
from engine.jobs.training import TrainConfig, get_args_parser
from engine.models.card import ModelCard
from engine.models.checkpoint import (
    LoadedModel,
    atomic_write,
    load_model,
    load_state,
    remove_stale_temps,
    save_model,
    save_state,
)
from engine.models.installed import active_model
from engine.models.preprocess import Preprocessing
from engine.models.registry import create_model
from engine.models.scope import DATASET_SCOPES, SCOPES
from engine.synthetic.training import add_synthetic
from engine.tasks import Task, get_task
from engine.tasks.classification import OutOfFold
from engine.train.loop import train_one_epoch, warmup_cosine
from engine.train.progress import JobReporter

__all__ = ["get_args_parser", "main", "cli", "failure_message", "run_job", "run_reported"]


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


@dataclass
class _Run:
    """What one training process holds between its phases."""

    cfg: TrainConfig
    ctx: Context
    job: JobReporter | None
    rank: int
    world: int
    device: torch.device
    out: Path
    task: Task
    started: float = field(default_factory=time.time)
    splits: Splits | None = None
    prep: Preprocessing | None = None
    base: LoadedModel | None = None
    reviews: dict | None = None
    synthetic: dict | None = None  # the synthetic images added to the training split (engine.synthetic.training)
    model: torch.nn.Module | None = None
    best: dict = field(default_factory=lambda: {"score": -1.0, "epoch": -1, "state": None})
    epochs_run: int = 0

    @property
    def writer(self) -> bool:
        return self.rank == 0


def _start(cfg: TrainConfig, ctx: Context, job: JobReporter | None) -> tuple[_Run, torch.Generator]:
    """Threads, process group, run folder and seeds."""
    out = cfg.output or ctx.config.home / "runs" / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, world, device = _distributed(cfg.device)
    if job:
        job.device = device
    if rank == 0:
        remove_stale_temps(out)  # left by a process killed mid-write; the file under the real name is intact
    generator = _seed(cfg.seed)  # the same shuffling order on every rank ...
    torch.manual_seed(cfg.seed + rank)  # ... but each rank its own augmentation draws
    return _Run(cfg, ctx, job, rank, world, device, out, get_task(cfg.task)), generator


def _load_data(run: _Run) -> None:
    """The splits (plus reviewed cases), the base model to fine-tune, and the preprocessing."""
    cfg = run.cfg
    if run.job:
        run.job.phase("loading data")
    # Normalisation statistics come from the training split at the model's input size.
    shape = Preprocessing(size=cfg.size, height=cfg.height, depth=cfg.depth)
    run.splits = load_dataset(cfg.dataset, shape, run.ctx.config.data_dir, cfg.data_path)
    run.base = load_model(cfg.init_from) if cfg.init_from else None
    if cfg.review_ids:
        run.reviews = add_reviews(run.splits, run.ctx, cfg.review_ids, shape, not cfg.reviews_only)
    if cfg.synthetic:
        if run.job:
            run.job.phase("generating and screening the synthetic images")
        classifier = load_model(active_model(run.ctx, "classification").path)
        run.synthetic = add_synthetic(run.splits, run.ctx.config, classifier, shape, cfg.synthetic, cfg.generator,
                                      cfg.seed)
    train = run.splits.sets["train"]
    stats = run.base.preprocessing if run.base else None
    run.prep = dataclasses.replace(shape, mean=stats.mean if stats else round(float(train.images.mean()), 4),
                                   std=stats.std if stats else round(float(train.images.std()), 4))
    if len(run.splits.label_names) != 2:  # the card's metrics, threshold and calibration need two classes
        raise DatasetError(f"the training program handles two labels (negative, positive); got "
                           f"{run.splits.label_names}")


def _build_model(run: _Run) -> None:
    cfg = run.cfg
    model = create_model(cfg.model, num_classes=2, pretrained=cfg.pretrained)
    if run.base:
        if run.base.card.arch != cfg.model:
            raise ModelMismatch(f"--init-from {run.base.name} is a {run.base.card.arch}, not a {cfg.model}")
        model.load_state_dict(run.base.model.state_dict())
    run.model = model_on_device(model, run.device)


def _train(run: _Run, generator: torch.Generator, resume: bool) -> None:
    """Epochs until the last or early stopping; every epoch checkpointed and logged by rank 0."""
    cfg, model, device = run.cfg, run.model, run.device
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                    else None) if run.world > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train = run.splits.sets["train"]
    steps = -(-(len(train) // run.world) // cfg.batch_size)
    scheduler = warmup_cosine(optimizer, int(cfg.warmup_epochs * steps), cfg.epochs * steps)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    loss_fn = run.task.loss(train, cfg).to(device)
    augment = run.task.augmentation() if cfg.augment else torchvision.transforms.v2.Identity()
    start_epoch = 0
    if resume and (run.out / "state.pt").is_file():
        state = load_state(run.out / "state.pt")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, run.best = state["epoch"] + 1, state["best"]
        run.started -= state.get("elapsed_s", 0.0)  # the card's wall time covers every segment of a resumed run
    run.epochs_run = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        run.epochs_run, t0 = epoch + 1, time.time()
        if run.job:
            run.job.start_epoch(epoch)
        on_step = (lambda step, n, loss, images: run.job.step(epoch, cfg.epochs, step, n, loss, images)) \
            if run.job else None
        try:
            train_loss = train_one_epoch(net, train, run.prep, loss_fn, optimizer, scheduler, scaler, augment,
                                         cfg.batch_size, generator, device, (run.rank, run.world), on_step,
                                         cfg.precision)
        except TrainingDiverged as error:
            kept = f"epoch {epoch} (kept)" if epoch else "none yet"
            raise TrainingDiverged(f"{error} of epoch {epoch + 1}: training stopped. Last complete checkpoint: "
                                   f"{kept}. Start again with a lower learning rate than {cfg.lr:g}") from None
        stop = run.writer and _end_epoch(run, epoch, train_loss, t0, steps, optimizer, scheduler, generator)
        if _rank0_says(stop, run.world, device):
            break
    if run.world > 1:
        # Drop DDP's reducer while the group is alive, after every rank's last collective: freeing it at
        # exit instead deadlocks gloo's worker threads against the GIL.
        torch.distributed.barrier()
        del net
        torch.distributed.destroy_process_group()


def _end_epoch(run: _Run, epoch: int, train_loss: float, t0: float, steps: int, optimizer, scheduler,
               generator: torch.Generator) -> bool:
    """Validate, keep the best state, checkpoint, log (rank 0); returns whether to stop early. Under
    cross-validation the last epoch is kept and nothing stops early: the fixed schedule is what the
    out-of-fold predictions measured."""
    scores = run.task.validate(run.model, run.splits.sets["val"], run.prep, run.device, run.cfg.model)
    score = scores.pop("score")
    if score > run.best["score"] or run.cfg.folds:
        run.best = {"score": score, "epoch": epoch,
                    "state": {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}}
    record = {"epoch": epoch, "epochs": run.cfg.epochs, "train_loss": round(train_loss, 5), **scores,
              "best_epoch": run.best["epoch"], "lr": optimizer.param_groups[0]["lr"],
              "seconds": round(time.time() - t0, 1)}
    save_state(run.out / "state.pt", {
        "model": run.model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "epoch": epoch, "best": run.best,
        "elapsed_s": time.time() - run.started})
    _log(run.out, record)  # after the checkpoint: a logged epoch is always a resumable one
    if run.job:
        run.job.epoch(record, steps)
    return epoch - run.best["epoch"] >= run.cfg.patience


def _save_arrays(path: Path, **arrays: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def _cross_validate(run: _Run) -> OutOfFold:
    """K patient-grouped, label-stratified folds over train + val; fold k's model trains on the others for
    the full schedule and predicts fold k. Each finished fold is saved (fold-k/oof.npz), so a killed run
    resumes at the first unfinished fold. Leaves run.splits' train set = train + val for the final model."""
    from sklearn.model_selection import StratifiedGroupKFold

    from engine.inference.predict import predict
    from engine.models.ood import fit_gaussian, mahalanobis
    from engine.models.registry import cam_layer

    cfg, sets = run.cfg, run.splits.sets
    pool = type(sets["train"]).concat(sets["train"], sets["val"])
    in_val = np.arange(len(pool)) >= len(sets["train"])
    groups = pool.groups or pool.names
    labels = pool.labels.numpy()
    logits, ood, fold_of = torch.zeros(len(pool), 2), np.zeros(len(pool)), np.zeros(len(pool), np.int64)
    splitter = StratifiedGroupKFold(cfg.folds, shuffle=True, random_state=cfg.seed)
    for k, (train_idx, held_idx) in enumerate(splitter.split(np.zeros(len(pool)), labels, groups)):
        folder = run.out / f"fold-{k}"
        folder.mkdir(exist_ok=True)
        if not (folder / "oof.npz").is_file():
            fold_run = _Run(cfg, run.ctx, run.job, run.rank, run.world, run.device, folder, run.task,
                            splits=dataclasses.replace(run.splits, sets={"train": pool.subset(train_idx),
                                                                          "val": pool.subset(held_idx)}),
                            prep=run.prep, base=run.base)
            _build_model(fold_run)
            _train(fold_run, _seed(cfg.seed + 1000 * (k + 1)), resume=True)
            model = fold_run.model
            model.load_state_dict(fold_run.best["state"])
            layer = cam_layer(model, cfg.model)
            held_logits, held_features = predict(model, pool.images[held_idx], run.prep, layer, run.device)
            mean, precision = fit_gaussian(predict(model, pool.images[train_idx], run.prep, layer, run.device)[1])
            _save_arrays(folder / "oof.npz", index=held_idx, logits=held_logits.numpy(),
                         ood=mahalanobis(held_features, mean, precision).numpy())
            (folder / "state.pt").unlink(missing_ok=True)  # a finished fold resumes from oof.npz alone
        with np.load(folder / "oof.npz", allow_pickle=False) as saved:
            idx = saved["index"]
            logits[idx], ood[idx], fold_of[idx] = torch.from_numpy(saved["logits"]), saved["ood"], k
        print(json.dumps({"fold": k, "held_out": len(idx)}), flush=True)
    run.splits = dataclasses.replace(run.splits, sets={**sets, "train": pool})
    return OutOfFold(logits, pool.labels.clone(), fold_of, in_val, ood)


def _card(run: _Run, job_id: int | None, oof: OutOfFold | None) -> tuple[ModelCard, dict]:
    """The model card: the task's part (decision rules, held-out metrics) plus data and training record."""
    cfg, task, splits, base, reviews = run.cfg, run.task, run.splits, run.base, run.reviews
    card = task.describe(run.model, cfg.model, splits, run.prep, run.device, oof) if oof else \
        task.describe(run.model, cfg.model, splits, run.prep, run.device)
    card.update({"name": cfg.name, "version": cfg.version, "arch": cfg.model, "model_args": {"num_classes": 2},
                 "labels": splits.label_names, "preprocessing": run.prep.to_dict()})
    card["data"] = {"dataset": cfg.dataset, "description": splits.description, "counts": splits.counts()}
    if cfg.dataset in DATASET_SCOPES:
        card["scope"] = SCOPES[DATASET_SCOPES[cfg.dataset]].to_dict()
    if oof is not None:
        card["data"]["cross_validation"] = {
            "folds": cfg.folds, "images": len(oof.labels), "grouping": "patient" if splits.sets["train"].groups else
            "image", "note": "the shipped model trained on train + val (the train counts include the val images) for "
                             "the fixed schedule; the card's val metrics are the out-of-fold predictions of the "
                             "validation split's images, its cv metrics those of all train + val images"}
    if reviews:
        card["data"]["reviews"] = reviews
        card["data"]["description"] += (f"; training split {'plus' if reviews['with_base_train'] else 'replaced by'} "
                                        f"{len(reviews['used'])} clinician-reviewed case(s)")
    if run.synthetic:
        card["data"]["synthetic"] = run.synthetic
        card["data"]["description"] += (f"; training split plus {run.synthetic['images']} synthetic "
                                        f"{run.synthetic['label']} images from {run.synthetic['generator']}")
    card["training"] = {
        "command": cfg.command(run.world),
        "best_epoch": run.best["epoch"], f"best_{task.score}": run.best["score"], "epochs_run": run.epochs_run,
        "optimizer": f"AdamW lr {cfg.lr} wd {cfg.weight_decay}, warmup {cfg.warmup_epochs} epoch + cosine",
        "loss": (task.loss_text if cfg.balance == "weights" else task.loss_text.split(" with ")[0])
        + (f", label smoothing {cfg.label_smoothing:g}" if cfg.label_smoothing else "")
        + (f", plus {cfg.boundary_loss:g} x MONAI HausdorffDTLoss" if cfg.boundary_loss else ""),
        "precision": cfg.precision, "folds": cfg.folds,
        "augmentation": task.augmentation_text if cfg.augment else "none",
        "seed": cfg.seed, "batch_size": cfg.batch_size, "pretrained": cfg.pretrained,
        "fine_tuned_from": {"name": base.name, "version": base.version, "weights_sha256": base.sha256}
        if base else None,
        "processes": run.world, "job": job_id,
        "weights_dtype": "float16" if cfg.half else "float32",
        "hardware": _hardware(run.device, run.world), "wall_time_s": round(time.time() - run.started, 1),
    }
    card["limitations"] = list(splits.limitations)
    extras = card.pop("_extras", {})  # tensors stored beside the weights (the OOD statistics)
    return ModelCard.from_dict(card), extras


def main(cfg: TrainConfig, ctx: Context, job: JobReporter | None = None, resume: bool = False,
         job_id: int | None = None) -> ModelCard | None:
    """Train, checkpoint every epoch, and write the model and its card (rank 0); returns the card (rank 0).
    `job` also receives step and epoch metrics for the dashboard."""
    run, generator = _start(cfg.resolved(), ctx, job)
    _load_data(run)
    oof = _cross_validate(run) if run.cfg.folds else None
    _build_model(run)
    _train(run, generator, resume)
    if not run.writer:
        return None
    if job:
        job.phase("evaluating the best epoch on the held-out splits and writing the model card")
    run.model.load_state_dict(run.best["state"])
    if run.cfg.half:  # evaluate exactly the weights that will be stored
        run.model.load_state_dict({k: v.half().float() if v.is_floating_point() else v
                                   for k, v in run.model.state_dict().items()})
    card, extras = _card(run, job_id, oof)
    weights = run.out / f"{run.cfg.name}.safetensors"
    sha = save_model(weights, run.model.cpu(), card, extras=extras, half=run.cfg.half)
    print(json.dumps({"weights": str(weights), "sha256": sha,
                      "test": run.task.headline_numbers(card.test_metrics)}), flush=True)
    return card


def failure_message(error: BaseException, cfg: TrainConfig) -> str:
    """One line saying what went wrong and what to do, for the job row and the log."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return (f"CUDA ran out of memory at batch size {cfg.batch_size} (image size {cfg.size}): start the job again "
                f"with a batch size of {max(1, cfg.batch_size // 2)} or smaller")
    if is_disk_full(error):
        # A failed write() carries no file name; the folder is what the user needs to free space in.
        folder = Path(error.filename).parent if error.filename else (cfg.output or "$RADLENS_HOME/runs")
        return (f"the disk is full (writing to {folder}): the job stopped and the last complete checkpoint is "
                "intact; free space there and resume")
    if isinstance(error, EngineError):
        return str(error)
    return f"{type(error).__name__}: {short_reason(error)}"


class _Cancelled(SystemExit):
    """SIGTERM from cancel_job: unwinds through the atomic writers so no temp file is left."""


def _on_sigterm(signum, frame):
    raise _Cancelled(128 + signum)


def run_reported(ctx: Context, job_id: int, cfg, work, rank: int = 0) -> None:
    """The job side every training program shares: SIGTERM unwinds through the atomic writers, the job runs at
    the lowest priority, rank 0 claims the row and hands `work` its reporter (None on other ranks); a failure
    goes on the row in one line; the next queued job is dispatched at the end."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    lower_priority()
    reporter = None
    try:
        if rank == 0:
            reporter = JobReporter(ctx, job_id, torch.device("cpu"))
            reporter.claim()
        work(reporter)
    except _Cancelled:
        print("cancelled", flush=True)
        raise
    except BaseException as error:
        message = failure_message(error, cfg)
        print(f"error: {message}", flush=True)
        if reporter:
            reporter.fail(message)
        raise SystemExit(1) from None
    finally:
        if rank == 0:
            dispatch(ctx)  # the next queued job on this device


def run_job(ctx: Context, job_id: int) -> None:
    """Run job `job_id` in this process (or as one rank of its torchrun group) and record how it ended."""
    job = get_job(ctx.store, job_id)
    cfg = TrainConfig.from_dict(job.config["train"])
    ctx = ctx.as_user(job.actor)

    def work(reporter: JobReporter | None) -> None:
        card = main(cfg, ctx, reporter, resume=True, job_id=job_id)
        if reporter:
            reporter.finish(cfg.output / f"{card.name}.safetensors")

    run_reported(ctx, job_id, cfg, work, int(os.environ.get("RANK", "0")))


def cli(argv: list[str] | None = None) -> ModelCard | None:
    """The command line: its configuration from the arguments and the environment, then `main` (or the job)."""
    args = get_args_parser().parse_args(argv)
    ctx = Context.open(Config.from_env())
    if args.job is not None:
        run_job(ctx, args.job)
        return None
    return main(TrainConfig.from_args(args), ctx, resume=args.resume)


if __name__ == "__main__":
    try:
        cli()
    except EngineError as error:
        sys.exit(f"error: {error}")
