"""The classification task: a calibrated two-label classifier with an operating threshold and an OOD gate.

Training: class-weighted cross-entropy, validation AUC for early stopping. The card: temperature,
operating threshold (validation specificity >= 0.90) and OOD threshold fitted on validation; the test
split reported once. Comparison: the AUC difference with a paired bootstrap CI."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from engine.data.catalog import augmentation
from engine.inference.batch import predict
from engine.metrics import (
    bootstrap_ci,
    fit_temperature,
    split_report,
    threshold_for_specificity,
)
from engine.models.card import ModelCard
from engine.models.checkpoint import LoadedModel
from engine.models.ood import fit_gaussian, mahalanobis
from engine.models.registry import cam_layer, get_spec
from engine.tasks.base import FormDefaults, Scored, Task

__all__ = ["TASK", "class_weights", "OOD_QUANTILE"]

OOD_QUANTILE = 0.99  # validation images above the threshold: 1 %


def _positive_prob(logits: torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    return torch.softmax(logits / temperature, dim=1)[:, 1].numpy()


def _validate_classifier(model, val, prep, device, arch) -> dict:
    logits, _ = predict(model, val.images, prep, cam_layer(model, arch), device)
    auc = float(roc_auc_score(val.labels.numpy(), _positive_prob(logits)))
    return {"score": auc, "val_loss": round(float(torch.nn.functional.cross_entropy(logits, val.labels)), 5),
            "val_auc": round(auc, 5)}


def _describe_classifier(model, arch, splits, prep, device) -> dict:
    """Temperature, operating threshold and OOD threshold fitted on validation; the test split reported."""
    sets, feature_layer = splits.sets, cam_layer(model, arch)
    outputs = {s: predict(model, sets[s].images, prep, feature_layer, device) for s in ("train", "val", "test")}
    labels = {s: sets[s].labels.numpy() for s in sets}
    temperature = fit_temperature(outputs["val"][0], sets["val"].labels)
    threshold = threshold_for_specificity(labels["val"], _positive_prob(outputs["val"][0], temperature), 0.90)
    mean, precision = fit_gaussian(outputs["train"][1])
    val_ood = mahalanobis(outputs["val"][1], mean, precision).numpy()
    ood_threshold = float(np.quantile(val_ood, OOD_QUANTILE))
    metrics = {s: split_report(outputs[s][0], labels[s], temperature, threshold) for s in ("val", "test")}
    return {
        "task": "classification", "positive_label": splits.label_names[1],
        "calibration": {"method": "temperature scaling", "temperature": temperature, "fitted_on": "val"},
        "operating_point": {"threshold": threshold, "applies_to": f"calibrated probability of {splits.label_names[1]}",
                            "rule": "most sensitive threshold with validation specificity >= 0.90, midway between "
                                    "the two validation scores around it"},
        "ood": {"method": "Mahalanobis distance of pooled CAM-layer features to the training set",
                "layer": get_spec(arch).cam_layer, "threshold": ood_threshold,
                "rule": f"{OOD_QUANTILE:.0%} quantile of the validation images' scores"},
        "cam": {"method": "gradcam", "layer": get_spec(arch).cam_layer, "target": "predicted class"},
        "metrics": metrics,
        "_extras": {"ood_mean": mean, "ood_precision": precision},
    }


def _classifier_scores(loaded: LoadedModel, data) -> Scored:
    card, device = loaded.card, next(loaded.model.parameters()).device
    logits, _ = predict(loaded.model, data.images, loaded.preprocessing, cam_layer(loaded.model, card.arch), device)
    temperature, labels = card.calibration["temperature"], data.labels.numpy()
    return Scored(split_report(logits, labels, temperature, card.operating_point["threshold"]), labels,
                  torch.softmax(logits.float() / temperature, dim=1)[:, 1].numpy())


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
            f"temperature {card.calibration['temperature']:.3f}; OOD threshold {card.ood['threshold']:.1f}")


TASK = Task(
    name="classification", title="Classification", defaults=FormDefaults(size=224, batch_size=32, epochs=10),
    loss=lambda train, balance: torch.nn.CrossEntropyLoss(
        weight=class_weights(train.labels, 2) if balance == "weights" else None),
    loss_text="cross-entropy with inverse-frequency class weights",
    augmentation=augmentation,
    augmentation_text="affine (rotate <= 7 deg, shift <= 5 %, scale 0.92-1.08), brightness/contrast 0.15; no flips",
    validate=_validate_classifier, score="val_auc", describe=_describe_classifier,
    scores=_classifier_scores, difference=_auc_difference, headline=_headline,
    headline_numbers=lambda m: {"auc": m["auc"]}, rules=_rules, class_balancing=True, uses_reviews=True,
)
