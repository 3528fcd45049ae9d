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

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

from engine.errors import ModelMismatch
from engine.explain import compute_cam, head_only_backward
from engine.io.study import UNKNOWN_SPACING, Spacing
from engine.measure import Measurement, clean_mask, ellipse_outline, measure
from engine.models.checkpoint import LoadedModel
from engine.models.registry import cam_layer

__all__ = ["Segmentation", "Segmenter", "full_size_mask", "foreground_probability", "draw_segmentation", "COLOURS"]

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
        if loaded.card["task"] != "segmentation":
            raise ModelMismatch(f"{loaded.name} is a {loaded.card['task']} model, not a segmentation model")
        self.loaded = loaded
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device).eval().requires_grad_(False)
        self.layer = cam_layer(self.model, loaded.card["arch"])
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
        rule = self.loaded.card.get("measurement", {})
        return rule.get("boundary_offset_px", 0.0) * max(shape) / rule.get("reference_side_px", max(shape))

    def explain(self, gray: np.ndarray, method: str = "gradcam") -> np.ndarray:
        """"Explain this region": a CAM at the model's input size for the predicted mask's total head score
        (grad-cam's SemanticSegmentationTarget), taken at the architecture's CAM layer."""
        probability = self.probability(gray)
        target = SemanticSegmentationTarget(1, (probability > THRESHOLD).float().numpy())
        x = self.loaded.preprocessing(gray).to(self.device)
        with self.lock, head_only_backward(self.layer):
            return compute_cam(self.model, self.layer, x, method, target)[0]


COLOURS = {"green": (60, 220, 90), "yellow": (255, 214, 0), "cyan": (0, 200, 255), "red": (255, 60, 60)}
TRUTH_COLOUR = (255, 0, 255)  # magenta: never one of the mask colours
ELLIPSE_COLOUR = (255, 255, 255)
DISPLAY_SIDE = 900  # small ultrasound images are enlarged so 2-px lines stay thin on screen


def draw_segmentation(gray: np.ndarray, mask: np.ndarray, style: str = "contour", opacity: float = 0.35,
                      colour: str = "green", ellipse=None, truth: np.ndarray | None = None) -> np.ndarray:
    """An RGB image for the screen: the mask filled or outlined, the fitted ellipse (white) and the ground
    truth outline (magenta, wider and underneath, so it shows as a rim where the two agree). Enlarged
    (cubic) to DISPLAY_SIDE on its long side when smaller, before the lines are drawn, so outlines are
    sharp rather than upsampled pixels."""
    scale = max(1.0, DISPLAY_SIDE / max(gray.shape))
    size = (round(gray.shape[1] * scale), round(gray.shape[0] * scale))
    rgb = cv2.cvtColor(cv2.resize(gray, size, interpolation=cv2.INTER_CUBIC), cv2.COLOR_GRAY2RGB)
    big = _enlarge(mask, size)
    rgb_colour = np.array(COLOURS[colour], np.float32)
    # Bottom to top: the truth (wide), the ellipse (thin), the model's mask, so the model's line is the one
    # seen where they coincide and the others show where they differ. Widths suit the ~600 px it is shown at.
    if truth is not None:
        _outline(rgb, _enlarge(truth, size), TRUTH_COLOUR, 7)
    if ellipse is not None:
        points = np.round(ellipse_outline(ellipse) * scale + (scale - 1) / 2).astype(np.int32)
        cv2.polylines(rgb, [points], True, ELLIPSE_COLOUR, 2, cv2.LINE_AA)
    if style == "filled":
        rgb[big] = (rgb[big] * (1 - opacity) + rgb_colour * opacity).astype(np.uint8)
    else:
        _outline(rgb, big, COLOURS[colour], 3)
    return rgb


def _enlarge(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A mask at display size with smooth edges (linear, > 0.5) instead of enlarged pixel steps."""
    return cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_LINEAR) > 0.5


def _outline(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], thickness: int = 2) -> None:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, colour, thickness, cv2.LINE_AA)
