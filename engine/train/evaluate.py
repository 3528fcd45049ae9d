"""Re-evaluate installed weights on their dataset's splits with the card's own temperature and threshold:
`python -m engine.train.evaluate weights/NAME.safetensors [--write]`.

The same function checks a shipped card (tests/test_diagnosis.py). `--write` stores the recomputed
metrics back into the card (weights unchanged), for cards written before a metric was added.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from engine.config import Config
from engine.models.checkpoint import LoadedModel, load_model, save_model
from engine.models.registry import cam_layer
from engine.train.data import load_dataset
from engine.train.loop import predict
from engine.train.metrics import split_report

__all__ = ["evaluate", "get_args_parser", "main"]


def evaluate(loaded: LoadedModel, data_dir: Path | None, splits: tuple[str, ...] = ("val", "test"),
             data_path: Path | None = None) -> dict[str, dict]:
    card = loaded.card
    data = load_dataset(card["data"]["dataset"], loaded.preprocessing, data_dir, data_path, only=splits)
    layer = cam_layer(loaded.model, card["arch"])
    device = next(loaded.model.parameters()).device
    out = {}
    for split, images in data.sets.items():
        logits, _ = predict(loaded.model, images.images, loaded.preprocessing, layer, device)
        out[split] = split_report(logits, images.labels.numpy(), card["calibration"]["temperature"],
                                  card["operating_point"]["threshold"])
    return out


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Re-evaluate a RadLens weights file on its dataset")
    p.add_argument("weights", type=Path)
    p.add_argument("--data-path", type=Path, help="folder of a --dataset folder model")
    p.add_argument("--write", action="store_true", help="store the recomputed metrics in the card")
    return p


def main(args: argparse.Namespace) -> dict:
    loaded = load_model(args.weights)
    metrics = evaluate(loaded, Config.from_env().data_dir, data_path=args.data_path)
    if args.write:
        card = {k: v for k, v in loaded.card.items() if k not in ("weights_file", "weights_sha256")}
        card["metrics"] = metrics
        card["evaluation_command"] = f"python -m engine.train.evaluate {args.weights} --write"
        half = card.get("training", {}).get("weights_dtype") == "float16"
        save_model(args.weights, loaded.model.to(torch.device("cpu")), card, loaded.extras, half=half)
    print(json.dumps({s: {k: m[k] for k in ("auc", "sensitivity", "specificity", "ece")} for s, m in metrics.items()}))
    return metrics


if __name__ == "__main__":
    main(get_args_parser().parse_args())
