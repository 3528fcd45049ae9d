"""What a task is: everything that differs between classification, segmentation and the next task. The
training program, evaluation, the job form and the Models page ask the task; none of them tests a task's
name. Adding a task = one module in this package that builds a `Task`, and one entry in `TASKS`
(docs/architecture.md has the checklist)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from engine.tasks.analysis import Analysis

__all__ = ["Scored", "FormDefaults", "Task"]


@dataclass(frozen=True)
class Scored:
    """A split's card metrics plus the per-image values a paired comparison of two models needs."""

    report: dict
    truth: np.ndarray  # classification: labels; segmentation: unused (empty)
    per_image: np.ndarray  # calibrated positive probability, or (Dice, HC absolute error mm) per image


@dataclass(frozen=True)
class FormDefaults:
    """The training form's and the training program's starting values for this task."""

    size: int  # input width in pixels (and height when `height` is None)
    batch_size: int
    epochs: int
    height: int | None = None  # input height in pixels; None: square
    depth: int | None = None  # slices (frames) of a sequence task's input; None: a 2-D task


@dataclass(frozen=True)
class Task:
    name: str
    title: str  # what the pages call it
    defaults: FormDefaults
    # Training: the loop, resume and checkpoints are shared; these are not.
    loss: Callable  # (training set, TrainConfig) -> loss module
    loss_text: str
    augmentation: Callable  # () -> a transform of one training item
    augmentation_text: str
    validate: Callable  # (model, val set, prep, device, arch) -> {"score": early-stopping score, ...logged}
    score: str  # the early-stopping score's name in metrics and the card ("val_auc", "val_dice")
    describe: Callable  # (model, arch, splits, prep, device) -> the task's part of the card
    # Evaluation and comparison of installed models.
    scores: Callable  # (LoadedModel, split data) -> Scored
    difference: Callable  # (Scored A, Scored B) -> {metric: [B - A, 95 % CI low, high]}
    headline: Callable[[dict], str]  # a card's test metrics -> one line ("AUC 0.993")
    headline_numbers: Callable[[dict], dict]  # ... -> the numbers the training program prints at the end
    rules: Callable[[dict], str]  # a card -> its decision rules in one sentence (plain text)
    refit_on_rewrite: bool = False  # `evaluate --write` refits the task's card part (else: metrics only)
    class_balancing: bool = False  # whether "balance" (class-weighted loss) means anything
    uses_reviews: bool = False  # whether clinician reviews (labels) can become training data
    cross_validates: bool = False  # whether --folds K (out-of-fold calibration) is implemented
    synthetic_images: bool = False  # whether --synthetic K (a generator's 2-D minority images) means anything
    label_smoothing: bool = False  # whether --label-smoothing means anything
    boundary_loss: bool = False  # whether --boundary-loss means anything
    metric_range: tuple[float, float] = field(default=(0.0, 1.0))  # where the score lives, for charts
    # Analysis of stored cases (pages, CLI, PACS analysis job, batch, PDF report, DICOM results): see analysis.py.
    analysis: Analysis | None = None
