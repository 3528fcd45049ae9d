"""Measurements on a segmentation mask: clean-up, ellipse fit, head circumference and area in mm, and
agreement with a ground-truth mask (Dice, IoU, HD95).

The ellipse comes from the mask's second moments: for a filled ellipse with semi-axes a >= b, the
covariance of its pixel coordinates has eigenvalues a^2/4 and b^2/4. This is the fit the HC18 ground
truth reproduces within 0.7 % median (dataset README), and unlike a fit to the outline it does not chase
one ragged stretch of boundary. Coordinates are scaled by the pixel spacing before fitting, so
non-square pixels are measured correctly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch
from scipy import ndimage

from engine.errors import EmptyMask
from engine.io.study import UNKNOWN_SPACING, Spacing

__all__ = ["Ellipse", "Measurement", "clean_mask", "fit_ellipse", "ellipse_perimeter",
           "ellipse_mask", "bounding_box", "measure", "dice", "iou", "hd95", "agreement", "with_spacing"]


@dataclass(frozen=True)
class Ellipse:
    """Centre (x, y) and semi-axes in the units it was fitted in; angle of the major axis in degrees."""

    cx: float
    cy: float
    a: float  # semi-major
    b: float  # semi-minor
    angle_deg: float

    @property
    def perimeter(self) -> float:
        return ellipse_perimeter(self.a, self.b)

    @property
    def area(self) -> float:
        return math.pi * self.a * self.b


def ellipse_perimeter(a: float, b: float) -> float:
    """Ramanujan's second approximation: relative error below 4e-5 even at a 5:1 axis ratio."""
    h = ((a - b) / (a + b)) ** 2
    return math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """Largest connected component with its holes filled: one head, no speckle, no gaps."""
    mask = np.asarray(mask, bool)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros_like(mask)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return ndimage.binary_fill_holes(labels == largest)


def fit_ellipse(mask: np.ndarray, row_mm: float = 1.0, col_mm: float = 1.0) -> Ellipse:
    """The ellipse with the mask's area centroid and second moments, in mm when spacings are given."""
    ys, xs = np.nonzero(mask)
    if len(xs) < 5:
        raise EmptyMask("The model found no head in this image (empty mask), so nothing can be measured")
    pts = np.stack([xs * col_mm, ys * row_mm]).astype(np.float64)
    # Each pixel is a small square, not a point: its own variance (side^2 / 12) is taken off.
    cov = np.cov(pts, bias=True) - np.diag([col_mm ** 2, row_mm ** 2]) / 12
    values, vectors = np.linalg.eigh(cov)
    minor, major = np.sqrt(np.clip(values, 0, None)) * 2
    angle = (math.degrees(math.atan2(vectors[1, 1], vectors[0, 1])) + 90) % 180 - 90  # major axis, (-90, 90]
    return Ellipse(float(pts[0].mean() / col_mm), float(pts[1].mean() / row_mm), float(major), float(minor), angle)


def ellipse_mask(shape: tuple[int, int], e: Ellipse, row_mm: float = 1.0, col_mm: float = 1.0) -> np.ndarray:
    """The filled ellipse rasterised at pixel centres (the inverse of fit_ellipse)."""
    ys, xs = np.mgrid[:shape[0], :shape[1]]
    dx, dy = (xs - e.cx) * col_mm, (ys - e.cy) * row_mm
    t = math.radians(e.angle_deg)
    u, v = dx * math.cos(t) + dy * math.sin(t), -dx * math.sin(t) + dy * math.cos(t)
    return (u / e.a) ** 2 + (v / e.b) ** 2 <= 1


def ellipse_outline(e: Ellipse, row_mm: float = 1.0, col_mm: float = 1.0, n: int = 360) -> np.ndarray:
    """(n, 2) x, y pixel coordinates along the ellipse, for drawing."""
    s = np.linspace(0, 2 * math.pi, n, endpoint=False)
    t = math.radians(e.angle_deg)
    u, v = e.a * np.cos(s), e.b * np.sin(s)
    return np.stack([e.cx + (u * math.cos(t) - v * math.sin(t)) / col_mm,
                     e.cy + (u * math.sin(t) + v * math.cos(t)) / row_mm], axis=1)


def bounding_box(mask: np.ndarray) -> list[int] | None:
    """[x0, y0, x1, y1] in pixels, inclusive-exclusive; None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


@dataclass(frozen=True)
class Measurement:
    """What the page, the CLI and the store report for one mask."""

    ellipse: Ellipse  # in pixels (for drawing)
    circumference: float  # of the fitted ellipse, in `unit`
    area: float  # of the fitted ellipse, in `unit` squared
    unit: str  # mm or px
    spacing_source: str  # where the pixel size came from, or "unknown"
    bbox: list[int]

    def to_dict(self) -> dict:
        return {**asdict(self), "ellipse": asdict(self.ellipse)}


def measure(mask: np.ndarray, spacing: Spacing = UNKNOWN_SPACING, boundary_offset_px: float = 0.0) -> Measurement:
    """Head circumference (fitted ellipse's perimeter) and area, in mm when the spacing is known.

    `boundary_offset_px` moves the ellipse inwards by that many pixels before measuring: a mask drawn to
    the outer edge of an annotation line lies outside the line's centre, which is what was measured (the
    model card fits this on its training masks; 0 measures the mask as it is)."""
    row, col = (spacing.row_mm, spacing.col_mm) if spacing.known else (1.0, 1.0)
    in_mm = fit_ellipse(mask, row, col)
    in_px = fit_ellipse(mask)
    offset = boundary_offset_px * (row + col) / 2
    inner = Ellipse(in_mm.cx, in_mm.cy, max(in_mm.a - offset, 0.0), max(in_mm.b - offset, 0.0), in_mm.angle_deg)
    return Measurement(in_px, inner.perimeter, inner.area, "mm" if spacing.known else "px",
                       spacing.source if spacing.known else "unknown", bounding_box(mask))


def with_spacing(mm: float | None, source: str) -> Spacing:
    """A square pixel size from a number (manifest, --pixel-size); zero, negative or None is unknown."""
    return Spacing(float(mm), float(mm), source) if mm is not None and mm > 0 and math.isfinite(mm) else UNKNOWN_SPACING


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    inter, total = np.logical_and(pred, truth).sum(), pred.sum() + truth.sum()
    return float(2 * inter / total) if total else 1.0


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = np.logical_or(pred, truth).sum()
    return float(np.logical_and(pred, truth).sum() / union) if union else 1.0


def hd95(pred: np.ndarray, truth: np.ndarray, row_mm: float = 1.0, col_mm: float = 1.0) -> float:
    """95th-percentile symmetric Hausdorff distance between the two boundaries (MONAI's implementation),
    in mm when spacings are given; inf when exactly one mask is empty."""
    if not pred.any() or not truth.any():
        return 0.0 if pred.any() == truth.any() else math.inf
    from monai.metrics import compute_hausdorff_distance  # here: importing MONAI costs ~1.6 s per process

    as_batch = [torch.from_numpy(np.ascontiguousarray(m))[None, None] for m in (pred, truth)]
    return float(compute_hausdorff_distance(*as_batch, percentile=95, spacing=[row_mm, col_mm])[0, 0])


def agreement(pred: np.ndarray, truth: np.ndarray, spacing: Spacing = UNKNOWN_SPACING) -> dict[str, float]:
    """Dice, IoU and HD95 (mm when the spacing is known, else px) of a predicted mask against the truth."""
    row, col = (spacing.row_mm, spacing.col_mm) if spacing.known else (1.0, 1.0)
    return {"dice": dice(pred, truth), "iou": iou(pred, truth), "hd95": hd95(pred, truth, row, col)}
