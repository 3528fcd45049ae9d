"""The one definition of a training run: `TrainConfig`. The training program's command line is generated
from it, the Training form fills it, and a job row stores it; defaults come from the task (size, batch size,
epochs) or from here, never from a third place. `submit_training` turns the form's intent (fine-tune from
the active model, add the reviewed cases, N GPUs) into a config and queues it."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from engine.config import Config
from engine.context import Context
from engine.data.loaders import DATASETS
from engine.data.reviews import usable_review_ids
from engine.errors import EngineError, JobError
from engine.inference.predict import PRECISIONS
from engine.jobs.queue import job_folder, submit
from engine.models.device import choose_device, visible_gpus
from engine.models.installed import active_model
from engine.models.registry import get_spec, list_models
from engine.tasks import get_task

__all__ = ["argv_of", "parser_of", "opt",
           "TrainConfig", "TrainingRequest", "get_args_parser", "submit_training", "visible_gpus", "PROGRAM"]

PROGRAM = "engine.train.run"


def opt(help_text: str, default=None, **argparse_kw):
    """A TrainConfig field: its default and how the command line spells it."""
    return field(default=default, metadata={"help": help_text, **argparse_kw})


def _ids(text: str) -> tuple[int, ...]:
    return tuple(int(i) for i in text.split(",") if i)


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs. None means "the task's default" (see `resolved`)."""

    dataset: str = opt("a dataset of the catalogue", "cxr_pneumonia", choices=lambda: list(DATASETS))
    model: str = opt("a registered architecture; its task (classification or segmentation) must be the "
                      "dataset's", "resnet18", choices=list_models)
    data_path: Path | None = opt("folder for --dataset folder or volume_folder (manifest.csv or split/label/files)",
                                  type=Path)
    pretrained: bool = opt("start from ImageNet weights in the local torch cache", False)
    size: int | None = opt("input size in pixels: the side of a square input, or its width when --height is "
                            "given (default: the task's)", type=int)
    height: int | None = opt("input height in pixels, for a model trained on images of one aspect (default: "
                              "square)", type=int)
    depth: int | None = opt("sequence models: slices (frames) each volume is resampled to (default: the task's)",
                             type=int)
    epochs: int | None = opt("most epochs to train (default: the task's)", type=int)
    patience: int = opt("stop after this many epochs without a better validation score (AUC for "
                         "classification, Dice for segmentation)", 8, type=int)
    batch_size: int | None = opt("images per step and process (default: the task's)", type=int)
    lr: float = opt("AdamW learning rate", 1e-3, type=float)
    weight_decay: float = opt("AdamW weight decay", 1e-4, type=float)
    warmup_epochs: float = opt("linear warm-up before the cosine schedule", 1.0, type=float)
    seed: int = opt("seed of shuffling, augmentation and initialisation", 0, type=int)
    device: str = opt("auto (CUDA when present), cpu or cuda", "auto", choices=lambda: ["auto", "cpu", "cuda"])
    threads: int = opt("CPU threads (0: torch's default)", 0, type=int)
    precision: str = opt("training arithmetic: auto (fp16 mixed precision on CUDA, fp32 on CPU) or bf16 (bfloat16 "
                          "mixed precision; about 2.8x faster on CPUs with AMX/AVX512-BF16)", "auto",
                          choices=lambda: list(PRECISIONS))
    label_smoothing: float = opt("classification: label smoothing of the cross-entropy (0: none)", 0.0, type=float)
    boundary_loss: float = opt("segmentation: weight of MONAI's HausdorffDTLoss (a boundary-distance loss) added to "
                                "Dice + cross-entropy (0: none)", 0.0, type=float)
    folds: int = opt("classification: 0 keeps the dataset's validation split for early stopping and calibration; "
                      "K >= 3 pools train + val into K patient-grouped folds, trains K models for the full epochs "
                      "to get out-of-fold predictions (temperature, operating and OOD thresholds are fitted on "
                      "them), then trains the shipped model on all of train + val", 0, type=int)
    name: str | None = opt("model name (default: <dataset>-<model>)")
    version: str = opt("model version written into the card", "1.0.0")
    output: Path | None = opt("run folder (default: $RADLENS_HOME/runs/<name>)", type=Path)
    half: bool = opt("store fp16 weights (metrics are computed with them)", False)
    init_from: Path | None = opt("fine-tune: start from these installed weights (same architecture; their "
                                  "normalisation is kept)", type=Path)
    augment: bool = opt("train on the images as they are", True, flag="--no-augment")
    balance: str = opt("classification: inverse-frequency class weights in the loss (weights) or none", "weights",
                        choices=lambda: ["weights", "none"])
    review_ids: tuple[int, ...] = opt("comma-separated review ids whose cases join the training split "
                                       "(classification)", (), type=_ids)
    reviews_only: bool = opt("train on the reviewed cases only, without the dataset's own training split "
                              "(validation and test stay the dataset's)", False)
    synthetic: int = opt("classification: add this many synthetic images of the training split's smallest class "
                         "from an installed generator (screened for memorisation; validation and test stay real)", 0,
                         type=int)
    generator: str | None = opt("the generator --synthetic uses (default: the first installed)")

    @property
    def task(self) -> str:
        return get_spec(self.model).task

    def resolved(self) -> TrainConfig:
        """The task's defaults filled in, and the name; raises JobError for a combination that cannot run."""
        if self.model not in list_models():
            raise JobError(f"Unknown architecture {self.model!r}. Available: {', '.join(list_models())}")
        if self.dataset not in DATASETS:
            raise JobError(f"Unknown dataset {self.dataset!r}. Available: {', '.join(DATASETS)}")
        if DATASETS[self.dataset].task != self.task:
            raise JobError(f"{self.model} is a {self.task} model; dataset {self.dataset!r} is for "
                           f"{DATASETS[self.dataset].task}: choose a {self.task} dataset or another architecture")
        defaults = get_task(self.task).defaults
        done = dataclasses.replace(
            self, size=self.size or defaults.size, height=self.height if self.size else self.height or defaults.height,
            depth=self.depth or defaults.depth, epochs=self.epochs or defaults.epochs,
            batch_size=self.batch_size or defaults.batch_size, name=self.name or f"{self.dataset}-{self.model}")
        for label, value, low in (("epochs", done.epochs, 1), ("batch size", done.batch_size, 2),
                                  ("image size", done.size, 16), ("image height", done.height or 16, 16),
                                  ("depth", done.depth or 2, 2),
                                  ("patience", done.patience, 1)):
            if value < low:
                raise JobError(f"{label} must be at least {low} (got {value})")
        if done.depth is not None and defaults.depth is None:
            raise JobError(f"--depth applies to sequence models only; {done.model} reads one 2-D image")
        if done.folds and (done.folds < 3 or not get_task(done.task).cross_validates):
            raise JobError(f"cross-validation needs a classification model and at least 3 folds (got {done.folds})")
        task = get_task(done.task)
        if done.boundary_loss and (done.boundary_loss < 0 or not task.boundary_loss):
            raise JobError(f"a boundary loss weight must be >= 0 and needs a segmentation model "
                           f"(got {done.boundary_loss})")
        if done.label_smoothing and not task.label_smoothing:
            raise JobError("label smoothing applies to classification models only")
        if not 0 <= done.label_smoothing < 0.5:
            raise JobError(f"label smoothing must be in [0, 0.5) (got {done.label_smoothing})")
        if done.synthetic and (done.synthetic < 0 or not task.synthetic_images or done.folds):
            raise JobError(f"synthetic images ({done.synthetic}) need a 2-D classification model, a positive count and "
                           "no cross-validation (folds would hold synthetic images out as if they were patients)")
        if not done.lr > 0:
            raise JobError(f"the learning rate must be positive (got {done.lr})")
        return done

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name: f for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("data_path", "output", "init_from"):
            if values.get(key):
                values[key] = Path(values[key])
        if "review_ids" in values:
            values["review_ids"] = tuple(values["review_ids"])
        return cls(**values)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        return cls.from_dict(vars(args))

    def to_argv(self) -> list[str]:
        """The command-line arguments that give this config (defaults left out)."""
        return argv_of(self)

    def command(self, world: int = 1) -> str:
        """The command that reproduces this run."""
        launcher = f"torchrun --nproc-per-node={world}" if world > 1 else "python"
        return f"{launcher} -m {PROGRAM} " + shlex.join(self.to_argv())


def argv_of(cfg) -> list[str]:
    """The command-line arguments that give a config dataclass built with `opt` fields (defaults left out)."""
    argv = []
    for f in fields(cfg):
        value, default = getattr(cfg, f.name), f.default
        if value == default or value is None:
            continue
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        if isinstance(value, bool):
            argv.append(flag)
        elif isinstance(value, tuple):
            argv += [flag, ",".join(map(str, value))]
        elif str(value).startswith("-"):
            argv.append(f"{flag}={value}")  # one token, or argparse would read the value as an option
        else:
            argv += [flag, str(value)]
    return argv


def parser_of(cls, prog: str, description: str) -> argparse.ArgumentParser:
    """A program's parser generated from its config dataclass (plus --resume and --job)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    for f in fields(cls):
        meta = dict(f.metadata)
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        if "choices" in meta:
            meta["choices"] = meta["choices"]()
        if f.type in ("bool",):
            meta["action"] = "store_false" if f.default else "store_true"
        p.add_argument(flag, dest=f.name, default=f.default, **meta)
    p.add_argument("--resume", action="store_true", help="continue from <output>/state.pt at its epoch + 1")
    p.add_argument("--job", type=int, help="run job ID of the store (its configuration comes from the job)")
    return p


def get_args_parser() -> argparse.ArgumentParser:
    """The training program's parser, generated from TrainConfig (plus --resume and --job)."""
    return parser_of(TrainConfig, f"python -m {PROGRAM}", "Train a RadLens classifier or segmentation model and "
                     "write its weights and model card")


def _device(device: str) -> str:
    try:
        return choose_device(device)
    except EngineError as error:
        raise JobError(str(error)) from error


def _with_base(ctx: Context, cfg: TrainConfig, fine_tune: bool) -> TrainConfig:
    if not fine_tune:
        return cfg
    base = active_model(ctx, cfg.task)
    if base.card.arch != cfg.model:
        raise JobError(f"fine-tuning starts from the active {cfg.task} model, {base.name} ({base.card.arch}): "
                       f"choose {base.card.arch} or turn fine-tuning off")
    return dataclasses.replace(cfg, init_from=base.path)


def _with_reviews(ctx: Context, cfg: TrainConfig, use_reviews: bool, with_base_train: bool) -> TrainConfig:
    if not use_reviews:
        return cfg
    if not get_task(cfg.task).uses_reviews:
        raise JobError(f"reviews carry labels, so they can train classifiers only, not {cfg.task} models")
    reviews = usable_review_ids(ctx.store, active_model(ctx, cfg.task).card.labels)
    if not reviews:
        raise JobError("no review gives a usable label yet: agree with a prediction or correct its label "
                       "on the Diagnosis page first")
    return dataclasses.replace(cfg, review_ids=tuple(reviews), reviews_only=not with_base_train)


@dataclass(frozen=True)
class TrainingRequest:
    """What the Training form asks for: a configuration and how to start from what is installed."""

    config: TrainConfig
    fine_tune: bool = False  # start from the task's active model (same architecture)
    use_reviews: bool = False  # add every usable clinician review to the training split ...
    with_base_train: bool = True  # ... together with the dataset's own training split
    gpus: int = 1  # > 1: torchrun with one process per GPU


def training_roots(config: Config) -> list[Path]:
    """Where a training folder asked for from the dashboard may be: the datasets folder and RADLENS_HOME/datasets."""
    return [root.resolve() for root in (config.data_dir, config.home / "datasets") if root is not None]


def _checked_folder(config: Config, folder: Path | None) -> Path | None:
    """`folder` resolved (a bare name is taken under RADLENS_HOME/datasets); JobError when outside the roots."""
    if folder is None:
        return None
    roots = training_roots(config)
    resolved = (config.home / "datasets" / folder).resolve() if not folder.is_absolute() else folder.resolve()
    if not any(resolved == root or root in resolved.parents for root in roots):
        raise JobError(f"training folders must be inside {' or '.join(map(str, roots))}; "
                       f"{str(folder)[:200]!r} is not")
    if not resolved.is_dir():
        raise JobError(f"there is no training folder {str(folder)[:200]!r} under {' or '.join(map(str, roots))}")
    return resolved


def submit_training(ctx: Context, request: TrainingRequest, start: bool = True) -> int:
    """Queue a training job (audited) and start it if its device is free; returns the job id. The data folder
    must lie inside the training roots: a dashboard user cannot point a job at any path on the server."""
    ctx.require("job.submit")
    folder = _checked_folder(ctx.config, request.config.data_path)
    cfg, gpus = dataclasses.replace(request.config, data_path=folder).resolved(), request.gpus
    if gpus < 1 or (gpus > 1 and gpus > visible_gpus()):
        raise JobError(f"{gpus} GPUs were asked for; {visible_gpus()} are visible")
    device = _device(cfg.device)
    cfg = _with_reviews(ctx, _with_base(ctx, cfg, request.fine_tune), request.use_reviews, request.with_base_train)

    def finish(job_id: int) -> dict:
        slug = f"{cfg.dataset.replace('_', '-')}-{cfg.model.replace('_', '-')}-job{job_id}"
        final = dataclasses.replace(cfg, device=device, name=slug, version=f"job{job_id}",
                                    output=job_folder(ctx.config, job_id))
        return {"config": {"train": final.to_dict(), "gpus": gpus, "fine_tune": request.fine_tune},
                "model_name": slug, "output": str(final.output)}

    return submit(ctx, "train", device=device, task=cfg.task, review_ids=list(cfg.review_ids), complete=finish,
                  detail={"dataset": cfg.dataset, "arch": cfg.model, "epochs": cfg.epochs, "device": device,
                          "reviews": len(cfg.review_ids)}, start=start)
