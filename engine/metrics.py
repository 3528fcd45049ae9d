"""Evaluation metrics for a binary classifier, calibration (temperature or vector scaling), reliability."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["mean_ci", "split_report", "binary_report", "bootstrap_ci", "auc", "auc_ci", "sens_at_spec", "spec_at_sens",
           "ece", "ece_if_calibrated", "reliability", "fit_temperature", "threshold_for_specificity", "CONFIDENT",
           "Calibrator", "fit_calibrator", "CALIBRATORS"]

CONFIDENT = 0.9  # a "confident" call: calibrated probability at or above this


def bootstrap_ci(y: np.ndarray, p: np.ndarray, statistic, n_boot: int = 2000, seed: int = 0) -> dict[str, list[float]]:
    """Percentile bootstrap 95 % CIs of every value `statistic(y, p)` returns, resampling images with a
    fixed seed (reproducible); resamples holding one class only are skipped."""
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if 0 < y[idx].sum() < len(idx):
            for key, value in statistic(y[idx], p[idx]).items():
                samples.setdefault(key, []).append(value)
    return {k: [float(v) for v in np.percentile(v, [2.5, 97.5])] for k, v in samples.items()}


def mean_ci(values: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean with its percentile bootstrap 95 % CI (resampling images, fixed seed)."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(values.mean()), float(low), float(high)


def _roc(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) exactly as sklearn's roc_curve gives them (one point per distinct score, collinear middle
    points dropped, (0, 0) first), without its input checks: the bootstrap calls it thousands of times, and
    the checks cost more than the arithmetic."""
    order = np.argsort(p, kind="mergesort")[::-1]
    scores, hits = p[order], np.asarray(y)[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # the last image of each distinct score
    tps = np.cumsum(hits, dtype=np.float64)[last]
    fps = last + 1 - tps
    if len(fps) > 2:
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps = fps[keep], tps[keep]
    return np.r_[0.0, fps] / fps[-1], np.r_[0.0, tps] / tps[-1]


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (ties count half), equal to sklearn's roc_auc_score."""
    fpr, tpr = _roc(y, p)
    return float(np.trapezoid(tpr, fpr))


def auc_ci(y: np.ndarray, p: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """AUC with its percentile bootstrap 95 % CI."""
    lo, hi = bootstrap_ci(y, p, lambda a, b: {"auc": auc(a, b)}, n_boot, seed)["auc"]
    return auc(y, p), lo, hi


def sens_at_spec(y: np.ndarray, p: np.ndarray, spec: float = 0.90) -> float:
    """The highest sensitivity reachable with specificity >= spec."""
    fpr, tpr = _roc(y, p)
    return float(tpr[fpr <= 1.0 - spec + 1e-12].max())


def spec_at_sens(y: np.ndarray, p: np.ndarray, sens: float = 0.95) -> float:
    """The highest specificity reachable with sensitivity >= sens."""
    fpr, tpr = _roc(y, p)
    return float(1.0 - fpr[tpr >= sens - 1e-12].min())


def threshold_for_specificity(y: np.ndarray, p: np.ndarray, spec: float = 0.90) -> float:
    """The most sensitive threshold whose specificity is still >= spec; predict positive at p >= t.

    Any t between the (allowed_fp + 1)-th highest negative score and the next score above it gives the same
    validation result; t is the midpoint, not one ULP above that negative, so the image that sets it cannot
    change side when another CPU computes its probability a few ULPs differently."""
    negatives = np.sort(p[y == 0])
    allowed_fp = int(np.floor(len(negatives) * (1.0 - spec) + 1e-9))
    k = len(negatives) - allowed_fp - 1
    if k < 0:
        return 0.0
    above = p[p > negatives[k]]
    return float((negatives[k] + above.min()) / 2) if above.size else float(np.nextafter(negatives[k], np.inf))


def _bins(p: np.ndarray, bins: int) -> np.ndarray:
    return np.clip(np.digitize(p, np.linspace(0.0, 1.0, bins + 1)[1:-1]), 0, bins - 1)


def ece(y: np.ndarray, p: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the positive-class probability, equal-width bins: the count-weighted mean
    of |observed rate - mean probability| per bin, i.e. sum over bins of |positives - sum of p| / n."""
    which = _bins(p, bins)
    gap = np.bincount(which, weights=y, minlength=bins) - np.bincount(which, weights=p, minlength=bins)
    return float(np.abs(gap).sum() / len(y))


def ece_if_calibrated(p: np.ndarray, n_sim: int = 1000, seed: int = 0) -> dict:
    """The ECE a perfectly calibrated model with these very probabilities would still show on this many
    images (labels drawn as Bernoulli(p)): the floor set by sample size and sharpness, so a reader can tell
    noise from miscalibration. Mean and 95 % range over `n_sim` draws (fixed seed)."""
    rng = np.random.default_rng(seed)
    values = np.array([ece((rng.random(len(p)) < p).astype(np.int64), p) for _ in range(n_sim)])
    low, high = np.percentile(values, [2.5, 97.5])
    return {"mean": float(values.mean()), "ci95": [float(low), float(high)]}


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 15) -> list[tuple[float, float, int]]:
    """Per bin: (mean predicted probability, observed positive rate, count)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = _bins(p, bins)
    out = []
    for b in range(bins):
        m = which == b
        out.append((float(p[m].mean()) if m.any() else float((edges[b] + edges[b + 1]) / 2),
                    float(y[m].mean()) if m.any() else 0.0, int(m.sum())))
    return out


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature T minimising the NLL of softmax(logits / T) (Guo et al. 2017), fitted on validation."""
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return log_t.exp().item()


def _fit_affine(logits: torch.Tensor, labels: torch.Tensor) -> tuple[list[float], list[float]]:
    """Vector scaling (Guo et al. 2017): softmax(w * logits + b) with per-class w and b, NLL by L-BFGS."""
    k = logits.shape[1]
    log_w = torch.zeros(k, requires_grad=True)
    bias = torch.zeros(k, requires_grad=True)
    opt = torch.optim.LBFGS([log_w, bias], lr=0.1, max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits.float() * log_w.exp() + bias, labels)
        loss.backward()
        return loss

    opt.step(closure)
    w = log_w.exp().detach()
    b = bias.detach() - bias.detach().mean()  # only differences matter to softmax
    return [float(v) for v in w], [float(v) for v in b]


@dataclass(frozen=True)
class Calibrator:
    """Calibrated logits = scale * logits + bias (per class). Temperature scaling is scale = 1/T, bias 0."""

    method: str
    scale: tuple[float, ...]
    bias: tuple[float, ...]

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        z = logits.float() * torch.tensor(self.scale, device=logits.device) + torch.tensor(self.bias,
                                                                                           device=logits.device)
        return torch.softmax(z, dim=-1)

    def to_card(self) -> dict:
        card = {"method": self.method, "scale": list(self.scale), "bias": list(self.bias)}
        if self.method == "temperature scaling":
            card["temperature"] = 1.0 / self.scale[0]
        return card

    def summary(self) -> str:
        if self.method == "temperature scaling":
            return f"temperature {1.0 / self.scale[0]:.3f}"
        return f"{self.method}, scale {', '.join(f'{v:.3f}' for v in self.scale)}, bias " \
               f"{', '.join(f'{v:+.3f}' for v in self.bias)}"

    @classmethod
    def from_card(cls, calibration: dict, classes: int = 2) -> Calibrator:
        if "scale" in calibration:
            return cls(calibration["method"], tuple(calibration["scale"]), tuple(calibration["bias"]))
        t = float(calibration["temperature"])  # cards written before vector scaling
        return cls("temperature scaling", (1.0 / t,) * classes, (0.0,) * classes)


def _fit_temperature_scaling(logits: torch.Tensor, labels: torch.Tensor) -> Calibrator:
    k = logits.shape[1]
    return Calibrator("temperature scaling", (1.0 / fit_temperature(logits, labels),) * k, (0.0,) * k)


def _fit_vector_scaling(logits: torch.Tensor, labels: torch.Tensor) -> Calibrator:
    scale, bias = _fit_affine(logits, labels)
    return Calibrator("vector scaling", tuple(scale), tuple(bias))


CALIBRATORS = {"temperature scaling": _fit_temperature_scaling, "vector scaling": _fit_vector_scaling}


def fit_calibrator(method: str, logits: torch.Tensor, labels: torch.Tensor) -> Calibrator:
    return CALIBRATORS[method](logits, labels)


def _confusion(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, int]:
    pred = p >= threshold
    return {"tp": int((pred & (y == 1)).sum()), "fp": int((pred & (y == 0)).sum()),
            "tn": int((~pred & (y == 0)).sum()), "fn": int((~pred & (y == 1)).sum())}


def _point_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    tp, fp, tn, fn = _confusion(y, p, threshold).values()
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "auc": auc(y, p), "accuracy": (tp + tn) / len(y), "precision": precision,
        "sensitivity": recall, "specificity": tn / (tn + fp) if tn + fp else 0.0,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "sensitivity_at_specificity_0.90": sens_at_spec(y, p, 0.90),
        "specificity_at_sensitivity_0.95": spec_at_sens(y, p, 0.95),
        "ece": ece(y, p),
    }


def _with_basic_ece_ci(ci: dict[str, list[float]], point: float) -> dict[str, list[float]]:
    """ECE is biased upwards under resampling (duplicated images add noise to every bin), so its percentile
    interval can miss the point estimate; the basic bootstrap interval (2 * point - upper, 2 * point - lower,
    floored at 0) corrects that bias."""
    low, high = ci["ece"]
    return {**ci, "ece": [max(0.0, 2 * point - high), max(0.0, 2 * point - low)]}


def binary_report(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """Every metric on the model card, each with a bootstrap 95 % CI, for positive-class probabilities p
    and labels y (1 = positive); threshold-dependent metrics count p >= threshold as positive."""
    fpr, tpr = _roc(y, p)
    return {
        "n": int(len(y)), "positives": int(y.sum()), "negatives": int(len(y) - y.sum()),
        **_point_metrics(y, p, threshold),
        "ci95": _with_basic_ece_ci(bootstrap_ci(y, p, lambda a, b: _point_metrics(a, b, threshold)), ece(y, p)),
        "confusion": _confusion(y, p, threshold),
        "negatives_above_0.9": int(((p >= CONFIDENT) & (y == 0)).sum()),
        "ece_if_calibrated": ece_if_calibrated(p), "reliability": reliability(y, p),
        "roc": {"fpr": [round(float(v), 4) for v in fpr], "tpr": [round(float(v), 4) for v in tpr]},
    }


def split_report(logits: torch.Tensor, labels: np.ndarray, calibrator: Calibrator, threshold: float) -> dict:
    """The card's metrics for one split: calibrated probabilities at the operating threshold, plus the
    ECE and reliability of the uncalibrated ones."""
    raw = torch.softmax(logits.float(), dim=1)[:, 1].numpy()
    calibrated = calibrator.probabilities(logits)[:, 1].numpy()
    report = binary_report(labels, calibrated, threshold)
    report["ece_before_calibration"] = ece(labels, raw)
    report["reliability_before_calibration"] = reliability(labels, raw)
    return report
