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
from pathlib import Path

import torch

from engine.config import Config
from engine.errors import EngineError, ModelMismatch
from engine.models.catalog import find_model
from engine.models.checkpoint import LoadedModel, load_model, save_model
from engine.models.registry import cam_layer
from engine.train.data import DATASETS, load_dataset
from engine.train import segmentation
from engine.train.loop import predict
from engine.train.metrics import split_report

__all__ = ["evaluate", "compare_models", "get_args_parser", "main"]


def _classifier_metrics(loaded: LoadedModel, sets: dict) -> dict[str, dict]:
    card, device = loaded.card, next(loaded.model.parameters()).device
    layer = cam_layer(loaded.model, card["arch"])
    out = {}
    for split, images in sets.items():
        logits, _ = predict(loaded.model, images.images, loaded.preprocessing, layer, device)
        out[split] = split_report(logits, images.labels.numpy(), card["calibration"]["temperature"],
                                  card["operating_point"]["threshold"])
    return out


def _segmenter_metrics(loaded: LoadedModel, sets: dict) -> dict[str, dict]:
    offset = loaded.card.get("measurement", {}).get("boundary_offset_px", 0.0)
    device = next(loaded.model.parameters()).device
    return {split: segmentation.quality(loaded.model, data, loaded.preprocessing, device, offset)[0]
            for split, data in sets.items()}


METRICS = {"classification": _classifier_metrics, "segmentation": _segmenter_metrics}


def evaluate(loaded: LoadedModel, data_dir: Path | None, splits: tuple[str, ...] = ("val", "test"),
             data_path: Path | None = None, dataset: str | None = None) -> dict[str, dict]:
    data = load_dataset(dataset or loaded.card["data"]["dataset"], loaded.preprocessing, data_dir, data_path,
                        only=splits)
    return METRICS[loaded.card["task"]](loaded, data.sets)


def compare_models(config: Config, names: list[str], split: str = "test") -> dict[str, dict]:
    """Each model's metrics on the same held-out split: the first model's dataset, each model with its own
    preprocessing and decision rules (threshold, temperature, boundary offset)."""
    models = [find_model(config, name) for name in names]
    if len({m.task for m in models}) > 1:
        raise ModelMismatch(f"{' and '.join(names)} are models of different tasks; compare models of one task")
    dataset = models[0].card["data"]["dataset"]
    if DATASETS[dataset].folder is None:
        raise EngineError(f"{models[0].name} was trained on a folder of the user's; compare on a named dataset")
    return {m.name: evaluate(load_model(m.path), config.data_dir, (split,), dataset=dataset)[split] for m in models}


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
