"""The segmentation task: MONAI's Dice + cross-entropy loss, validation Dice (at
the images' own size, after the same post-processing as inference) for early stopping, and the card's
quality figures: Dice, IoU, HD95 in mm and head-circumference error in mm, each with a bootstrap CI."""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn

from engine.config import Config
from engine.context import Context
from engine.data.hc18 import MANIFEST_SPACING, DatasetMatch, dataset_match
from engine.data.loaders import MaskSet, mask_augmentation
from engine.draw import draw_segmentation, fast_png, with_banner
from engine.errors import ExportError, NotAnalysed
from engine.inference.measure import (
    Ellipse,
    agreement,
    clean_mask,
    ellipse_perimeter,
    fit_ellipse,
    measure,
    with_spacing,
)
from engine.inference.predict import autocast
from engine.inference.segment import Segmentation, Segmenter, foreground_probability, full_size_mask
from engine.io.study import Spacing
from engine.metrics import mean_ci
from engine.models.card import ModelCard
from engine.models.checkpoint import LoadedModel
from engine.models.preprocess import Preprocessing, model_view
from engine.models.registry import get_spec
from engine.models.scope import ANALYSED, Scope, Verdict, shown_as_logged
from engine.store import Store
from engine.stored import load_image, single_frame, stored_source
from engine.tasks.analysis import Analysis, Contribution, Line, Outcome, algorithm_of, load, record
from engine.tasks.base import FormDefaults, Scored, Task
from engine.writers import derived
from engine.writers.derived import BURNED_IN

__all__ = ["TASK", "seg_loss", "probabilities", "validate", "quality", "fit_boundary_offset", "describe",
           "POSTPROCESSING", "CaseSegmentation", "raw_segmentation", "load_segmenter", "case_spacing",
           "segment_case_image", "export_seg", "mask_png", "seg_dicom", "segmentation_history", "stored_mask",
           "area_unit", "card_metrics"]

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


# ---- Analysis of stored cases (pixel size, first found wins: a number the user gives; the DICOM's own;
# the manifest of a known dataset holding the same pixels, recognised by the hash of its decoded pixels; else
# none, and measurements are in pixels) -----------------------------------------------------------------

def case_spacing(image: dict, match: DatasetMatch | None, override_mm: float | None = None) -> Spacing:
    if override_mm:
        return with_spacing(override_mm, "entered by the user")
    if image.get("spacing_row_mm") and image.get("spacing_col_mm"):
        return Spacing(image["spacing_row_mm"], image["spacing_col_mm"], image["spacing_source"])
    if match:
        return with_spacing(match.pixel_mm, MANIFEST_SPACING)
    return with_spacing(None, "unknown")


@dataclass
class CaseSegmentation(Outcome):
    id_field = "segmentation_id"

    case_id: int
    image_id: int
    segmentation_id: int
    raw: Segmentation  # the network's output, whether or not it is a result (see raw_segmentation)
    gray: np.ndarray  # the image the model saw, for overlays
    spacing: Spacing
    truth: np.ndarray | None  # ground-truth mask when the case is a known dataset image
    scores: dict[str, float] | None  # Dice, IoU, HD95 against the truth
    match: DatasetMatch | None
    verdict: Verdict = Verdict(ANALYSED)


def raw_segmentation(ctx: Context, done: CaseSegmentation) -> Segmentation:
    """The mask and measurement on an image outside the model's scope, for research; asked for on purpose
    and audited."""
    ctx.require("case.raw_output")
    if not done.verdict.analysed:
        ctx.log("case.raw_output", "case", done.case_id, {"segmentation_id": done.segmentation_id})
    return done.raw


def load_segmenter(ctx: Context | Config, name: str | None = None) -> Segmenter:
    """The named installed segmentation model (default: the active one), loaded once on the chosen device."""
    return load(ctx, TASK, name)


def segment_case_image(ctx: Context, segmenter: Segmenter, image: dict,
                       pixel_mm: float | None = None, match: DatasetMatch | None = None) -> CaseSegmentation:
    """Segment a stored image, measure it, compare it with its ground truth when it has one, log it."""
    study = load_image(ctx.config, image)
    gray = model_view(study)
    match = match or dataset_match(ctx.config, study.frames[0])
    spacing = case_spacing(image, match, pixel_mm)
    result = segmenter.segment(gray, spacing)
    verdict = Scope.from_card(segmenter.loaded.card).judge(image.get("modality", ""), image.get("body_part", ""))
    truth = match.truth() if match else None
    scores = agreement(result.mask, truth, spacing) if truth is not None and truth.shape == gray.shape else None
    segmentation_id = _record(ctx, segmenter, image, result, spacing, scores, match, verdict)
    return CaseSegmentation(image["case_id"], image["id"], segmentation_id, result, gray, spacing,
                            truth if scores else None, scores, match, verdict)


def _record(ctx: Context, segmenter: Segmenter, image: dict, result: Segmentation, spacing: Spacing,
            scores: dict | None, match: DatasetMatch | None, verdict: Verdict) -> int:
    m = result.measurement
    values = {
        "status": verdict.status, "status_reason": verdict.reason,
        "mask_png": mask_png(result.mask), "mask_pixels": int(result.mask.sum()),
        "circumference": m.circumference if m else None, "area": m.area if m else None,
        "unit": m.unit if m else "", "ellipse": json.dumps(m.to_dict()["ellipse"]) if m else "",
        "bbox": json.dumps(m.bbox) if m else "", "spacing_mm": spacing.row_mm, "spacing_source": spacing.source,
        "dice": scores["dice"] if scores else None, "iou": scores["iou"] if scores else None,
        "hd95": scores["hd95"] if scores else None,
        "truth_source": f"{match.dataset}/{match.image}" if match and scores else "",
        "device": str(segmenter.device), "latency_ms": result.latency_ms,
    }
    return record(ctx, TASK, image, segmenter.loaded, values,
                  {"circumference": values["circumference"], "unit": values["unit"]} if verdict.analysed else
                  {"status": "not analysed", "reason": verdict.reason})


def export_seg(ctx: Context, image: dict, done: CaseSegmentation, segmenter: Segmenter) -> bytes:
    """A case's segmentation as a DICOM SEG object; the export is audited ('export.seg')."""
    ctx.require("case.export")
    if done.result is None:
        raise NotAnalysed(f"nothing to export: {done.verdict.text}")
    data = seg_dicom(ctx.config, image, done.result.mask, segmenter.loaded.name, segmenter.loaded.version)
    ctx.log("export.seg", "case", done.case_id, {"segmentation_id": done.segmentation_id})
    return data


def segmentation_history(store: Store, case_id: int) -> list[dict]:
    with store.read() as db:
        rows = list(db.query(
            "SELECT id, created_at, model_name, model_version, substr(weights_sha256, 1, 12) AS weights, "
            "status, status_reason, round(circumference, 1) AS circumference, round(area, 0) AS area, unit, "
            "spacing_source, "
            "round(dice, 4) AS dice, round(hd95, 2) AS hd95, round(latency_ms, 0) AS latency_ms, actor "
            "FROM segmentations WHERE case_id = ? ORDER BY id DESC", [case_id]))
    return [shown_as_logged(r, "status", ("circumference", "area")) for r in rows]


def mask_png(mask: np.ndarray) -> bytes:
    """A mask as an 8-bit PNG, 255 inside (opens in any viewer; PNG keeps it lossless)."""
    ok, data = cv2.imencode(".png", np.where(mask, 255, 0).astype(np.uint8))
    if not ok:
        raise ExportError("the mask could not be encoded as PNG")
    return data.tobytes()


def seg_dicom(config: Config, image: dict, mask: np.ndarray, model_name: str, model_version: str) -> bytes:
    """A DICOM Segmentation (binary, one segment) referencing the stored, de-identified source image."""
    source = stored_source(config, image)
    if mask.shape != (source.Rows, source.Columns):
        raise ExportError("DICOM SEG export handles single-frame images whose size matches the mask; "
                          "export the PNG mask instead")
    buffer = io.BytesIO()
    derived.segmentation(single_frame(source), mask, derived.Algorithm(model_name, model_version, "")).save_as(buffer)
    return buffer.getvalue()


def area_unit(unit: str) -> str:
    """The unit of an area measured in `unit` (mm or px)."""
    return f"{unit}\u00b2"


def card_metrics(test: dict) -> list[str]:
    def mean_ci(key: str, unit: str = "") -> str:
        m = test[key]
        return f"{m['mean']:.3f}{unit} (95 % CI {m['ci95'][0]:.3f}-{m['ci95'][1]:.3f})"

    return [f"Dice {mean_ci('dice')}", f"Head circumference absolute error {mean_ci('hc_abs_error_mm', ' mm')}",
            f"n = {test['n']}"]


def _report(s: dict, card: ModelCard | None) -> list:
    lines = [Line(f"Head circumference {s['circumference']:.1f} {s['unit']}, area {s['area']:.0f} "
                  f"{area_unit(s['unit'])}", 11, bold=True),
             Line(f"Measured on the ellipse fitted to the model's mask; pixel size: {s['spacing_source']}.", 8.5,
                  muted=True)]
    if s.get("dice") is not None:
        lines.append(Line(f"Against the dataset's ground truth: Dice {s['dice']:.3f}, HD95 {s['hd95']:.2f} mm"))
    return lines


def stored_mask(row: dict) -> np.ndarray:
    mask = cv2.imdecode(np.frombuffer(row["mask_png"], np.uint8), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ExportError("the stored mask cannot be decoded")
    return mask > 127


def _evidence(config: Config, s: dict, gray: np.ndarray) -> tuple[np.ndarray, str]:
    """The segmentation's mask outlined over the image, with the ellipse its measurement was fitted on."""
    ellipse = Ellipse(**json.loads(s["ellipse"])) if s["ellipse"] else None
    return draw_segmentation(gray, stored_mask(s), ellipse=ellipse), "Model mask (green) and fitted ellipse (white)"


def _objects(config: Config, s: dict, source, gray: np.ndarray) -> Contribution:
    """The DICOM SEG of the mask, a Secondary Capture of its outline, and the SR's measurements."""
    single_frame(source)
    mask = stored_mask(s)
    if mask.shape != (source.Rows, source.Columns):
        raise ExportError("the mask and the source image differ in size; download the PDF report instead")
    seg = derived.segmentation(source, mask, algorithm_of(s))
    rgb = with_banner(_evidence(config, s, gray)[0], BURNED_IN, [
        f"RadLens {s['model_name']} v{s['model_version']}: head circumference {s['circumference']:.1f} {s['unit']}, "
        f"area {s['area']:.0f} {area_unit(s['unit'])}",
        f"Model mask (green), fitted ellipse (white); pixel size: {s['spacing_source']}"])
    capture = derived.secondary_capture(source, rgb, "RadLens segmentation (research use only)", algorithm_of(s),
                                        "Segmentation outline and fitted ellipse over the source image")
    return Contribution([("seg", seg), ("sc-seg", capture)],
                        measurements=derived.Measurements(s["circumference"], s["area"], s["unit"],
                                                          s["spacing_source"]))


def _batch_rows(model: Segmenter, scope: Scope, batch: list, options, timings: dict[str, float]) -> list[dict]:
    out = []
    for d in batch:
        spacing = d.spacing if d.spacing.known else with_spacing(options.pixel_mm, "entered by the user")
        start = time.perf_counter()
        result = model.segment(d.gray, spacing)
        timings["forward"] = timings.get("forward", 0.0) + time.perf_counter() - start
        verdict, m = scope.judge(d.modality, d.body_part), result.measurement
        start = time.perf_counter()
        mask = fast_png(np.where(result.mask, 255, 0).astype(np.uint8)) if verdict.analysed else None
        timings["encode"] = timings.get("encode", 0.0) + time.perf_counter() - start
        out.append({
            "status": verdict.status, "status_reason": verdict.reason, "mask_pixels": int(result.mask.sum()),
            "circumference": m.circumference if m else None, "area": m.area if m else None,
            "unit": m.unit if m else "", "spacing_mm": spacing.row_mm, "spacing_source": spacing.source,
            "overlay_png": mask, "latency_ms": result.latency_ms})
    return out


def _batch_record(row: dict, card: ModelCard) -> dict:
    return {"mask_png": row["overlay_png"], "mask_pixels": row["mask_pixels"], "circumference": row["circumference"],
            "area": row["area"], "unit": row["unit"] or "", "spacing_mm": row["spacing_mm"],
            "spacing_source": row["spacing_source"]}


ANALYSIS = Analysis(
    kind="mask", table="segmentations", audit_action="segment", page="pages/segmentation.py", runner=Segmenter,
    run=lambda ctx, model, image, pixel_mm=None: segment_case_image(ctx, model, image, pixel_mm),
    report=_report, evidence=_evidence, card_metrics=card_metrics, objects=_objects,
    batch_rows=_batch_rows, batch_record=_batch_record,
    batch_columns={"mask_pixels": int, "circumference": float, "area": float, "unit": str, "spacing_mm": float,
                   "spacing_source": str},
    # one call on a blank image takes the one-off CPU kernel set-up (hundreds of ms) off the first case
    warm_up=lambda segmenter: segmenter.segment(np.zeros((64, 64), np.uint8)),
)


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
    analysis=ANALYSIS,
)
