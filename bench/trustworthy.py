"""Trustworthy outputs (issue #16): two installed classifiers side by side on the same images.

For each: validation and held-out test AUC, specificity at sensitivity 0.95, normals called pneumonia at a
calibrated p >= 0.9, ECE with its 95 % CI and the ECE a perfectly calibrated model with the same
probabilities would show on that many images; the paired bootstrap CI of the test AUC difference; and the
calibrated probability each gives the 12 full-resolution films (6 normal). A cross-validated model's
validation figures are its out-of-fold predictions (its weights trained on those images).

Run: RADLENS_DATA_DIR=../shared/data python -m bench.trustworthy [--old NAME] [--new NAME]
"""

from __future__ import annotations

import argparse
import csv

import torch

from bench.common import report
from engine.config import Config
from engine.data.loaders import gray_of_file
from engine.inference.classify import Classifier
from engine.models.checkpoint import load_model
from engine.models.installed import find_model
from engine.tasks.evaluation import compare_models, evaluate

KEYS = ("n", "auc", "specificity_at_sensitivity_0.95", "negatives_above_0.9", "sensitivity", "specificity", "ece",
        "ece_before_calibration", "ece_if_calibrated", "confusion")


def _split(report_: dict) -> dict:
    out = {k: report_[k] for k in KEYS}
    out["ci95"] = {k: report_["ci95"][k] for k in ("auc", "specificity_at_sensitivity_0.95", "ece")}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", default="cxr-pneumonia-resnet18")
    p.add_argument("--new", default="cxr-pneumonia-resnet18-v2")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config = Config.from_env()
    with open(config.data_dir / "cxr_pneumonia_fullres" / "manifest.csv", newline="") as f:
        films = [(r["file"], r["label"]) for r in csv.DictReader(f)]
    figures: dict = {"models": {}}
    for name in (args.old, args.new):
        loaded = load_model(find_model(config, name).path)
        metrics = evaluate(loaded, config.data_dir)
        classifier = Classifier(loaded)
        fullres = {file: round(classifier.classify(gray_of_file(config.data_dir / "cxr_pneumonia_fullres" /
                                                                file)).probability, 4) for file, _ in films}
        figures["models"][name] = {
            "version": loaded.version, "calibration": loaded.card.calibration.get("method", "temperature scaling"),
            "threshold": loaded.card.operating_point["threshold"],
            **{split: _split(metrics[split]) for split in ("val", "test")},
            "fullres_normals_at_or_above_0.9": sum(fullres[f] >= 0.9 for f, label in films if label == "normal"),
            "fullres_pneumonia_below_threshold": sum(fullres[f] < loaded.card.operating_point["threshold"]
                                                     for f, label in films if label != "normal"),
            "fullres": {f: {"label": label, "p": fullres[f]} for f, label in films},
        }
    difference = compare_models(config, [args.old, args.new])["difference"]
    figures["test_auc_difference_new_minus_old"] = difference["AUC"]
    report("trustworthy", figures)


if __name__ == "__main__":
    main()
