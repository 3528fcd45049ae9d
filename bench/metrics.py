"""The model card's metrics: one split's report (every metric with its 2,000-resample bootstrap CI, the ECE a
calibrated model would show, the reliability table), the step a training run, a Models-page comparison and a
promotion's side-by-side wait for. Real scores: the shipped classifier's calibrated probabilities on the
chest test split (156 films) and the same repeated to 624. With `--base DIR` the same report from another
checkout's `engine/metrics.py` runs alternated with this one in the same process (new, base, new, base, ...),
and the numbers of both must agree.

    python -m bench.metrics [--repeats 3] [--base ../before]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import report
from engine import metrics

SHIPPED = "cxr-pneumonia-resnet18"


def _scores() -> tuple[np.ndarray, np.ndarray, float]:
    from engine.config import Config
    from engine.data.loaders import load_dataset
    from engine.inference.predict import predict
    from engine.models import load_model
    from engine.models.installed import SHIPPED_DIR
    from engine.models.registry import cam_layer

    loaded = load_model(SHIPPED_DIR / f"{SHIPPED}.safetensors", "cpu")
    test = load_dataset(loaded.card.data["dataset"], loaded.preprocessing, Config.from_env().data_dir).sets["test"]
    logits, _ = predict(loaded.model, test.images, loaded.preprocessing, cam_layer(loaded.model, loaded.card.arch),
                        torch.device("cpu"))
    p = metrics.Calibrator.from_card(loaded.card.calibration).probabilities(logits)[:, 1].numpy()
    return test.labels.numpy(), p, float(loaded.card.operating_point["threshold"])


def _module_at(root: Path):
    spec = importlib.util.spec_from_file_location("base_metrics", root / "engine" / "metrics.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--base", type=Path, help="another checkout whose engine/metrics.py is the baseline")
    args = parser.parse_args()
    y, p, threshold = _scores()
    sides = {"new": metrics, **({"base": _module_at(args.base)} if args.base else {})}
    figures = {"threshold": threshold, "sizes": {}}
    for n in (len(y), 4 * len(y)):
        yy, pp = np.tile(y, n // len(y)), np.tile(p, n // len(y))
        seconds: dict[str, list[float]] = {side: [] for side in sides}
        reports = {}
        for _ in range(args.repeats):
            for side, module in sides.items():
                start = time.perf_counter()
                reports[side] = module.binary_report(yy, pp, threshold)
                seconds[side].append(time.perf_counter() - start)
        entry = {f"{side}_median_s": round(statistics.median(s), 3) for side, s in seconds.items()}
        if args.base:
            entry["ratio_new_over_base"] = round(entry["new_median_s"] / entry["base_median_s"], 3)
            entry["largest_difference"] = max(
                max(abs(a - b) for a, b in zip(reports["new"]["ci95"][k], reports["base"]["ci95"][k]))
                for k in reports["new"]["ci95"])
        entry["auc"] = reports["new"]["auc"]
        figures["sizes"][str(n)] = entry
    report("metrics", figures)


if __name__ == "__main__":
    main()
