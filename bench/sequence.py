"""Sequence models on AdrenalMNIST3D: the comparison table (RNN vs 2.5-D vs 3-D), the slice-order ablation
and one 64^3 volume end to end.

1. Each model's held-out test AUC and accuracy at p >= 0.5 (bootstrap 95 % CIs, recomputed from the data with
   the card's own calibration), parameters, CPU ms per volume (forward at batch 1, median), training time and
   best epoch (from the card).
2. Slice-order ablation: the same weights on the test volumes with their slices shuffled (one seeded
   permutation per volume) and reversed; paired bootstrap CI of the AUC difference against the ordered input.
3. One 64^3 volume end to end (stored multi-frame DICOM -> decode -> preprocess -> forward + contribution ->
   prediction row in SQLite), p50 over --repeats runs, for each model.

Run: python -m bench.sequence [--weights W.safetensors ...] [--repeats 31] [--threads 2]
Default weights: every sequence model in weights/ and in $RADLENS_HOME/runs/*/.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import report
from engine.cases.demo import _adrenal_items
from engine.cases.ingest import ingest_files
from engine.config import Config
from engine.context import Context
from engine.data.loaders import load_dataset
from engine.inference.sequence import SequenceClassifier
from engine.models.checkpoint import LoadedModel, load_model, read_card
from engine.models.installed import SHIPPED_DIR
from engine.tasks import get_task
from engine.tasks.sequence import analyse_sequence

SEED = 2024


def _default_weights() -> list[Path]:
    home = Path(os.environ.get("RADLENS_HOME", ".radlens"))
    found = sorted(SHIPPED_DIR.glob("*.safetensors")) + sorted(home.glob("runs/*/*.safetensors"))
    return [p for p in found if read_card(p).task == "sequence"]


def _reordered(images: torch.Tensor, how: str) -> torch.Tensor:
    """(N, 1, D, H, W) with each volume's slices shuffled (own seeded permutation) or reversed."""
    if how == "reversed":
        return images.flip(2)
    rng = np.random.default_rng(SEED)
    return torch.stack([v[:, torch.from_numpy(rng.permutation(v.shape[1]))] for v in images])


def _ci(report_: dict, key: str) -> list[float]:
    return [round(v, 4) for v in report_["ci95"][key]]


def _row(loaded: LoadedModel, test, threads: int) -> dict:
    task = get_task("sequence")
    scored = task.scores(loaded, test)
    x = loaded.preprocessing.normalize(test.images[:1])
    model = loaded.model.eval()
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        times = []
        for _ in range(31):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    card, r = loaded.card, scored.report
    row = {"model": card.name, "arch": card.arch, "parameters": sum(p.numel() for p in model.parameters()),
           "auc": round(r["auc"], 4), "auc_ci95": _ci(r, "auc"), "accuracy_at_0.5": round(r["accuracy_at_0.5"], 4),
           "accuracy_at_0.5_ci95": _ci(r, "accuracy_at_0.5"), "val_auc": round(card.metrics["val"]["auc"], 4),
           "forward_ms_batch1": round(statistics.median(times) * 1000, 2), "threads": threads,
           "training_s": card.training["wall_time_s"], "best_epoch": card.training["best_epoch"] + 1,
           "epochs": card.training["epochs_run"], "training_command": card.training["command"]}
    ablation = {}
    for how in ("shuffled", "reversed"):
        moved = type(test)(_reordered(test.images, how), test.labels, test.names)
        other = task.scores(loaded, moved)
        ablation[how] = {"auc": round(other.report["auc"], 4), "auc_ci95": _ci(other.report, "auc"),
                         "auc_minus_ordered": [round(v, 4) for v in task.difference(scored, other)["AUC"]]}
    row["slice_order_ablation"] = ablation
    return row


def _end_to_end(weights: Path, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as home:
        config = dataclasses.replace(Config.from_env(), home=Path(home))
        ctx = Context.open(config)
        [(name, data)] = _adrenal_items(config)[:1]
        [landed] = ingest_files([(name, data)], ctx)
        image = ctx.store.row("images", landed.image_id)
        classifier = SequenceClassifier(load_model(weights))
        analyse_sequence(ctx, classifier, image)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            analyse_sequence(ctx, classifier, image)
            times.append(time.perf_counter() - start)
    return {"p50_ms": round(statistics.median(times) * 1000, 1),
            "p90_ms": round(float(np.quantile(times, 0.9)) * 1000, 1), "n": repeats,
            "volume": "64 x 64 x 64 multi-frame DICOM (AdrenalMNIST3D test volume)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, nargs="*", help="sequence model weights (default: see above)")
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    weights = args.weights or _default_weights()
    data_dir = Config.from_env().data_dir
    rows, latency = [], {}
    for path in weights:
        loaded = load_model(path)
        test = load_dataset(loaded.card.data["dataset"], loaded.preprocessing, data_dir, only=("test",)).sets["test"]
        rows.append(_row(loaded, test, args.threads))
        latency[loaded.card.name] = _end_to_end(path, args.repeats)
        print(rows[-1]["model"], rows[-1]["auc"], latency[loaded.card.name], flush=True)
    report("sequence", {"models": rows, "end_to_end_64": latency, "threads": args.threads})


if __name__ == "__main__":
    main()
