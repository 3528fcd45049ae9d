"""Synthetic data, measured (issue 21): is the shipped GAN generator good, does it copy, and does it help?

1. Quality: `engine.synthetic.evaluation.evaluate` on the generator (Fréchet distance and precision / recall /
   density / coverage in the active classifier's feature space and its OOD gate's whitened space, each beside
   the same measure for real held-out images; memorisation). --write stores it in the generator's card.
2. Usefulness: ResNet-18 classifiers trained by the training program on cxr_pneumonia at the generator's
   resolution (64 px, so a synthetic image is not told apart by its blur), identical recipe and seed, with K
   synthetic normals (the minority class) for each K of --ks. The step budget is equal: a run with K extra
   images trains round(epochs * N / (N + K)) epochs over its N + K images. K is chosen on validation AUC (ties:
   the smaller K); the chosen K and K = 0 are then compared once on the real test split: AUC, balanced accuracy
   at each model's validation-set operating threshold, specificity at sensitivity 0.95, each with a paired
   bootstrap 95 % CI of the difference (2,000 resamples of the test images).

Run: python -m bench.synthetic [--ks 0,100,250,500,800] [--epochs 30] [--runs DIR] [--write]
Runs are resumable: a finished K's card is reused, an unfinished one resumes from its checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from bench.common import report
from engine.config import Config
from engine.context import Context
from engine.data.loaders import load_dataset
from engine.jobs.training import TrainConfig
from engine.metrics import bootstrap_ci, spec_at_sens
from engine.models.checkpoint import load_model, read_card
from engine.models.installed import active_model
from engine.synthetic.evaluation import evaluate, load_references, write_card_metrics
from engine.synthetic.generator import find_generator, load_generator
from engine.tasks import get_task


def _balanced(y: np.ndarray, p: np.ndarray, threshold: float) -> float:
    call = p >= threshold
    return float((call[y == 1].mean() + (~call[y == 0]).mean()) / 2)


def _train(ctx: Context, base: TrainConfig, k: int, n_train: int, runs: Path) -> Path:
    from engine.train.run import main  # the training program (bench may import it; the dashboard may not)

    epochs = max(1, round(base.epochs * n_train / (n_train + k))) if k else base.epochs
    cfg = dataclasses.replace(base, synthetic=k, epochs=epochs, patience=epochs, name=f"cxr64-k{k}",
                              output=runs / f"k{k}")
    weights = cfg.output / f"{cfg.name}.safetensors"
    if not weights.is_file():
        main(cfg, ctx, resume=True)
    return weights


def _test_difference(base: Path, chosen: Path, data_dir: Path) -> dict:
    """Both models on the real test split, with paired bootstrap CIs of chosen - base."""
    task = get_task("classification")
    scored, thresholds = [], []
    for path in (base, chosen):
        loaded = load_model(path)
        test = load_dataset("cxr_pneumonia", loaded.preprocessing, data_dir, only=("test",)).sets["test"]
        scored.append(task.scores(loaded, test))
        thresholds.append(loaded.card.operating_point["threshold"])
    y, both = scored[0].truth, np.stack([s.per_image for s in scored], axis=1)

    def metrics(y_, p):
        return {"auc": [roc_auc_score(y_, p[:, i]) for i in (0, 1)],
                "balanced_accuracy": [_balanced(y_, p[:, i], thresholds[i]) for i in (0, 1)],
                "specificity_at_sensitivity_0.95": [spec_at_sens(y_, p[:, i]) for i in (0, 1)]}

    point = metrics(y, both)
    ci = bootstrap_ci(y, both, lambda y_, p: {k: v[1] - v[0] for k, v in metrics(y_, p).items()})
    return {name: {"without": round(v[0], 4), "with": round(v[1], 4), "difference": round(v[1] - v[0], 4),
                   "difference_ci95": [round(c, 4) for c in ci[name]]} for name, v in point.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="0,100,250,500,800", help="synthetic normals to try (0: the baseline)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the K = 0 run (the step budget)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=Path, help="run folder (default: a temporary one)")
    parser.add_argument("--generator", help="installed generator (default: the shipped one)")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--write", action="store_true", help="store the quality report in the generator's card")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env = Config.from_env()
    runs = args.runs or Path(tempfile.mkdtemp(prefix="bench-synthetic-"))
    config = dataclasses.replace(env, home=runs / "home")
    ctx = Context.open(config)
    gen = load_generator(find_generator(config, args.generator))
    classifier = active_model(ctx, "classification")
    figures: dict = {"generator": gen.name, "generator_sha256": gen.sha256, "classifier": classifier.name}
    if not args.skip_quality:
        refs = load_references(config, gen, load_model(classifier.path))
        figures["quality"] = evaluate(gen, refs)
        if args.write:
            figures["generator_sha256_after_write"] = write_card_metrics(gen, figures["quality"])
        print(json.dumps(figures["quality"], indent=2), flush=True)
    ks = [int(k) for k in args.ks.split(",")]
    base = TrainConfig(dataset="cxr_pneumonia", model="resnet18", size=gen.size, epochs=args.epochs, batch_size=32,
                       precision="bf16", threads=args.threads, seed=0, generator=gen.name)
    n_train = sum(read_card(_train(ctx, base, 0, 0, runs)).data["counts"]["train"].values()) if 0 in ks else None
    runs_by_k = {}
    for k in ks:
        card = read_card(_train(ctx, base, k, n_train, runs))
        runs_by_k[k] = {"epochs": card.training["epochs_run"], "val_auc": round(card.metrics["val"]["auc"], 4),
                        "val_specificity_at_sensitivity_0.95": card.metrics["val"]["specificity_at_sensitivity_0.95"],
                        "val_ece": round(card.metrics["val"]["ece"], 4), "train_counts": card.data["counts"]["train"],
                        "flagged_and_replaced": card.data.get("synthetic", {}).get("flagged_and_replaced", 0),
                        "wall_time_s": card.training["wall_time_s"]}
        print(json.dumps({"k": k, **runs_by_k[k]}), flush=True)
    chosen = max((k for k in ks if k), key=lambda k: (runs_by_k[k]["val_auc"], -k))
    figures.update({"recipe": {**base.to_dict(), "note": "equal step budget: epochs scaled by N / (N + K)"},
                    "runs": runs_by_k, "chosen_k_on_validation": chosen,
                    "test": _test_difference(runs / "k0" / "cxr64-k0.safetensors",
                                             runs / f"k{chosen}" / f"cxr64-k{chosen}.safetensors", env.data_dir)})
    report("synthetic", figures)


if __name__ == "__main__":
    main()
