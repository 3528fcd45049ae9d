"""Classification with the preprocessing, calibration, thresholds and OOD statistics stored with a model."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.transforms import v2

from engine.inference.cam import single_pass_cam
from engine.inference.predict import autocast
from engine.metrics import Calibrator
from engine.models.checkpoint import LoadedModel
from engine.models.ood import mahalanobis, pooled
from engine.models.registry import cam_layer

__all__ = ["Prediction", "Classifier", "OOD_WARNING", "operating_point_in_words", "uncertainty_in_words",
           "ood_in_words"]

OOD_WARNING = ("This image does not look like the chest X-rays this model was trained on — "
               "interpret with care.")


@dataclass(frozen=True)
class Prediction:
    """One image's result. Probabilities are per label; `probability` is the positive label's, calibrated."""

    label: str  # at the card's operating threshold
    probability: float  # calibrated probability of the positive label
    probabilities: dict[str, float]  # calibrated (the card's calibrator)
    probabilities_raw: dict[str, float]  # uncalibrated softmax
    threshold: float
    uncertainty: float  # TTA standard deviation of `probability`, or predictive entropy in bits
    uncertainty_method: str  # "tta-<n>" or "entropy"
    ood_score: float
    ood_threshold: float
    latency_ms: float  # preprocessing + forward + CAM (+ TTA), excluding decoding
    cam: np.ndarray | None = field(repr=False)  # (size, size) in [0, 1], evidence for `label`; None: not asked
    cam_method: str = "gradcam"

    @property
    def out_of_distribution(self) -> bool:
        return self.ood_score > self.ood_threshold


# Where an uncertainty reads low / moderate / high. Entropy in bits: below 0.47 the calibrated probability is
# outside 10-90 %, above 0.88 inside 30-70 %. TTA spread: the standard deviation of the probability.
_UNCERTAINTY_BANDS = {"entropy": (0.47, 0.88), "tta": (0.05, 0.15)}


def uncertainty_in_words(prediction: Prediction) -> str:
    low, high = _UNCERTAINTY_BANDS["tta" if prediction.uncertainty_method.startswith("tta") else "entropy"]
    u = prediction.uncertainty
    return ("low: the model is far from a coin toss on this image" if u < low else
            "moderate: read the image with the result in mind, not the other way round" if u < high else
            "high: the model is close to a coin toss on this image")


def ood_in_words(prediction: Prediction) -> str:
    if prediction.out_of_distribution:
        return "above the threshold: unlike the films the model was trained on, so its result is unreliable here"
    return "below the threshold: the image resembles the films the model was trained on (higher = less alike)"


def operating_point_in_words(card) -> str | None:
    """What the threshold means on the card's held-out test split, in counts a reader can picture; None when the
    card has no confusion matrix for it."""
    test = (card.metrics or {}).get("test", {})
    if "confusion" not in test or len(card.labels) != 2:
        return None
    c = test["confusion"]
    positives, negatives = c["tp"] + c["fn"], c["tn"] + c["fp"]
    if not positives or not negatives:
        return None
    negative = next(label for label in card.labels if label != card.positive_label)
    return (f"At this threshold ({card.operating_point['threshold']:.1%}), on the {test['n']} held-out test images: "
            f"sensitivity {c['tp'] / positives:.0%} ({c['tp']} of {positives} {card.positive_label} images flagged), "
            f"specificity {c['tn'] / negatives:.0%}: about {round(100 * c['fp'] / negatives)} in 100 {negative} "
            "images are flagged.")


def _entropy_bits(p: float) -> float:
    return -sum(q * math.log2(q) for q in (p, 1.0 - p) if q > 0)


class Classifier:
    """A loaded model prepared for inference. Shared across threads (st.cache_resource): calls are
    serialised by a lock because CAM hooks live on the shared modules."""

    def __init__(self, loaded: LoadedModel, device: str | torch.device = "cpu"):
        self.loaded = loaded
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device, memory_format=torch.channels_last).eval()
        self.model.requires_grad_(False)
        self.layer = cam_layer(self.model, loaded.card.arch)
        self.calibrator = Calibrator.from_card(loaded.card.calibration, len(loaded.labels))
        self.threshold = float(loaded.card.operating_point["threshold"])
        self.ood_threshold = float(loaded.card.ood["threshold"])
        self.positive = loaded.labels.index(loaded.card.positive_label)
        self.lock = threading.Lock()  # also held by explanations: hooks live on the shared modules
        self._tta = v2.RandomAffine(degrees=5, translate=(0.03, 0.03), scale=(0.95, 1.05))
        # Warm-up: the first real case reports a true latency.
        self.classify(np.zeros(loaded.preprocessing.shape, np.uint8))

    def choose(self, logits: torch.Tensor) -> int:
        p = self.calibrator.probabilities(logits)[self.positive]
        return self.positive if float(p) >= self.threshold else 1 - self.positive

    def classify(self, gray: np.ndarray, tta: int = 0) -> Prediction:
        return self.classify_batch([gray], tta)[0]

    def classify_batch(self, grays: list[np.ndarray], tta: int = 0, cam: bool = True,
                       timings: dict[str, float] | None = None) -> list[Prediction]:
        """(H, W) uint8 display images -> predictions; one forward for the whole batch (+ tta per image).
        `cam=False` skips the explanation (a plain forward; batch runs that do not keep CAMs); `timings`
        accumulates seconds of preprocessing and of the forward (+ CAM)."""
        start = time.perf_counter()
        prep = self.loaded.preprocessing
        x = torch.cat([prep(g) for g in grays]).to(self.device, memory_format=torch.channels_last)
        prepared = time.perf_counter()
        with self.lock:
            if cam:
                logits, cams, chosen, activations = single_pass_cam(self.model, self.layer, x, self.choose)
            else:
                logits, activations = self._forward(x)
                cams, chosen = [None] * len(grays), [self.choose(z) for z in logits.float().cpu()]
            spreads = self._tta_spread(x, tta) if tta else None
        features = pooled(activations)
        ood = mahalanobis(features, self.loaded.extras["ood_mean"].cpu(), self.loaded.extras["ood_precision"].cpu())
        raw = torch.softmax(logits.float().cpu(), dim=1)
        cal = self.calibrator.probabilities(logits.float().cpu())
        if timings is not None:
            timings["preprocess"] = timings.get("preprocess", 0.0) + prepared - start
            timings["forward_cam" if cam else "forward"] = (timings.get("forward_cam" if cam else "forward", 0.0)
                                                            + time.perf_counter() - prepared)
        each_ms = (time.perf_counter() - start) * 1000 / len(grays)
        labels = self.loaded.labels
        out = []
        for i in range(len(grays)):
            p = float(cal[i, self.positive])
            out.append(Prediction(
                label=labels[chosen[i]], probability=p,
                probabilities={n: float(cal[i, k]) for k, n in enumerate(labels)},
                probabilities_raw={n: float(raw[i, k]) for k, n in enumerate(labels)},
                threshold=self.threshold,
                uncertainty=float(spreads[i]) if spreads is not None else _entropy_bits(p),
                uncertainty_method=f"tta-{tta}" if tta else "entropy",
                ood_score=float(ood[i]), ood_threshold=self.ood_threshold, latency_ms=each_ms, cam=cams[i],
            ))
        return out

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the CAM layer's activations (the OOD gate's features), without any backward."""
        captured: list[torch.Tensor] = []
        handle = self.layer.register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            with autocast(self.device):
                logits = self.model(x)
        finally:
            handle.remove()
        return logits, captured[0]

    @torch.no_grad()
    def _tta_spread(self, x: torch.Tensor, n: int) -> np.ndarray:
        """Standard deviation of the calibrated positive probability over the image and n small re-poses."""
        generator_state = torch.get_rng_state()
        torch.manual_seed(0)  # the same views every time: a case's uncertainty must not change on reload
        views = torch.stack([x] + [torch.stack([self._tta(im) for im in x]) for _ in range(n)])
        torch.set_rng_state(generator_state)
        batch = views.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        probs = self.calibrator.probabilities(self.model(batch).float())[:, self.positive]
        return probs.view(n + 1, len(x)).std(dim=0).cpu().numpy()
