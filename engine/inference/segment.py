"""Segmentation inference: an 8-bit grayscale image in, a cleaned mask at the image's own size out, with
its measurements. Training's evaluation calls the same `full_size_mask`, so the card's numbers are the
numbers the page shows.

The model sees the image resized to its square input; its foreground probability is resized back to the
image's size (bilinear) before thresholding, so the mask's edge is placed between the model's pixels
rather than on their blocky grid.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

from engine.inference.cam import compute_cam, head_only_backward
from engine.inference.measure import Measurement, clean_mask, measure
from engine.io.study import UNKNOWN_SPACING, Spacing
from engine.models.checkpoint import LoadedModel
from engine.models.registry import cam_layer

__all__ = ["Segmentation", "Segmenter", "full_size_mask", "foreground_probability"]

THRESHOLD = 0.5


def foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """(N, C, S, S) logits -> (N, S, S) probability of anything but background (class 0)."""
    return 1 - torch.softmax(logits.float(), dim=1)[:, 0]


def full_size_mask(probability: torch.Tensor, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(S, S) probability -> (probability, cleaned mask) at `shape` (rows, cols)."""
    full = F.interpolate(probability[None, None].float(), size=shape, mode="bilinear", align_corners=False)[0, 0]
    full = full.cpu().numpy()
    return full, clean_mask(full > THRESHOLD)


@dataclass
class Segmentation:
    probability: np.ndarray  # (H, W) float32 foreground probability at the image's size
    mask: np.ndarray  # (H, W) bool, largest component, holes filled
    measurement: Measurement | None  # None when the mask is empty
    latency_ms: float  # preprocessing + forward + post-processing + measurement


class Segmenter:
    """A loaded segmentation model; thread-safe (one forward at a time, as in Classifier)."""

    def __init__(self, loaded: LoadedModel, device: str | torch.device = "cpu"):
        self.loaded = loaded
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device).eval().requires_grad_(False)
        self.layer = cam_layer(self.model, loaded.card.arch)
        self.lock = threading.Lock()

    def probability(self, gray: np.ndarray) -> torch.Tensor:
        """(S, S) foreground probability at the model's input size."""
        x = self.loaded.preprocessing(gray).to(self.device)
        with self.lock, torch.inference_mode():
            return foreground_probability(self.model(x))[0].cpu()

    def disagreement(self, gray: np.ndarray) -> np.ndarray:
        """(S, S) |p(image) - p(mirror image)|: an uncertainty map for one more forward. (Averaging the two
        as test-time augmentation did not improve validation Dice or HC error, so masks use one forward.)"""
        x = self.loaded.preprocessing(gray).to(self.device)
        with self.lock, torch.inference_mode():
            p = foreground_probability(self.model(torch.cat([x, x.flip(-1)])))
        return (p[0] - p[1].flip(-1)).abs().cpu().numpy()

    def segment(self, gray: np.ndarray, spacing: Spacing = UNKNOWN_SPACING) -> Segmentation:
        start = time.perf_counter()
        probability, mask = full_size_mask(self.probability(gray), gray.shape[:2])
        measurement = measure(mask, spacing, self.boundary_offset(gray.shape[:2])) if mask.sum() >= 5 else None
        return Segmentation(probability.astype(np.float32), mask, measurement, (time.perf_counter() - start) * 1000)

    def boundary_offset(self, shape: tuple[int, int]) -> float:
        """The card's boundary offset in this image's pixels (fitted at the training images' size)."""
        rule = (self.loaded.card.measurement or {})
        return rule.get("boundary_offset_px", 0.0) * max(shape) / rule.get("reference_side_px", max(shape))

    def explain(self, gray: np.ndarray, method: str = "gradcam") -> np.ndarray:
        """"Explain this region": a CAM at the model's input size for the predicted mask's total head score
        (grad-cam's SemanticSegmentationTarget), taken at the architecture's CAM layer."""
        probability = self.probability(gray)
        target = SemanticSegmentationTarget(1, (probability > THRESHOLD).float().numpy())
        x = self.loaded.preprocessing(gray).to(self.device)
        with self.lock, head_only_backward(self.layer):
            return compute_cam(self.model, self.layer, x, method, target)[0]


