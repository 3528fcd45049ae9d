"""The classification task: a calibrated two-label classifier with an operating threshold and an OOD gate.

Training: class-weighted cross-entropy, validation AUC for early stopping. The card: calibrator,
operating threshold (specificity >= 0.90) and OOD threshold fitted on validation, or with --folds K on
out-of-fold predictions over train + val (the calibrator, temperature or vector scaling, chosen by its
cross-validated ECE); the test split reported once. Comparison: the AUC difference with a paired bootstrap CI."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from engine.data.catalog import augmentation
from engine.inference.batch import predict
from engine.metrics import (
    CALIBRATORS,
    Calibrator,
    bootstrap_ci,
    ece,
    fit_calibrator,
    split_report,
    threshold_for_specificity,
)
from engine.models.card import ModelCard
from engine.models.checkpoint import LoadedModel
from engine.models.ood import fit_gaussian, mahalanobis
from engine.models.registry import cam_layer, get_spec
from engine.tasks.base import FormDefaults, Scored, Task

__all__ = ["TASK", "class_weights", "OOD_QUANTILE", "OutOfFold", "out_of_fold_reports"]

OOD_QUANTILE = 0.99  # validation images above the threshold: 1 %


def _positive_prob(logits: torch.Tensor, calibrator: Calibrator | None = None) -> np.ndarray:
    return (calibrator.probabilities(logits) if calibrator else torch.softmax(logits.float(), dim=1))[:, 1].numpy()


def _validate_classifier(model, val, prep, device, arch) -> dict:
    logits, _ = predict(model, val.images, prep, cam_layer(model, arch), device)
    auc = float(roc_auc_score(val.labels.numpy(), _positive_prob(logits)))
    return {"score": auc, "val_loss": round(float(torch.nn.functional.cross_entropy(logits, val.labels)), 5),
            "val_auc": round(auc, 5)}


@dataclass
class OutOfFold:
    """Predictions of train + val images by the fold model that did not train on them."""

    logits: torch.Tensor  # (N, 2)
    labels: torch.Tensor  # (N,)
    fold: np.ndarray  # (N,) which fold held the image out
    in_val: np.ndarray  # (N,) bool: the image is in the dataset's validation split
    ood: np.ndarray  # (N,) Mahalanobis distance to the fold model's own training features

    def extras(self) -> dict[str, torch.Tensor]:
        return {"oof_logits": self.logits, "oof_labels": self.labels.float(),
                "oof_fold": torch.from_numpy(self.fold).float(), "oof_in_val": torch.from_numpy(self.in_val).float(),
                "oof_ood": torch.from_numpy(self.ood).float()}

    @classmethod
    def from_extras(cls, extras: dict[str, torch.Tensor]) -> OutOfFold | None:
        if "oof_logits" not in extras:
            return None
        return cls(extras["oof_logits"].float().cpu(), extras["oof_labels"].long().cpu(),
                   extras["oof_fold"].long().cpu().numpy(), extras["oof_in_val"].cpu().numpy() > 0.5,
                   extras["oof_ood"].cpu().numpy().astype(np.float64))


def out_of_fold_reports(loaded: LoadedModel) -> dict[str, dict] | None:
    """A cross-validated card's "val" and "cv" metrics recomputed from the out-of-fold predictions stored
    beside its weights (the shipped model itself trained on those images, so they cannot come from it)."""
    oof = OutOfFold.from_extras(loaded.extras)
    if oof is None:
        return None
    calibrator, threshold = Calibrator.from_card(loaded.card.calibration), loaded.card.operating_point["threshold"]
    return {"val": split_report(oof.logits[oof.in_val], oof.labels[oof.in_val].numpy(), calibrator, threshold),
            "cv": split_report(oof.logits, oof.labels.numpy(), calibrator, threshold)}


def _calibration_rules(method: str, logits: torch.Tensor, labels: torch.Tensor) -> tuple[Calibrator, float]:
    """(calibrator, operating threshold) fitted on these predictions."""
    calibrator = fit_calibrator(method, logits, labels)
    return calibrator, threshold_for_specificity(labels.numpy(), _positive_prob(logits, calibrator), 0.90)


def _cross_validated_ece(oof) -> dict[str, dict[str, float]]:
    """ECE of the out-of-fold predictions when each fold is calibrated without it, by each calibrator, fitted
    on all other folds (this method's data) or on the other folds' validation-split images only (the
    previous method's data). Same images, same predictions: only the calibration differs."""
    data = {"train + val": lambda held: ~held, "val split only": lambda held: ~held & oof.in_val}
    out: dict[str, dict[str, float]] = {}
    for method in CALIBRATORS:
        for data_name, rows in data.items():
            p = np.zeros(len(oof.labels))
            for k in np.unique(oof.fold):
                held = oof.fold == k
                use = rows(held)
                p[held] = _positive_prob(oof.logits[held], fit_calibrator(method, oof.logits[use], oof.labels[use]))
            out.setdefault(method, {})[data_name] = ece(oof.labels.numpy(), p)
    return out


def _describe_classifier(model, arch, splits, prep, device, oof=None, calibrator: str = "temperature scaling") -> dict:
    """The calibrator (`calibrator`), operating threshold and OOD threshold fitted on validation, or, after
    cross-validation (`oof`), on the out-of-fold predictions over train + val; the test split reported once."""
    sets, feature_layer = splits.sets, cam_layer(model, arch)
    outputs = {s: predict(model, sets[s].images, prep, feature_layer, device) for s in ("train", "test")}
    mean, precision = fit_gaussian(outputs["train"][1])
    if oof is None:
        outputs["val"] = predict(model, sets["val"].images, prep, feature_layer, device)
        fit_logits, fit_labels = outputs["val"][0], sets["val"].labels
        val_ood = mahalanobis(outputs["val"][1], mean, precision).numpy()
        fitted_on, ood_on = "val", "validation images"
        extras = {}
    else:
        outputs["val"] = (oof.logits[oof.in_val], None)
        fit_logits, fit_labels, val_ood = oof.logits, oof.labels, oof.ood
        folds = len(np.unique(oof.fold))
        fitted_on = f"out-of-fold predictions over train + val ({len(oof.labels)} images, {folds} folds)"
        ood_on = "out-of-fold images (each scored against its fold model's training features)"
        extras = oof.extras()
    compared = _cross_validated_ece(oof) if oof is not None else None
    # After cross-validation the calibrator is chosen by its cross-validated ECE; else the original method.
    method = min(compared, key=lambda m: compared[m]["train + val"]) if compared else calibrator
    calibrator, threshold = _calibration_rules(method, fit_logits, fit_labels)
    ood_threshold = float(np.quantile(val_ood, OOD_QUANTILE))
    labels = {"val": oof.labels[oof.in_val].numpy() if oof is not None else sets["val"].labels.numpy(),
              "test": sets["test"].labels.numpy()}
    metrics = {s: split_report(outputs[s][0], labels[s], calibrator, threshold) for s in ("val", "test")}
    calibration = {**calibrator.to_card(), "fitted_on": fitted_on}
    if oof is not None:
        metrics["cv"] = split_report(oof.logits, oof.labels.numpy(), calibrator, threshold)
        calibration["cross_validated_ece"] = compared
        calibration["rule"] = "the calibrator with the lowest cross-validated ECE when fitted on train + val"
    return {
        "task": "classification", "positive_label": splits.label_names[1],
        "calibration": calibration,
        "operating_point": {"threshold": threshold, "applies_to": f"calibrated probability of {splits.label_names[1]}",
                            "rule": f"most sensitive threshold with specificity >= 0.90 on the {fitted_on}, "
                                    "midway between the two scores around it"},
        "ood": {"method": "Mahalanobis distance of pooled CAM-layer features to the training set",
                "layer": get_spec(arch).cam_layer, "threshold": ood_threshold,
                "rule": f"{OOD_QUANTILE:.0%} quantile of the {ood_on}' scores"},
        "cam": {"method": "gradcam", "layer": get_spec(arch).cam_layer, "target": "predicted class"},
        "metrics": metrics,
        "_extras": {"ood_mean": mean, "ood_precision": precision, **extras},
    }


def _classifier_scores(loaded: LoadedModel, data) -> Scored:
    card, device = loaded.card, next(loaded.model.parameters()).device
    logits, _ = predict(loaded.model, data.images, loaded.preprocessing, cam_layer(loaded.model, card.arch), device)
    calibrator, labels = Calibrator.from_card(card.calibration), data.labels.numpy()
    return Scored(split_report(logits, labels, calibrator, card.operating_point["threshold"]), labels,
                  _positive_prob(logits, calibrator))


def _auc_difference(a: Scored, b: Scored) -> dict[str, list[float]]:
    both = np.stack([a.per_image, b.per_image], axis=1)
    point = roc_auc_score(a.truth, b.per_image) - roc_auc_score(a.truth, a.per_image)
    ci = bootstrap_ci(a.truth, both, lambda y, p: {"d": roc_auc_score(y, p[:, 1]) - roc_auc_score(y, p[:, 0])})["d"]
    return {"AUC": [float(point), *ci]}


def class_weights(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights for the loss (n / (k * n_c)): the minority class counts as much in total."""
    counts = torch.bincount(labels, minlength=n_classes).float().clamp_min(1)
    return counts.sum() / (n_classes * counts)


def _headline(metrics: dict) -> str:
    return f"AUC {metrics['auc']:.3f}"


def _rules(card: ModelCard) -> str:
    return (f"Operating threshold {card.operating_point['threshold']:.3f} ({card.operating_point['rule']}); "
            f"calibration: {Calibrator.from_card(card.calibration).summary()}; "
            f"OOD threshold {card.ood['threshold']:.1f}")


TASK = Task(
    name="classification", title="Classification", defaults=FormDefaults(size=224, batch_size=32, epochs=10),
    loss=lambda train, cfg: torch.nn.CrossEntropyLoss(
        weight=class_weights(train.labels, 2) if cfg.balance == "weights" else None,
        label_smoothing=cfg.label_smoothing),
    loss_text="cross-entropy with inverse-frequency class weights",
    augmentation=augmentation,
    augmentation_text="affine (rotate <= 7 deg, shift <= 5 %, scale 0.92-1.08), brightness/contrast 0.15; no flips",
    validate=_validate_classifier, score="val_auc", describe=_describe_classifier,
    scores=_classifier_scores, difference=_auc_difference, headline=_headline,
    headline_numbers=lambda m: {"auc": m["auc"]}, rules=_rules, class_balancing=True, uses_reviews=True,
    cross_validates=True, label_smoothing=True, synthetic_images=True,
)
