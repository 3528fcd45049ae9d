"""The segmentation task: MONAI's Dice + cross-entropy loss, validation Dice (at
the images' own size, after the same post-processing as inference) for early stopping, and the card's
quality figures: Dice, IoU, HD95 in mm and head-circumference error in mm, each with a bootstrap CI."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from engine.data.catalog import MaskSet, mask_augmentation
from engine.inference.batch import autocast
from engine.inference.measure import (
    agreement,
    clean_mask,
    ellipse_perimeter,
    fit_ellipse,
    measure,
    with_spacing,
)
from engine.inference.segment import foreground_probability, full_size_mask
from engine.metrics import mean_ci
from engine.models.card import ModelCard
from engine.models.checkpoint import LoadedModel
from engine.models.preprocess import Preprocessing
from engine.models.registry import get_spec
from engine.tasks.base import FormDefaults, Scored, Task

__all__ = ["TASK", "seg_loss", "probabilities", "validate", "quality", "fit_boundary_offset", "describe",
           "POSTPROCESSING"]

OFFSETS_PX = np.round(np.arange(0.0, 2.001, 0.025), 3)  # the boundary offsets tried (pixels)


class _WithBoundary(nn.Module):
    """Dice + cross-entropy plus `weight` x MONAI's HausdorffDTLoss, which weighs each wrong pixel by its
    distance to the true and predicted boundaries: the error a circumference measured on the outline feels."""

    def __init__(self, weight: float):
        from monai.losses import HausdorffDTLoss

        super().__init__()
        self.region, self.boundary, self.weight = seg_loss(), HausdorffDTLoss(to_onehot_y=True, softmax=True), weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.region(logits, target) + self.weight * self.boundary(logits, target)


def seg_loss(boundary_weight: float = 0.0) -> nn.Module:
    """Dice + cross-entropy on (N, C, S, S) logits against (N, 1, S, S) class indices (plus the boundary
    loss when weighted). MONAI is imported here, for training: it costs ~1.6 s in every process that imports it."""
    from monai.losses import DiceCELoss

    return _WithBoundary(boundary_weight) if boundary_weight else DiceCELoss(to_onehot_y=True, softmax=True)


@torch.no_grad()
def probabilities(model: nn.Module, images: torch.Tensor, prep: Preprocessing, device: torch.device,
                  batch_size: int = 32) -> torch.Tensor:
    """(N, S, S) foreground probability of un-augmented images at the model's size."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = prep.normalize(images[start:start + batch_size]).to(device, memory_format=torch.channels_last)
        with autocast(device):
            out.append(foreground_probability(model(x)).cpu())
    return torch.cat(out)


def fit_boundary_offset(data: MaskSet) -> dict:
    """The inward offset (pixels) that makes the ellipses fitted to the ground-truth masks measure the
    dataset's own circumferences: how far the masks' edge lies outside the annotated line's centre."""
    axes = [fit_ellipse(clean_mask(m)) for m in data.full_masks]
    errors = {float(d): np.abs([ellipse_perimeter(e.a - d, e.b - d) * mm - hc for e, mm, hc in
                                zip(axes, data.pixel_mm, data.reference_hc_mm)]).mean() for d in OFFSETS_PX}
    best = min(errors, key=errors.get)
    return {"boundary_offset_px": best, "reference_side_px": int(np.median([max(m.shape) for m in data.full_masks])),
            "fitted_on": f"{len(axes)} training ground-truth masks",
            "hc_abs_error_of_truth_fit_mm": {"without_offset": round(float(errors[0.0]), 3),
                                             "with_offset": round(float(errors[best]), 3)},
            "rule": "the inward offset (0-2 px, 0.025 px steps) with the lowest mean absolute error between the "
                    "circumference of the ellipse fitted to each training mask and the dataset's circumference"}


def validate(model: nn.Module, val: MaskSet, prep: Preprocessing, device: torch.device) -> dict[str, float]:
    """Mean Dice at full size (the early-stopping score) and the loss at the model's size."""
    probs = probabilities(model, val.images, prep, device)
    dices = [agreement(full_size_mask(p, m.shape)[1], m)["dice"] for p, m in zip(probs, val.full_masks)]
    p = probs.clamp(1e-6, 1 - 1e-6)
    loss = torch.nn.functional.binary_cross_entropy(p, val.masks[:, 0].float())
    return {"score": float(np.mean(dices)), "val_dice": round(float(np.mean(dices)), 5),
            "val_bce": round(float(loss), 5)}


def _summary(values: np.ndarray, digits: int = 4) -> dict:
    finite = values[np.isfinite(values)]
    mean, low, high = mean_ci(finite)
    return {"mean": round(mean, digits), "ci95": [round(low, digits), round(high, digits)],
            "median": round(float(np.median(finite)), digits), "p90": round(float(np.percentile(finite, 90)), digits),
            "max": round(float(finite.max()), digits), "n": int(len(finite))}


def quality(model: nn.Module, data: MaskSet, prep: Preprocessing, device: torch.device,
            boundary_offset_px: float = 0.0) -> tuple[dict, list[dict]]:
    """(summary, one row per image) against the ground truth, as the card and the benchmark report them."""
    rows = []
    for prob, truth, name, mm, hc_ref in zip(probabilities(model, data.images, prep, device), data.full_masks,
                                             data.names, data.pixel_mm, data.reference_hc_mm):
        spacing = with_spacing(mm, "manifest")
        mask = full_size_mask(prob, truth.shape)[1]
        row = {"image": name, **agreement(mask, truth, spacing), "hc_reference_mm": float(hc_ref)}
        row["hc_mm"] = measure(mask, spacing, boundary_offset_px).circumference if mask.sum() >= 5 else float("nan")
        # The floor: the same measurement applied to the ground-truth mask itself.
        row["hc_of_truth_mm"] = measure(clean_mask(truth), spacing, boundary_offset_px).circumference
        rows.append(row)
    get = lambda key: np.array([r[key] for r in rows], dtype=np.float64)  # noqa: E731
    hc_error = np.abs(get("hc_mm") - get("hc_reference_mm"))
    summary = {
        "n": len(rows), "empty_masks": int(np.isnan(get("hc_mm")).sum()),
        "dice": _summary(get("dice")), "iou": _summary(get("iou")), "hd95_mm": _summary(get("hd95"), 3),
        "hc_abs_error_mm": _summary(hc_error, 3),
        "hc_error_mm": _summary(get("hc_mm") - get("hc_reference_mm"), 3),  # signed: a bias shows here
        "hc_abs_error_of_truth_fit_mm": _summary(np.abs(get("hc_of_truth_mm") - get("hc_reference_mm")), 3),
    }
    return summary, rows


POSTPROCESSING = ("foreground probability resized to the image (bilinear), > 0.5, largest connected component, "
                  "holes filled; head circumference = perimeter (Ramanujan) "
                  "of the moment-fitted ellipse moved inwards by the boundary offset, x pixel size")


def describe(model: nn.Module, arch: str, splits, prep: Preprocessing, device: torch.device) -> dict:
    """The segmentation part of a model card: the measurement rule fitted on the training masks, and quality
    on validation and the held-out test split at the images' own size, with bootstrap CIs."""
    rule = fit_boundary_offset(splits.sets["train"])
    metrics = {s: quality(model, splits.sets[s], prep, device, rule["boundary_offset_px"])[0] for s in ("val", "test")}
    return {"task": "segmentation", "positive_label": splits.label_names[1], "postprocessing": POSTPROCESSING,
            "measurement": rule, "metrics": metrics,
            "cam": {"method": "gradcam", "layer": get_spec(arch).cam_layer, "target": "predicted mask"}}


def _segmenter_scores(loaded: LoadedModel, data) -> Scored:
    offset = (loaded.card.measurement or {}).get("boundary_offset_px", 0.0)
    summary, rows = quality(loaded.model, data, loaded.preprocessing,
                                         next(loaded.model.parameters()).device, offset)
    return Scored(summary, np.array([]), np.array([[r["dice"], abs(r["hc_mm"] - r["hc_reference_mm"])] for r in rows]))


def _segmentation_difference(a: Scored, b: Scored) -> dict[str, list[float]]:
    d = b.per_image - a.per_image
    d = d[np.isfinite(d).all(axis=1)]  # an empty mask has no circumference
    return {"Dice": list(mean_ci(d[:, 0])), "HC absolute error (mm)": list(mean_ci(d[:, 1]))}


def _headline(metrics: dict) -> str:
    return f"Dice {metrics['dice']['mean']:.3f}, HC error {metrics['hc_abs_error_mm']['mean']:.2f} mm"


def _rules(card: ModelCard) -> str:
    rule = card.measurement
    return (f"Post-processing: {card.postprocessing}. Boundary offset {rule['boundary_offset_px']:.2f} px, "
            f"fitted on {rule['fitted_on']} ({rule['rule']}).")


TASK = Task(
    name="segmentation", title="Segmentation", defaults=FormDefaults(size=256, batch_size=16, epochs=20),
    loss=lambda train, cfg: seg_loss(cfg.boundary_loss),
    loss_text="MONAI DiceCELoss (Dice + cross-entropy, softmax, equal weights)",
    augmentation=mask_augmentation,
    augmentation_text="joint image/mask: horizontal flip, affine (rotate <= 15 deg, shift <= 5 %, scale 0.9-1.1), "
                      "brightness/contrast 0.2",
    validate=lambda model, val, prep, device, arch: validate(model, val, prep, device), score="val_dice",
    describe=describe, scores=_segmenter_scores, difference=_segmentation_difference, headline=_headline,
    headline_numbers=lambda m: {"dice": m["dice"]["mean"], "hc_abs_error_mm": m["hc_abs_error_mm"]["mean"]},
    rules=_rules, refit_on_rewrite=True, boundary_loss=True,
)
