"""Re-evaluate installed weights on their dataset's splits with the card's own rules (a classifier's
temperature and threshold, a segmentation model's boundary offset):
`python -m engine.train.evaluate weights/NAME.safetensors [--write]`.

The same function checks a shipped card (tests/test_diagnosis.py, tests/test_segmentation.py). `--write`
stores the recomputed metrics back into the card (weights unchanged), for cards written before a metric
was added; for a segmentation model it also refits the measurement rule on the training masks and
rewrites the post-processing description, for cards written before the current post-processing.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from engine.config import Config
from engine.errors import EngineError, ModelMismatch
from engine.models.catalog import find_model
from engine.models.checkpoint import LoadedModel, load_model, save_model
from engine.models.registry import cam_layer
from engine.train.data import DATASETS, load_dataset
from engine.train import segmentation
from engine.train.loop import predict
from engine.train.metrics import bootstrap_ci, mean_ci, split_report

__all__ = ["evaluate", "compare_models", "get_args_parser", "main"]


@dataclass(frozen=True)
class Scored:
    """A split's card metrics plus the per-image values a paired comparison of two models needs."""

    report: dict
    truth: np.ndarray  # classification: labels; segmentation: unused (empty)
    per_image: np.ndarray  # calibrated positive probability, or (Dice, HC absolute error mm) per image


def _classifier_scores(loaded: LoadedModel, data) -> Scored:
    card, device = loaded.card, next(loaded.model.parameters()).device
    logits, _ = predict(loaded.model, data.images, loaded.preprocessing, cam_layer(loaded.model, card["arch"]), device)
    temperature, labels = card["calibration"]["temperature"], data.labels.numpy()
    return Scored(split_report(logits, labels, temperature, card["operating_point"]["threshold"]), labels,
                  torch.softmax(logits.float() / temperature, dim=1)[:, 1].numpy())


def _segmenter_scores(loaded: LoadedModel, data) -> Scored:
    offset = loaded.card.get("measurement", {}).get("boundary_offset_px", 0.0)
    summary, rows = segmentation.quality(loaded.model, data, loaded.preprocessing,
                                         next(loaded.model.parameters()).device, offset)
    return Scored(summary, np.array([]), np.array([[r["dice"], abs(r["hc_mm"] - r["hc_reference_mm"])] for r in rows]))


def _auc_difference(a: Scored, b: Scored) -> dict[str, list[float]]:
    both = np.stack([a.per_image, b.per_image], axis=1)
    point = roc_auc_score(a.truth, b.per_image) - roc_auc_score(a.truth, a.per_image)
    ci = bootstrap_ci(a.truth, both, lambda y, p: {"d": roc_auc_score(y, p[:, 1]) - roc_auc_score(y, p[:, 0])})["d"]
    return {"AUC": [float(point), *ci]}


def _segmentation_difference(a: Scored, b: Scored) -> dict[str, list[float]]:
    d = b.per_image - a.per_image
    d = d[np.isfinite(d).all(axis=1)]  # an empty mask has no circumference
    return {"Dice": list(mean_ci(d[:, 0])), "HC absolute error (mm)": list(mean_ci(d[:, 1]))}


SCORERS = {"classification": _classifier_scores, "segmentation": _segmenter_scores}
DIFFERENCES = {"classification": _auc_difference, "segmentation": _segmentation_difference}


def _metrics(loaded: LoadedModel, sets: dict) -> dict[str, dict]:
    return {split: SCORERS[loaded.card["task"]](loaded, data).report for split, data in sets.items()}


def evaluate(loaded: LoadedModel, data_dir: Path | None, splits: tuple[str, ...] = ("val", "test"),
             data_path: Path | None = None, dataset: str | None = None) -> dict[str, dict]:
    data = load_dataset(dataset or loaded.card["data"]["dataset"], loaded.preprocessing, data_dir, data_path,
                        only=splits)
    return _metrics(loaded, data.sets)


def compare_models(config: Config, names: list[str], split: str = "test") -> dict:
    """Two models on the same held-out split (the first one's dataset), each with its own preprocessing and
    decision rules (threshold, temperature, boundary offset): {"reports": {name: card metrics},
    "difference": {metric: [second - first, 95 % CI low, high]}}, the CI a paired bootstrap over images."""
    models = [find_model(config, name) for name in names]
    if len({m.task for m in models}) > 1:
        raise ModelMismatch(f"{' and '.join(names)} are models of different tasks; compare models of one task")
    dataset = models[0].card["data"]["dataset"]
    if DATASETS[dataset].folder is None:
        raise EngineError(f"{models[0].name} was trained on a folder of the user's; compare on a named dataset")
    scored = []
    for m in models:
        loaded = load_model(m.path)
        data = load_dataset(dataset, loaded.preprocessing, config.data_dir, only=(split,)).sets[split]
        scored.append(SCORERS[m.task](loaded, data))
    return {"reports": {m.name: s.report for m, s in zip(models, scored)},
            "difference": DIFFERENCES[models[0].task](scored[0], scored[-1])}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Re-evaluate a RadLens weights file on its dataset")
    p.add_argument("weights", type=Path)
    p.add_argument("--data-path", type=Path, help="folder of a --dataset folder model")
    p.add_argument("--write", action="store_true", help="store the recomputed metrics in the card")
    return p


def main(args: argparse.Namespace) -> dict:
    loaded = load_model(args.weights)
    data_dir = Config.from_env().data_dir
    card = {k: v for k, v in loaded.card.items() if k not in ("weights_file", "weights_sha256")}
    if args.write and card["task"] == "segmentation":
        splits = load_dataset(card["data"]["dataset"], loaded.preprocessing, data_dir, args.data_path)
        card.update(segmentation.describe(loaded.model, card["arch"], splits, loaded.preprocessing,
                                          torch.device("cpu")))
        metrics = card["metrics"]
    else:
        metrics = evaluate(loaded, data_dir, data_path=args.data_path)
    if args.write:
        card["metrics"] = metrics
        card["evaluation_command"] = f"python -m engine.train.evaluate {args.weights} --write"
        half = card.get("training", {}).get("weights_dtype") == "float16"
        save_model(args.weights, loaded.model.to(torch.device("cpu")), card, loaded.extras, half=half)
    print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    main(get_args_parser().parse_args())
