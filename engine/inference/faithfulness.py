"""How faithful an explanation map is to the model: grad-cam's perturbation metrics, always read next to
the same metric for a random map (grad-cam's RandomCAM), so "faithful" has a meaning.

The model's confidence is the log-odds of the explained class, log(p / (1 - p)) from the logits: this
classifier's softmax sits at 1.000 for most pneumonia films whatever is removed, so probability-based
scores would be 0 for every method; the log-odds keep moving. Pixels are removed with ROAD's
noisy linear imputation (each removed pixel is filled from its neighbours, so the removal itself leaks no
shape to the model). One set of perturbations gives both the deletion curves and ROAD: the confidence
after removing 20/40/60/80 % of the most (MoRF) or least (LeRF) relevant pixels. ROAD combined =
(mean LeRF - mean MoRF) / 2, grad-cam's ROADCombined formula; higher is more faithful.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from pytorch_grad_cam.metrics.arcc import Complexity
from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
from pytorch_grad_cam.metrics.perturbation_confidence import (
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.metrics.road import NoisyLinearImputer, neighbors_weights
from scipy.sparse import csc_matrix
from scipy.sparse.linalg import spsolve
from torch import nn

__all__ = ["FastNoisyLinearImputer", "LogOddsTarget", "Faithfulness", "REMOVED", "score_map", "METRICS"]

# Fractions of pixels removed. grad-cam's ARCC uses these four ROAD percentiles; each costs one sparse
# solve per map (0.05-0.5 s on this CPU), so nine would more than double the time for little change.
REMOVED = (0.2, 0.4, 0.6, 0.8)
_TIE_JITTER = 1e-6  # CAMs are exactly 0 over large areas; without it a percentile can remove far more than stated

# name -> (short title, higher is better); what the tables show, in order
METRICS = {
    "road": ("ROAD", True),
    "confidence_change": ("Keep-map change", True),
    "morf_auc": ("Deletion AUC (MoRF)", False),
    "lerf_auc": ("Deletion AUC (LeRF)", True),
    "complexity": ("Complexity", False),
}


class FastNoisyLinearImputer(NoisyLinearImputer):
    """ROAD's noisy linear imputation with the same equation system built from index arrays instead of a
    lil_matrix filled per neighbour: identical fill (tests/test_explain.py), half the time here, because
    building the lil_matrix cost more than solving it (94 + 67 ms vs 140 ms per 224 px map)."""

    def __call__(self, img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        flat = img.reshape(img.shape[0], -1)
        unknown = np.flatnonzero(mask.reshape(-1).numpy() == 0)
        matrix, rhs = _system(mask.numpy() > 0.5, flat.numpy(), unknown)
        solution = torch.tensor(spsolve(matrix, rhs), dtype=torch.float)
        filled = flat.clone()
        filled[:, unknown] = solution.t() + self.noise * torch.randn_like(solution.t())  # as the library draws it
        return filled.reshape_as(img)


def _system(known: np.ndarray, pixels: np.ndarray, unknown: np.ndarray) -> tuple[csc_matrix, np.ndarray]:
    """Each unknown pixel equals the weighted mean of its in-image neighbours (grad-cam's road.py system)."""
    h, w = known.shape
    known = known.reshape(-1)
    variable = np.full(h * w, -1)
    variable[unknown] = np.arange(len(unknown))
    row, col = np.divmod(unknown, w)
    diagonal = np.ones(len(unknown))
    rhs = np.zeros((len(unknown), pixels.shape[0]))
    rows, cols, values = [], [], []
    for (dy, dx), weight in neighbors_weights:
        r, c = row + dy, col + dx
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        diagonal[~inside] -= weight
        source, neighbour = np.flatnonzero(inside), r[inside] * w + c[inside]
        has_value = known[neighbour]
        rhs[source[has_value]] -= weight * pixels[:, neighbour[has_value]].T
        rows.append(source[~has_value])
        cols.append(variable[neighbour[~has_value]])
        values.append(np.full((~has_value).sum(), weight))
    diag = np.arange(len(unknown))
    entries = (np.concatenate(values + [-diagonal]), (np.concatenate(rows + [diag]), np.concatenate(cols + [diag])))
    matrix = csc_matrix(entries, shape=(len(unknown), len(unknown)))
    return matrix, rhs


class LogOddsTarget:
    """A grad-cam target: the log-odds of `category`, logit_k - logsumexp(other logits)."""

    def __init__(self, category: int):
        self.category = category

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        others = torch.cat([output[..., :self.category], output[..., self.category + 1:]], dim=-1)
        return output[..., self.category] - torch.logsumexp(others, dim=-1)


@dataclass(frozen=True)
class Faithfulness:
    confidence: float  # log-odds before any perturbation
    road: float
    confidence_change: float  # grad-cam CamMultImageConfidenceChange: log-odds(x * map) - log-odds(x)
    morf: tuple[float, ...]  # confidence at each REMOVED fraction, most relevant pixels first
    lerf: tuple[float, ...]  # ... least relevant first
    morf_auc: float  # mean confidence along the MoRF curve from 0 % removed: low = the map found the evidence
    lerf_auc: float  # ... along the LeRF curve: high = what the map left out did not matter
    complexity: float  # grad-cam ARCC's Complexity (L1 / pixels): low = compact

    def as_dict(self) -> dict:
        return asdict(self)


def _area(confidence: float, curve: np.ndarray) -> float:
    xs = np.array((0.0, *REMOVED))
    return float(np.trapezoid(np.concatenate(([confidence], curve)), xs) / xs[-1])


def _curve_point(remove, fraction: float) -> PerturbationConfidenceMetric:
    """grad-cam's ROAD metric at one percentile (ROADMostRelevantFirst / ...LeastRelevantFirst), with the
    faster imputer."""
    return PerturbationConfidenceMetric(remove(round(100 * (1 - fraction)), FastNoisyLinearImputer()))


def score_map(model: nn.Module, x: torch.Tensor, cam: np.ndarray, target: int, seed: int = 0) -> Faithfulness:
    """Faithfulness of one map (H, W) of ONE image x (1, C, H, W) for class `target`. The tie-breaking
    jitter and the imputation noise are seeded per map, so a map gets the same numbers whatever else is
    scored with it (the cache relies on this)."""
    cams = (cam + _TIE_JITTER * np.random.default_rng(seed).random(cam.shape))[None].astype(np.float32)
    targets = [LogOddsTarget(target)]
    with torch.no_grad():
        confidence = float(targets[0](model(x).float()[0]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        morf, lerf = (np.array([float(_curve_point(remove, f)(x, cams, targets, model, return_diff=False)[0])
                                for f in REMOVED])
                      for remove in (RemoveMostRelevantFirst, RemoveLeastRelevantFirst))
    change = float(CamMultImageConfidenceChange()(x, cams, targets, model)[0])
    return Faithfulness(
        confidence=confidence, road=float((lerf.mean() - morf.mean()) / 2), confidence_change=change,
        morf=tuple(map(float, morf)), lerf=tuple(map(float, lerf)), morf_auc=_area(confidence, morf),
        lerf_auc=_area(confidence, lerf), complexity=float(Complexity()(cams)[0]),
    )
