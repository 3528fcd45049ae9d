"""The sequence task: one label for a whole image sequence (the slices of a volume, the frames of a cine loop).

It is a calibrated two-label classifier like the classification task (operating threshold, OOD gate, test
split reported once, AUC comparison), over (1, D, H, W) inputs. What differs: the volume augmentation, vector
scaling as the calibrator (fitted on validation), the per-slice contribution (attention weights) on the card,
and one more reported number, accuracy at a calibrated probability of 0.5, the convention of the MedMNIST
benchmarks it is compared with. `evaluate --write` refits the card's rules (weights unchanged).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from engine.data.catalog import VolumeShift
from engine.inference.batch import predict
from engine.metrics import Calibrator, bootstrap_ci
from engine.models.checkpoint import LoadedModel
from engine.models.registry import cam_layer
from engine.tasks import classification
from engine.tasks.base import FormDefaults, Scored
from engine.tasks.classification import _classifier_scores, _describe_classifier

__all__ = ["TASK", "with_accuracy_at_half", "CONTRIBUTION"]

# How each architecture says which slices mattered (an architecture not listed has no per-slice output).
CONTRIBUTION = {"slice_rnn": {"method": "attention weights over slices", "module": "attention",
                              "meaning": "the share of the pooled sequence vector each slice provides (sums to 1)"}}


def _accuracy(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {"accuracy_at_0.5": float(((p >= 0.5) == (y == 1)).mean())}


def with_accuracy_at_half(report: dict, labels: np.ndarray, p: np.ndarray) -> dict:
    """A split's report plus the accuracy at a calibrated probability of 0.5, with its bootstrap 95 % CI."""
    return {**report, **_accuracy(labels, p),
            "ci95": {**report["ci95"], **bootstrap_ci(labels, p, _accuracy)}}


def _scores(loaded: LoadedModel, data) -> Scored:
    scored = _classifier_scores(loaded, data)
    return Scored(with_accuracy_at_half(scored.report, scored.truth, scored.per_image), scored.truth,
                  scored.per_image)


def _describe(model, arch, splits, prep, device) -> dict:
    # Vector scaling (a scale and a bias per class), not temperature alone: the class-weighted loss moves the
    # decision boundary towards the minority class, and only a bias moves it back, so that a calibrated
    # probability of 0.5 means even odds (the MedMNIST accuracy is read there).
    card = _describe_classifier(model, arch, splits, prep, device, calibrator="vector scaling")
    calibrator = Calibrator.from_card(card["calibration"])
    for split in ("val", "test"):
        data = splits.sets[split]
        logits, _ = predict(model, data.images, prep, cam_layer(model, arch), device)
        card["metrics"][split] = with_accuracy_at_half(card["metrics"][split], data.labels.numpy(),
                                                       calibrator.probabilities(logits)[:, 1].numpy())
    card.update(task="sequence", cam={}, contribution=CONTRIBUTION.get(arch))
    return card


# The classification task with what differs for a sequence (reviews and cross-validation are not wired here).
TASK = dataclasses.replace(
    classification.TASK, name="sequence", title="Sequence (volume / cine) classification",
    defaults=FormDefaults(size=32, batch_size=32, epochs=40, depth=32), augmentation=VolumeShift,
    augmentation_text="random shift of up to 8 % along each axis, zero-filled; no flips or rotations",
    describe=_describe, scores=_scores,
    headline_numbers=lambda m: {"auc": m["auc"], "accuracy_at_0.5": m["accuracy_at_0.5"]},
    uses_reviews=False, cross_validates=False, synthetic_images=False, refit_on_rewrite=True,
)
