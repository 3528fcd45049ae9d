"""Out-of-distribution score: Mahalanobis distance of an image's pooled CAM-layer features to the
training images' features (Lee et al. 2018, one class-agnostic Gaussian). The features come from the
same forward pass as the prediction, so the score costs a matrix-vector product."""

from __future__ import annotations

import torch

__all__ = ["fit_gaussian", "mahalanobis", "pooled"]


def pooled(activations: torch.Tensor) -> torch.Tensor:
    """(N, C, ...) layer output -> (N, C) global average over every spatial (or slice) axis; (N, C) as is."""
    return activations.float().flatten(2).mean(dim=2) if activations.dim() > 2 else activations.float()


def fit_gaussian(features: torch.Tensor, shrinkage: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and precision matrix; the covariance is shrunk towards its mean variance so it inverts."""
    features = features.double()
    mean = features.mean(0)
    centred = features - mean
    cov = centred.T @ centred / max(len(features) - 1, 1)
    eye = torch.eye(cov.shape[0], dtype=cov.dtype)
    cov = (1 - shrinkage) * cov + shrinkage * cov.diagonal().mean() * eye
    return mean.float(), torch.linalg.inv(cov).float()


def mahalanobis(features: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    d = features.float() - mean
    return ((d @ precision) * d).sum(-1).clamp_min(0).sqrt()
