"""Sequence classification of one volume (or cine loop) with the rules stored on the model's card: calibrated
probability at the operating threshold, the OOD score of the pooled sequence features, and each slice's
contribution (the attention weights of a model that has them), all from one forward pass."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.metrics import Calibrator
from engine.models.checkpoint import LoadedModel
from engine.models.ood import mahalanobis, pooled
from engine.models.registry import cam_layer

__all__ = ["SequencePrediction", "SequenceClassifier"]


@dataclass(frozen=True)
class SequencePrediction:
    label: str  # at the card's operating threshold
    probability: float  # calibrated probability of the positive label
    probabilities_raw: dict[str, float]  # uncalibrated softmax
    threshold: float
    ood_score: float
    ood_threshold: float
    latency_ms: float  # preprocessing + forward, excluding decoding
    # One value per slice of the volume as given (the model's slices mapped back), summing to 1; None when
    # the architecture has no per-slice output (the 2.5-D and 3-D baselines).
    contribution: np.ndarray | None = field(repr=False)

    @property
    def out_of_distribution(self) -> bool:
        return self.ood_score > self.ood_threshold


def _to_slices(weights: np.ndarray, n: int) -> np.ndarray:
    """The model's per-slice weights over the n slices of the volume as given (linear resampling), renormalised."""
    if len(weights) != n:
        weights = np.interp(np.linspace(0, len(weights) - 1, n), np.arange(len(weights)), weights)
    return weights / weights.sum()


class SequenceClassifier:
    """A loaded sequence model prepared for inference; shared across threads (hooks live on the modules)."""

    def __init__(self, loaded: LoadedModel, device: str | torch.device = "cpu"):
        self.loaded = loaded
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device).eval().requires_grad_(False)
        self.features = cam_layer(self.model, loaded.card.arch)
        contribution = loaded.card.extra.get("contribution") or {}
        self.attention = self.model.get_submodule(contribution["module"]) if contribution else None
        self.calibrator = Calibrator.from_card(loaded.card.calibration, len(loaded.labels))
        self.threshold = float(loaded.card.operating_point["threshold"])
        self.ood_threshold = float(loaded.card.ood["threshold"])
        self.positive = loaded.labels.index(loaded.card.positive_label)
        self.lock = threading.Lock()
        self.classify(np.zeros((loaded.preprocessing.depth, *loaded.preprocessing.shape), np.uint8))  # warm-up

    @torch.inference_mode()
    def classify(self, volume: np.ndarray) -> SequencePrediction:
        """(slices, rows, cols) uint8 -> prediction."""
        start = time.perf_counter()
        x = self.loaded.preprocessing(volume).to(self.device)
        captured: dict[str, torch.Tensor] = {}
        hooks = [self.features.register_forward_hook(lambda m, i, o: captured.__setitem__("features", o))]
        if self.attention is not None:
            hooks.append(self.attention.register_forward_hook(lambda m, i, o: captured.__setitem__("attention", o)))
        try:
            with self.lock:
                logits = self.model(x).float().cpu()
        finally:
            for hook in hooks:
                hook.remove()
        extras = self.loaded.extras
        ood = float(mahalanobis(pooled(captured["features"]).cpu(), extras["ood_mean"].cpu(),
                                extras["ood_precision"].cpu())[0])
        p = float(self.calibrator.probabilities(logits)[0, self.positive])
        raw = torch.softmax(logits, dim=1)[0]
        weights = captured.get("attention")
        return SequencePrediction(
            label=self.loaded.labels[self.positive if p >= self.threshold else 1 - self.positive], probability=p,
            probabilities_raw={n: float(raw[k]) for k, n in enumerate(self.loaded.labels)},
            threshold=self.threshold, ood_score=ood, ood_threshold=self.ood_threshold,
            latency_ms=(time.perf_counter() - start) * 1000,
            contribution=_to_slices(weights[0].float().cpu().numpy().astype(np.float64), len(volume))
            if weights is not None else None)
