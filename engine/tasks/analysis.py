"""How a task analyses stored cases: the one `Analysis` each task provides, and the entries every caller uses.

The pages, the CLI, the PACS analysis job, the PDF report and the DICOM export all go through here: `load` a
task's model (once, cached, on the device `choose_device` picks), `analyse` one stored image (decode, infer,
judge against the model's scope and OOD gate, log the row and its audit row), `analyse_cases` for a job, and
`analysis_of` to find which task logged a stored row. What differs per task is the `Analysis` it builds; nothing
here tests a task's name.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.config import Config
from engine.context import Context
from engine.errors import EngineError, ModelMismatch
from engine.models.card import ModelCard
from engine.models.checkpoint import load_model
from engine.models.device import choose_device
from engine.models.installed import active_model, find_model
from engine.stored import get_case

if TYPE_CHECKING:
    from engine.tasks.base import Task

__all__ = ["Analysis", "Outcome", "Line", "Bar", "Contribution", "load", "load_path", "analyse", "analyse_cases",
           "analysis_of", "record", "algorithm_of"]


class Outcome:
    """What a task's `Analysis.run` returns (a dataclass with `raw`, `verdict` and its row's id field): the
    network's output is kept whether or not it is a result; `result` is it only when the model did not abstain."""

    id_field: str  # the field holding the id of the row it was logged as

    @property
    def record_id(self) -> int:
        return getattr(self, self.id_field)

    @property
    def result(self):
        """The result; None when the model abstained (outside its scope, or unlike its training images)."""
        return self.raw if self.verdict.analysed else None


@dataclass(frozen=True)
class Line:
    """One line of a report's result section (plain text)."""

    text: str
    size: float = 9.0
    warn: bool = False  # drawn in the warning colour
    bold: bool = False
    muted: bool = False  # secondary detail, in grey


@dataclass(frozen=True)
class Bar:
    """A probability drawn against the operating threshold."""

    probability: float
    threshold: float


@dataclass(frozen=True)
class Contribution:
    """What a task's logged result adds to a case's DICOM results: its objects (kind, dataset) and the SR's
    finding and/or measurements (engine.writers.derived types)."""

    objects: list  # [(kind, pydicom Dataset)], in the order they are listed
    finding: Any = None
    measurements: Any = None


@dataclass(frozen=True)
class Analysis:
    """Everything a task does with a stored case after training. Each task module builds one."""

    kind: str  # the typed result: "probability" (label + calibrated probability) or "mask" (mask + measurement)
    table: str  # the store table its rows go to ("predictions", "segmentations")
    audit_action: str  # the audit row of a logged result ("predict", "segment")
    page: str  # the dashboard page that analyses one case of this task (a script under pages/)
    runner: type  # (LoadedModel, device) -> the object that runs the network (Classifier, Segmenter, ...)
    run: Callable[..., Any]  # (ctx, model, image, **options) -> the outcome, logged (the page's result object)
    report: Callable[[dict, ModelCard | None], list]  # a logged row (+ its card) -> the report's Line/Bar list
    evidence: Callable[[Config, dict, np.ndarray], tuple[np.ndarray | None, str]]  # row, image -> (evidence, caption)
    card_metrics: Callable[[dict], list[str]]  # the card's held-out test metrics -> report lines
    objects: Callable[..., Contribution]  # (config, row, source dataset, image) -> its DICOM contribution
    batch_rows: Callable | None = None  # (model, scope, decoded images, options, timings) -> batch result rows
    batch_record: Callable[[dict, ModelCard], dict] | None = None  # a batch row -> the values of its case row
    batch_input: str = "image"  # what a batch worker decodes for it: "image" (2-D) or "volume" (engine.batch.decode)
    batch_columns: dict[str, type] = field(default_factory=dict)  # the batch-result columns its rows fill
    run_cases: Callable | None = None  # (ctx, model, case ids, progress) -> {case id: reason}: faster than one by one
    images: Callable[[dict], list[dict]] = lambda case: case["images"][:1]  # a case -> the images it reads
    warm_up: Callable[[Any], None] | None = None  # runs once after loading (takes one-off kernel set-up off a case)
    owns: Callable[[dict], bool] = lambda row: True  # whether a row of `table` is this task's


@functools.lru_cache(maxsize=8)
def _loaded(task_name: str, runner: type, path: Path, stamp: tuple, device: str):
    loaded = load_model(path, device)
    if loaded.card.task != task_name:
        raise ModelMismatch(f"{loaded.name} is a {loaded.card.task} model, not a {task_name} model")
    return runner(loaded, device)


def load_path(task: Task, path: Path, device: str = "auto"):
    """The model at `path` run by the task's runner on the chosen device; loaded once per file version."""
    stat = Path(path).stat()
    stamp = (stat.st_mtime_ns, stat.st_size)
    model = _loaded(task.name, task.analysis.runner, Path(path), stamp, choose_device(device))
    if task.analysis.warm_up and not getattr(model, "_warmed", False):
        task.analysis.warm_up(model)
        model._warmed = True
    return model


def load(ctx: Context | Config, task: Task, name: str | None = None, device: str = "auto"):
    """The named installed model of the task (default: its active one), loaded once and cached."""
    config = ctx.config if isinstance(ctx, Context) else ctx
    installed = find_model(config, name) if name else active_model(ctx, task.name)
    return load_path(task, installed.path, device)


def analyse(ctx: Context, task: Task, image: dict, model=None, **options):
    """One stored image through the task's model: the outcome (its row is logged, with its audit row)."""
    ctx.require("case.analyse")
    return task.analysis.run(ctx, model or load(ctx, task), image, **options)


def analyse_cases(ctx: Context, task: Task, case_ids: Iterable[int],
                  progress: Callable[[int, int, str], None] | None = None, model=None) -> dict[int, str]:
    """Each case's default image through the task's active model; returns {case id: reason} for the cases that
    could not be analysed (the others go on)."""
    ctx.require("case.analyse")
    case_ids, failed = list(case_ids), {}
    model = model or load(ctx, task)
    if task.analysis.run_cases:
        return task.analysis.run_cases(ctx, model, case_ids, progress)
    for n, case_id in enumerate(case_ids, 1):
        try:
            task.analysis.run(ctx, model, task.analysis.images(get_case(ctx.store, case_id))[0])
        except EngineError as error:
            failed[case_id] = str(error)
        if progress:
            progress(n, len(case_ids), f"case #{case_id}")
    return failed


def analysis_of(tasks: Iterable[Task], table: str, row: dict) -> Task:
    """The task that logged a stored result row."""
    for task in tasks:
        if task.analysis.table == table and task.analysis.owns(row):
            return task
    raise EngineError(f"no task logs rows like this one in {table}")


def algorithm_of(row: dict):
    """The model that produced a logged row, as the DICOM objects name it."""
    from engine.writers.derived import Algorithm

    return Algorithm(row["model_name"], row["model_version"], row["weights_sha256"])


def record(ctx: Context, task: Task, image: dict, loaded, values: dict, audit: dict) -> int:
    """Log one result row (what produced it: image hash, model, weights, preprocessing, device, actor) and its
    audit row in one transaction; returns the row's id."""
    from engine.store import utc_now

    ctx.require("case.analyse")
    row = {"case_id": image["case_id"], "image_id": image["id"], "image_sha256": image["sha256"],
           "model_name": loaded.name, "model_version": loaded.version, "weights_sha256": loaded.sha256,
           "preprocessing": loaded.preprocessing.summary(), "actor": ctx.actor, "created_at": utc_now(), **values}
    with ctx.store.write() as db:
        row_id = db[task.analysis.table].insert(row).last_pk
        ctx.audit(db, task.analysis.audit_action, "case", image["case_id"],
                  {f"{task.analysis.table[:-1]}_id": row_id, "model": loaded.name, "version": loaded.version,
                   **audit})
    return row_id
