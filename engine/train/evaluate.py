"""Re-evaluate installed weights on their dataset's splits with the card's own rules (a classifier's
temperature and threshold, a segmentation model's boundary offset):
`python -m engine.train.evaluate weights/NAME.safetensors [--write]`.

The same function checks a shipped card (tests/test_diagnosis.py, tests/test_segmentation.py). `--write`
stores the recomputed metrics back into the card (weights unchanged), for cards written before a metric
was added; for a task that refits on rewrite (segmentation) it also refits the measurement rule on the
training masks and rewrites the post-processing description, for cards written before the current one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from engine.config import Config
from engine.data.loaders import load_dataset
from engine.models.checkpoint import load_model, save_model
from engine.tasks import get_task
from engine.tasks.evaluation import evaluate

__all__ = ["get_args_parser", "main"]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.train.evaluate",
                                description="Re-evaluate a RadLens weights file on its dataset")
    p.add_argument("weights", type=Path)
    p.add_argument("--data-path", type=Path, help="folder of a --dataset folder model")
    p.add_argument("--write", action="store_true", help="store the recomputed metrics in the card")
    return p


def main(args: argparse.Namespace) -> dict:
    loaded = load_model(args.weights)
    data_dir = Config.from_env().data_dir
    card = loaded.card.replace(weights_file=None, weights_sha256=None).to_dict()
    task = get_task(card["task"])
    if args.write and task.refit_on_rewrite:
        splits = load_dataset(card["data"]["dataset"], loaded.preprocessing, data_dir, args.data_path)
        card.update(task.describe(loaded.model, card["arch"], splits, loaded.preprocessing, torch.device("cpu")))
        extras = {**loaded.extras, **card.pop("_extras", {})}  # e.g. the OOD statistics, refitted with the rules
        metrics = card["metrics"]
    else:
        metrics, extras = evaluate(loaded, data_dir, data_path=args.data_path), loaded.extras
    if args.write:
        card["metrics"] = metrics
        card["evaluation_command"] = f"python -m engine.train.evaluate {args.weights} --write"
        half = card.get("training", {}).get("weights_dtype") == "float16"
        save_model(args.weights, loaded.model.to(torch.device("cpu")), card, extras, half=half)
    print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    main(get_args_parser().parse_args())
