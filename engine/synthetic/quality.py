"""How good and how private synthetic images are, measured without downloading anything.

Feature spaces: the shipped classifier's pooled CAM-layer features (512-d for the ResNet-18), and the same
features whitened with its OOD gate's Gaussian (mean, precision), where Euclidean distance is the gate's
Mahalanobis distance. Real images pass through the generator's resolution first (downscaled to it, then
upscaled like a synthetic image), so a distance measures content, not sharpness.

- Fréchet distance between two feature sets (Heusel et al. 2017), next to the same distance between two real
  image sets of the same size: the floor a perfect generator would reach.
- Precision / recall / density / coverage (Naeem et al. 2020) with k nearest neighbours.
- Memorisation: each synthetic image's nearest training image (pixel and feature distance); it is flagged when
  it lies closer to a training image than all but the lowest `TAIL` of real held-out images lie to theirs, in
  either measure. Flagged images are never used for training.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from engine.inference.predict import predict
from engine.models.checkpoint import LoadedModel
from engine.models.registry import cam_layer

__all__ = ["frechet_distance", "prdc", "nearest", "ClassifierFeatures", "Memorisation",
           "memorisation", "TAIL", "PRDC_K"]

TAIL = 0.01  # the fraction of real held-out images that would be flagged, per measure
PRDC_K = 5


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(m)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two (n, d) feature sets. The trace of the root is
    taken as that of the symmetric (S_a^1/2 S_b S_a^1/2)^1/2 (same eigenvalues), which stays real and exact for
    the singular covariances of fewer images than features."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _sqrt_psd(cov_a)
    middle = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b)
                 - 2 * np.sqrt(np.clip(middle, 0, None)).sum())


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return torch.cdist(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)).numpy()


def _kth_radius(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of each point to its k-th nearest other point of the same set."""
    d = _distances(x, x)
    return np.sort(d, axis=1)[:, k]  # column 0 is the point itself


def prdc(real: np.ndarray, fake: np.ndarray, k: int = PRDC_K) -> dict[str, float]:
    """Precision, recall, density and coverage of `fake` against `real` (k-NN balls; Naeem et al. 2020)."""
    real_radius, fake_radius = _kth_radius(real, k), _kth_radius(fake, k)
    d = _distances(real, fake)  # (n_real, n_fake)
    inside_real = d <= real_radius[:, None]
    return {"precision": float(inside_real.any(axis=0).mean()),
            "recall": float((d <= fake_radius[None, :]).any(axis=1).mean()),
            "density": float(inside_real.sum() / (k * d.shape[1])),
            "coverage": float((d.min(axis=1) <= real_radius).mean())}


def nearest(queries: np.ndarray, references: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(index, Euclidean distance) of each query's nearest reference; rows are flattened first."""
    q = queries.reshape(len(queries), -1).astype(np.float32)
    r = torch.as_tensor(references.reshape(len(references), -1).astype(np.float32))
    index, distance = [], []
    for start in range(0, len(q), chunk):
        d = torch.cdist(torch.as_tensor(q[start:start + chunk]), r)
        best = d.min(dim=1)
        index.append(best.indices.numpy())
        distance.append(best.values.numpy())
    return np.concatenate(index), np.concatenate(distance).astype(np.float64)


class ClassifierFeatures:
    """Images at the generator's size -> features in every space: the classifier's pooled CAM-layer features
    ("classifier") and, when its card has an OOD gate, the same whitened by the gate's Gaussian ("ood")."""

    def __init__(self, classifier: LoadedModel, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model, self.prep = classifier.model.to(self.device), classifier.preprocessing
        self.layer = cam_layer(self.model, classifier.card.arch)
        self.spaces = {"classifier": f"{classifier.name} pooled {classifier.card.cam.get('layer', 'CAM-layer')} "
                                     "features"}
        self.whitening = None
        if "ood_mean" in classifier.extras:
            # x^T P x = ||L^T x||^2 for P = L L^T: Euclidean distance here is the gate's Mahalanobis distance.
            self.whitening = (classifier.extras["ood_mean"].double().cpu().numpy(),
                              np.linalg.cholesky(classifier.extras["ood_precision"].double().cpu().numpy()))
            self.spaces["ood"] = "the same, whitened by the OOD gate (Mahalanobis geometry)"

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        rows, cols = self.prep.shape
        x = torch.stack([self.prep.resize_uint8(cv2.resize(im, (cols, rows), interpolation=cv2.INTER_LINEAR))
                         for im in images])
        pooled = predict(self.model, x, self.prep, self.layer, self.device, batch_size=32)[1].numpy()
        out = {"classifier": pooled.astype(np.float64)}
        if self.whitening is not None:
            mean, root = self.whitening
            out["ood"] = (out["classifier"] - mean) @ root
        return out


@dataclass(frozen=True)
class Memorisation:
    """Nearest training image of each synthetic image, and whether it is flagged."""

    pixel_index: np.ndarray  # nearest training image by pixel distance
    pixel_distance: np.ndarray  # root-mean-square pixel difference on [0, 1] images
    feature_index: np.ndarray
    feature_distance: np.ndarray
    pixel_threshold: float  # the TAIL quantile of real held-out images' nearest-training distances
    feature_threshold: float
    flagged: np.ndarray  # bool

    def summary(self) -> dict:
        return {"images": len(self.flagged), "flagged": int(self.flagged.sum()),
                "flagged_fraction": round(float(self.flagged.mean()), 4) if len(self.flagged) else 0.0,
                "pixel_threshold_rms": round(self.pixel_threshold, 4),
                "feature_threshold": round(self.feature_threshold, 4),
                "median_pixel_distance_rms": round(float(np.median(self.pixel_distance)), 4),
                "median_feature_distance": round(float(np.median(self.feature_distance)), 4),
                "rule": f"flagged when closer to a training image than the {TAIL:.0%} quantile of real held-out "
                        "images' nearest-training distances, by pixels or by classifier features"}


def _rms(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def memorisation(synthetic: np.ndarray, synthetic_features: np.ndarray, train: np.ndarray,
                 train_features: np.ndarray, held_out: np.ndarray, held_out_features: np.ndarray) -> Memorisation:
    """Flag synthetic images nearer a training image than real held-out images are (uint8 images at one size)."""
    scale = np.sqrt(train[0].size)  # Euclidean on [0, 1] pixels / sqrt(pixels) = RMS difference
    train_px = _rms(train)
    p_idx, p_dist = nearest(_rms(synthetic), train_px)
    f_idx, f_dist = nearest(synthetic_features, train_features)
    p_ref = nearest(_rms(held_out), train_px)[1] / scale
    f_ref = nearest(held_out_features, train_features)[1]
    p_thr, f_thr = float(np.quantile(p_ref, TAIL)), float(np.quantile(f_ref, TAIL))
    p_dist = p_dist / scale
    return Memorisation(p_idx, p_dist, f_idx, f_dist, p_thr, f_thr, (p_dist < p_thr) | (f_dist < f_thr))
