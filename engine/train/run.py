"""The training program: `python -m engine.train.run --dataset cxr_pneumonia --model resnet18 ...`.

Used for the shipped model and by background jobs. Writes into --output:
  metrics.jsonl   one line per epoch (train loss, validation loss/AUC, learning rate, seconds)
  progress.json   the latest state, rewritten atomically (what the dashboard polls)
  state.pt        model + optimizer + scheduler + RNG state after the last epoch (--resume continues it)
  <name>.safetensors + <name>.json   the final model and its card (best validation-AUC epoch,
                  temperature-calibrated, operating threshold and OOD threshold set on validation)
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from engine.config import Config
from engine.errors import EngineError
from engine.models.checkpoint import atomic_write, load_state, save_model, save_state
from engine.models.ood import fit_gaussian, mahalanobis
from engine.models.preprocess import Preprocessing
from engine.models.registry import cam_layer, create_model, get_spec, list_models
from engine.train.data import DATASETS, augmentation, load_dataset
from engine.train.loop import class_weights, predict, train_one_epoch, warmup_cosine
from engine.train.metrics import fit_temperature, split_report, threshold_for_specificity

__all__ = ["get_args_parser", "main"]

OOD_QUANTILE = 0.99  # validation images above the threshold: 1 %


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a RadLens classifier and write its weights and model card")
    p.add_argument("--dataset", default="cxr_pneumonia", choices=list(DATASETS))
    p.add_argument("--data-path", type=Path, help="folder for --dataset folder (manifest.csv or split/label/files)")
    p.add_argument("--model", default="resnet18", choices=list_models("classification"))
    p.add_argument("--pretrained", action="store_true", help="start from ImageNet weights in the local torch cache")
    p.add_argument("--size", type=int, default=224, help="square input size in pixels")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=8, help="stop after this many epochs without a better val AUC")
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
    return p


def _seed(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def _log(out: Path, record: dict) -> None:
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    atomic_write(out / "progress.json", lambda tmp: tmp.write_text(json.dumps(record)))
    print(json.dumps(record), flush=True)


def _positive_prob(logits: torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    return torch.softmax(logits / temperature, dim=1)[:, 1].numpy()


def main(args: argparse.Namespace) -> dict:
    started = time.time()
    config = Config.from_env()
    name = args.name or f"{args.dataset}-{args.model}"
    out = args.output or config.home / "runs" / name
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    generator = _seed(args.seed)

    # Normalisation statistics come from the training split at the model's input size.
    splits = load_dataset(args.dataset, Preprocessing(size=args.size), config.data_dir, args.data_path)
    train, val, test = (splits.sets[s] for s in ("train", "val", "test"))
    prep = Preprocessing(size=args.size, mean=round(float(train.images.mean()), 4),
                         std=round(float(train.images.std()), 4))
    n_classes = len(splits.label_names)
    if n_classes != 2:  # the card's metrics, threshold and calibration are defined for two classes
        raise EngineError(f"the training program handles two labels (negative, positive); got {splits.label_names}")

    model = create_model(args.model, num_classes=n_classes, pretrained=args.pretrained)
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = -(-len(train.labels) // args.batch_size)
    scheduler = warmup_cosine(optimizer, int(args.warmup_epochs * steps), args.epochs * steps)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    loss_fn = torch.nn.CrossEntropyLoss(weight=class_weights(train.labels, n_classes).to(device))
    feature_layer = cam_layer(model, args.model)
    augment = augmentation()

    start_epoch, best = 0, {"auc": -1.0, "epoch": -1, "state": None}
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
        train_loss = train_one_epoch(model, train, prep, loss_fn, optimizer, scheduler, scaler, augment,
                                     args.batch_size, generator, device)
        logits, _ = predict(model, val.images, prep, feature_layer, device)
        val_auc = float(roc_auc_score(val.labels.numpy(), _positive_prob(logits)))
        val_loss = float(torch.nn.functional.cross_entropy(logits, val.labels))
        if val_auc > best["auc"]:
            best = {"auc": val_auc, "epoch": epoch,
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        _log(out, {"epoch": epoch, "epochs": args.epochs, "train_loss": round(train_loss, 5),
                   "val_loss": round(val_loss, 5), "val_auc": round(val_auc, 5), "best_epoch": best["epoch"],
                   "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.time() - t0, 1)})
        save_state(out / "state.pt", {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "epoch": epoch, "best": best})
        if epoch - best["epoch"] >= args.patience:
            break

    model.load_state_dict(best["state"])
    if args.half:  # evaluate exactly the weights that will be stored
        model.load_state_dict({k: v.half().float() if v.is_floating_point() else v
                               for k, v in model.state_dict().items()})
    card = _calibrate_and_describe(model, name, args, splits, prep, feature_layer, device, best, started)
    card["training"]["epochs_run"] = epochs_run
    extras = card.pop("_extras")
    sha = save_model(out / f"{name}.safetensors", model.cpu(), card, extras=extras, half=args.half)
    print(json.dumps({"weights": str(out / f"{name}.safetensors"), "sha256": sha,
                      "test_auc": card["metrics"]["test"]["auc"]}), flush=True)
    return card


def _calibrate_and_describe(model, name, args, splits, prep, feature_layer, device, best, started) -> dict:
    """Temperature, operating threshold and OOD threshold fitted on validation; the test split reported."""
    sets = splits.sets
    outputs = {s: predict(model, sets[s].images, prep, feature_layer, device) for s in ("train", "val", "test")}
    labels = {s: sets[s].labels.numpy() for s in sets}
    temperature = fit_temperature(outputs["val"][0], sets["val"].labels)
    threshold = threshold_for_specificity(labels["val"], _positive_prob(outputs["val"][0], temperature), 0.90)
    mean, precision = fit_gaussian(outputs["train"][1])
    val_ood = mahalanobis(outputs["val"][1], mean, precision).numpy()
    ood_threshold = float(np.quantile(val_ood, OOD_QUANTILE))
    metrics = {s: split_report(outputs[s][0], labels[s], temperature, threshold) for s in ("val", "test")}
    return {
        "name": name, "version": args.version, "task": "classification", "arch": args.model,
        "model_args": {"num_classes": len(splits.label_names)},
        "labels": splits.label_names, "positive_label": splits.label_names[1],
        "preprocessing": prep.to_dict(),
        "calibration": {"method": "temperature scaling", "temperature": temperature, "fitted_on": "val"},
        "operating_point": {"threshold": threshold, "applies_to": "calibrated probability of "
                            f"{splits.label_names[1]}", "rule": "lowest threshold with validation specificity >= 0.90"},
        "ood": {"method": "Mahalanobis distance of pooled CAM-layer features to the training set",
                "layer": get_spec(args.model).cam_layer, "threshold": ood_threshold,
                "rule": f"{OOD_QUANTILE:.0%} quantile of the validation images' scores"},
        "cam": {"method": "gradcam", "layer": get_spec(args.model).cam_layer, "target": "predicted class"},
        "data": {"dataset": args.dataset, "description": splits.description, "counts": splits.counts()},
        "training": {
            "command": "python -m engine.train.run " + shlex.join(sys.argv[1:]),
            "best_epoch": best["epoch"], "best_val_auc": best["auc"],
            "optimizer": f"AdamW lr {args.lr} wd {args.weight_decay}, warmup {args.warmup_epochs} epoch + cosine",
            "loss": "cross-entropy with inverse-frequency class weights",
            "augmentation": "affine (rotate <= 7 deg, shift <= 5 %, scale 0.92-1.08), brightness/contrast 0.15; no flips",
            "seed": args.seed, "batch_size": args.batch_size, "pretrained": args.pretrained,
            "weights_dtype": "float16" if args.half else "float32",
            "hardware": _hardware(device), "wall_time_s": round(time.time() - started, 1),
        },
        "metrics": metrics,
        "limitations": list(splits.limitations),
        "_extras": {"ood_mean": mean, "ood_precision": precision},
    }


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except EngineError as error:
        sys.exit(f"error: {error}")
