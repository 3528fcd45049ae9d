"""Segmentation on stored cases: segment and log every run, find the pixel size and the ground truth a
case has, and export a mask as PNG or as a DICOM Segmentation object.

Pixel size, first found wins: a number the user gives; the DICOM's own (PixelSpacing, functional groups,
ultrasound regions, read at ingest); the manifest of a known dataset holding the same pixels; else none,
and measurements are in pixels. A case is recognised as a dataset image by the hash of its decoded
pixels, so an HC18 PNG uploaded by hand finds its ground truth and pixel size as well as one opened from
the dataset (the stored PNG is re-encoded, so the file's own hash would not match).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import cv2
import numpy as np

from engine.cases.images import load_image
from engine.cases.results import stored_source
from engine.config import Config
from engine.context import Context
from engine.data.hc18 import MANIFEST_SPACING, DatasetMatch, dataset_match
from engine.errors import ExportError, NotAnalysed
from engine.inference.measure import agreement, with_spacing
from engine.inference.segment import Segmentation, Segmenter
from engine.io.derived import Algorithm, segmentation
from engine.io.study import Spacing
from engine.models.catalog import active_model, find_model
from engine.models.checkpoint import load_model
from engine.models.preprocess import model_view
from engine.models.scope import ANALYSED, Scope, Verdict, shown_as_logged
from engine.store import Store, utc_now

__all__ = ["CaseSegmentation", "raw_segmentation", "load_segmenter", "case_spacing", "segment_case_image",
           "export_seg", "mask_png", "seg_dicom", "segmentation_history"]

def case_spacing(image: dict, match: DatasetMatch | None, override_mm: float | None = None) -> Spacing:
    if override_mm:
        return with_spacing(override_mm, "entered by the user")
    if image.get("spacing_row_mm") and image.get("spacing_col_mm"):
        return Spacing(image["spacing_row_mm"], image["spacing_col_mm"], image["spacing_source"])
    if match:
        return with_spacing(match.pixel_mm, MANIFEST_SPACING)
    return with_spacing(None, "unknown")


@dataclass
class CaseSegmentation:
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

    @property
    def result(self) -> Segmentation | None:
        """The result; None when the model abstained (the image is outside its scope)."""
        return self.raw if self.verdict.analysed else None


def raw_segmentation(ctx: Context, done: CaseSegmentation) -> Segmentation:
    """The mask and measurement on an image outside the model's scope, for research; asked for on purpose
    and audited."""
    ctx.require("case.raw_output")
    if not done.verdict.analysed:
        ctx.log("case.raw_output", "case", done.case_id, {"segmentation_id": done.segmentation_id})
    return done.raw


def load_segmenter(ctx: Context, name: str | None = None) -> Segmenter:
    """The named installed segmentation model (default: the active one) on CUDA when present, else CPU."""
    import torch

    installed = find_model(ctx.config, name) if name else active_model(ctx, "segmentation")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return Segmenter(load_model(installed.path, device), device)


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
    ctx.require("case.analyse")
    actor = ctx.actor
    loaded, m = segmenter.loaded, result.measurement
    row = {
        "status": verdict.status, "status_reason": verdict.reason,
        "case_id": image["case_id"], "image_id": image["id"], "image_sha256": image["sha256"],
        "model_name": loaded.name, "model_version": loaded.version, "weights_sha256": loaded.sha256,
        "mask_png": mask_png(result.mask), "mask_pixels": int(result.mask.sum()),
        "circumference": m.circumference if m else None, "area": m.area if m else None,
        "unit": m.unit if m else "", "ellipse": json.dumps(m.to_dict()["ellipse"]) if m else "",
        "bbox": json.dumps(m.bbox) if m else "", "spacing_mm": spacing.row_mm, "spacing_source": spacing.source,
        "dice": scores["dice"] if scores else None, "iou": scores["iou"] if scores else None,
        "hd95": scores["hd95"] if scores else None,
        "truth_source": f"{match.dataset}/{match.image}" if match and scores else "",
        "preprocessing": loaded.preprocessing.summary(), "device": str(segmenter.device),
        "latency_ms": result.latency_ms, "actor": actor, "created_at": utc_now(),
    }
    with ctx.store.write() as db:
        segmentation_id = db["segmentations"].insert(row).last_pk
        ctx.audit(db, "segment", "case", image["case_id"],
                    {"segmentation_id": segmentation_id, "model": loaded.name, "version": loaded.version,
                     **({"circumference": row["circumference"], "unit": row["unit"]} if verdict.analysed else
                        {"status": "not analysed", "reason": verdict.reason})})
    return segmentation_id


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
    segmentation(source, mask, Algorithm(model_name, model_version, "")).save_as(buffer)
    return buffer.getvalue()
