"""Evaluating installed weights with their card's own rules, and comparing two models on the same
held-out images (each task says how it scores and how two models differ)."""

from __future__ import annotations

from pathlib import Path

from engine.config import Config
from engine.context import Context
from engine.data.loaders import DATASETS, load_dataset
from engine.errors import DatasetError, ModelMismatch
from engine.models.checkpoint import LoadedModel, load_model
from engine.models.installed import find_model
from engine.tasks import get_task
from engine.tasks.classification import out_of_fold_reports

__all__ = ["evaluate", "compare_models"]


def _metrics(loaded: LoadedModel, sets: dict) -> dict[str, dict]:
    """Each split's card metrics; a cross-validated model's validation images were in its training data,
    so its "val" comes from the out-of-fold predictions stored with it."""
    reports = {split: get_task(loaded.card.task).scores(loaded, data).report for split, data in sets.items()
               if not (split == "val" and loaded.card.data.get("cross_validation"))}
    if "val" in sets and "val" not in reports:
        reports.update(out_of_fold_reports(loaded))  # "val" and "cv" (every train + val image)
    return reports


def evaluate(loaded: LoadedModel, data_dir: Path | None, splits: tuple[str, ...] = ("val", "test"),
             data_path: Path | None = None, dataset: str | None = None) -> dict[str, dict]:
    data = load_dataset(dataset or loaded.card.data["dataset"], loaded.preprocessing, data_dir, data_path,
                        only=splits)
    return _metrics(loaded, data.sets)


def compare_for(ctx: Context, names: list[str], split: str = "test") -> dict:
    """compare_models for a person: needs `model.compare`."""
    ctx.require("model.compare")
    return compare_models(ctx.config, names, split)


def compare_models(config: Config, names: list[str], split: str = "test") -> dict:
    """Two models on the same held-out split (the first one's dataset, else the second's), each with its own
    preprocessing and decision rules (threshold, temperature, boundary offset): {"reports": {name: card metrics},
    "difference": {metric: [second - first, 95 % CI low, high]}}, the CI a paired bootstrap over images."""
    models = [find_model(config, name) for name in names]
    if len({m.task for m in models}) > 1:
        raise ModelMismatch(f"{' and '.join(names)} are models of different tasks; compare models of one task")
    dataset = next((m.card.data.get("dataset") for m in models if m.card.data.get("dataset") in DATASETS), None)
    if dataset is None:
        raise DatasetError(f"neither {' nor '.join(names)} records a named dataset to compare them on")
    if DATASETS[dataset].folder is None:
        raise DatasetError(f"{models[0].name} was trained on a folder of the user's; compare on a named dataset")
    scored = []
    for m in models:
        loaded = load_model(m.path)
        data = load_dataset(dataset, loaded.preprocessing, config.data_dir, only=(split,)).sets[split]
        scored.append(get_task(m.task).scores(loaded, data))
    return {"reports": {m.name: s.report for m, s in zip(models, scored)},
            "difference": get_task(models[0].task).difference(scored[0], scored[-1])}
