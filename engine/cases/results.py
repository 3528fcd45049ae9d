"""A case's result as standard DICOM objects: a Comprehensive SR of the finding and measurements, a
Secondary Capture of the Grad-CAM overlay and of the segmentation outline (research-use text burned in),
and the DICOM SEG. Built from what the store logged (the latest analysed prediction and segmentation, the
latest review), over a source dataset the caller chooses: the stored de-identified image for a download, or
the original study's identity for a push (engine.pacs.push). Nothing built here is stored.

The Grad-CAM is recomputed from the prediction's own weights (the same SHA-256, else the export is refused):
it is deterministic, and a heat map is not worth a BLOB per prediction.
"""

from __future__ import annotations

import functools
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from engine.cases.images import get_case, gray_image
from engine.config import Config
from engine.context import Context
from engine.draw import draw_segmentation, overlay, with_banner
from engine.errors import ExportError, NotAnalysed, UnknownCase, UnknownModel
from engine.inference.measure import Ellipse
from engine.io import derived
from engine.io.derived import BURNED_IN, SC_STORAGE, SEG_STORAGE, SR_STORAGE
from engine.models.catalog import find_model
from engine.store import Store

__all__ = ["CaseResults", "ResultObject", "case_results", "stored_source", "build_objects", "result_objects",
           "algorithm_of", "evidence_view", "area_unit", "result_zip", "OBJECT_KINDS"]

# kind -> (title, SOP class): what each object is, for pages, the CLI and the audit log.
OBJECT_KINDS = {"sr": ("Structured report (SR)", SR_STORAGE),
                "sc-cam": ("Secondary capture of the Grad-CAM overlay", SC_STORAGE),
                "seg": ("Segmentation (SEG)", SEG_STORAGE),
                "sc-seg": ("Secondary capture of the segmentation", SC_STORAGE)}
# Type 2 Patient/Study attributes the derived objects copy; de-identification may have left them out.
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "AccessionNumber", "StudyID")


@dataclass(frozen=True)
class CaseResults:
    """What the store holds about one case's result: rows as logged (None where there is none)."""

    case_id: int
    image: dict  # the image the results are about
    prediction: dict | None  # the latest analysed prediction
    segmentation: dict | None  # the latest analysed segmentation
    review: dict | None  # the latest review

    @property
    def analysed(self) -> bool:
        return bool(self.prediction or self.segmentation)


@dataclass(frozen=True)
class ResultObject:
    kind: str  # a key of OBJECT_KINDS
    dataset: Dataset

    @property
    def data(self) -> bytes:
        buffer = io.BytesIO()
        self.dataset.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    @property
    def filename(self) -> str:
        return f"{self.kind}.dcm"


def case_results(store: Store, case_id: int) -> CaseResults:
    case = get_case(store, case_id)
    with store.read() as db:
        def latest(sql: str) -> dict | None:
            rows = list(db.query(sql + " ORDER BY id DESC LIMIT 1", [case_id]))
            return rows[0] if rows else None

        prediction = latest("SELECT * FROM predictions WHERE case_id = ? AND status = 'analysed'")
        segmentation = latest("SELECT * FROM segmentations WHERE case_id = ? AND status = 'analysed'")
        review = latest("SELECT * FROM reviews WHERE case_id = ?")
    image_id = (prediction or segmentation or {}).get("image_id") or case["images"][0]["id"]
    image = next(i for i in case["images"] if i["id"] == image_id)
    return CaseResults(case_id, image, prediction, segmentation, review)


def stored_source(config: Config, image: dict) -> Dataset:
    """The stored, de-identified DICOM of an image (the source a download's objects derive from)."""
    if image["source_format"] != "dicom":
        raise ExportError("a DICOM export needs a DICOM source image; this case was uploaded as "
                          f"{image['source_format'].upper()} (download the PDF report or the PNG mask instead)")
    path = config.home / image["path"]
    if not path.is_file():
        raise UnknownCase(f"the stored file of image {image['id']} is missing")
    source = pydicom.dcmread(path)
    for keyword in _TYPE2_COPIED:  # type 2: empty is valid and keeps the objects free of identifiers
        if keyword not in source:
            setattr(source, keyword, "")
    if int(source.get("NumberOfFrames", 1) or 1) != 1:
        raise ExportError("DICOM results are built for single-frame images; download the PDF report instead")
    return source


def algorithm_of(row: dict) -> derived.Algorithm:
    return derived.Algorithm(row["model_name"], row["model_version"], row["weights_sha256"])


@functools.lru_cache(maxsize=4)
def _classifier(path: Path, sha256: str):
    import torch

    from engine.inference.classify import Classifier
    from engine.models.checkpoint import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return Classifier(load_model(path, device), device)


def _verified_classifier(config: Config, prediction: dict):
    """The classifier with the very weights that produced `prediction` (ExportError when gone)."""
    try:
        installed = find_model(config, prediction["model_name"])
    except UnknownModel:
        installed = None
    classifier = _classifier(installed.path, prediction["weights_sha256"]) if installed else None
    if classifier is None or classifier.loaded.sha256 != prediction["weights_sha256"]:
        raise ExportError(f"the weights of {prediction['model_name']} v{prediction['model_version']} that produced "
                          "this result are no longer installed; run the case again to export its result")
    return classifier


def _finding(prediction: dict, positive: str) -> derived.Finding:
    return derived.Finding(prediction["label"], prediction["probability"], positive, prediction["threshold"],
                           prediction["uncertainty"], prediction["uncertainty_method"], prediction["ood_score"],
                           prediction["ood_threshold"], prediction["cam_method"] or "gradcam")


def _review(results: CaseResults) -> derived.Review | None:
    r = results.review
    return derived.Review(r["verdict"], r["reviewer"], r["label"] or "") if r else None


def evidence_view(config: Config, results: CaseResults) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(the image the model saw, its evidence drawn over it or None, the positive label): the Grad-CAM
    overlay of the prediction, else the segmentation outline with its fitted ellipse."""
    gray = gray_image(config, results.image)
    if p := results.prediction:
        classifier = _verified_classifier(config, p)
        return gray, overlay(gray, classifier.classify(gray).cam), classifier.loaded.card.positive_label
    if s := results.segmentation:
        return gray, _outline(gray, s), ""
    return gray, None, ""


def _outline(gray: np.ndarray, segmentation: dict) -> np.ndarray:
    """The segmentation's mask outlined over the image, with the ellipse its measurement was fitted on."""
    ellipse = Ellipse(**json.loads(segmentation["ellipse"])) if segmentation["ellipse"] else None
    return draw_segmentation(gray, _mask(segmentation), ellipse=ellipse)


def area_unit(unit: str) -> str:
    """The unit of an area measured in `unit` (mm or px)."""
    return f"{unit}\u00b2"


def _cam_capture(results: CaseResults, source: Dataset, rgb: np.ndarray, positive: str) -> Dataset:
    p = results.prediction
    rgb = with_banner(rgb, BURNED_IN, [
        f"RadLens {p['model_name']} v{p['model_version']}: {p['label']}. Calibrated probability of {positive} "
        f"{p['probability']:.1%} (operating threshold {p['threshold']:.1%})",
        f"Grad-CAM ({p['cam_method'] or 'gradcam'}): where the model looked, not a lesion outline"])
    return derived.secondary_capture(source, rgb, "RadLens Grad-CAM (research use only)", algorithm_of(p),
                                     "Grad-CAM heat map of the model's evidence over the source image")


def _mask(segmentation: dict) -> np.ndarray:
    mask = cv2.imdecode(np.frombuffer(segmentation["mask_png"], np.uint8), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ExportError("the stored mask cannot be decoded")
    return mask > 127


def _seg_capture(results: CaseResults, source: Dataset, rgb: np.ndarray) -> Dataset:
    s = results.segmentation
    rgb = with_banner(rgb, BURNED_IN, [
        f"RadLens {s['model_name']} v{s['model_version']}: head circumference {s['circumference']:.1f} {s['unit']}, "
        f"area {s['area']:.0f} {area_unit(s['unit'])}",
        f"Model mask (green), fitted ellipse (white); pixel size: {s['spacing_source']}"])
    return derived.secondary_capture(source, rgb, "RadLens segmentation (research use only)", algorithm_of(s),
                                     "Segmentation outline and fitted ellipse over the source image")


def build_objects(config: Config, results: CaseResults, source: Dataset) -> list[ResultObject]:
    """SC(s), SEG and SR of the case's result over `source` (the SR references the others)."""
    if not results.analysed:
        raise NotAnalysed(f"case {results.case_id} has no analysed result to export: run a model on it first")
    gray, evidence, positive = evidence_view(config, results)
    objects: list[ResultObject] = []
    cam_sc = seg = finding = None
    if p := results.prediction:
        finding = _finding(p, positive)
        cam_sc = _cam_capture(results, source, evidence, positive)
        objects.append(ResultObject("sc-cam", cam_sc))
    measurements = None
    if results.segmentation:
        s = results.segmentation
        mask = _mask(s)
        if mask.shape != (source.Rows, source.Columns):
            raise ExportError("the mask and the source image differ in size; download the PDF report instead")
        seg = derived.segmentation(source, mask, algorithm_of(s))
        outline = _outline(gray, s) if p else evidence  # evidence_view drew it unless there is a prediction
        objects += [ResultObject("seg", seg), ResultObject("sc-seg", _seg_capture(results, source, outline))]
        measurements = derived.Measurements(s["circumference"], s["area"], s["unit"], s["spacing_source"])
    sr = derived.structured_report(source, algorithm_of(p or results.segmentation), finding, measurements,
                                   _review(results) if p else None, cam_sc, seg)
    return [ResultObject("sr", sr), *objects]


def result_zip(ctx: Context, case_id: int) -> bytes:
    """result_objects as one zip (sr.dcm, sc-cam.dcm, seg.dcm, sc-seg.dcm) for a download."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for obj in result_objects(ctx, case_id):
            archive.writestr(f"case{case_id}-{obj.filename}", obj.data)
    return buffer.getvalue()


def result_objects(ctx: Context, case_id: int) -> list[ResultObject]:
    """A case's result objects over its de-identified image, for download (needs `case.export`; audited)."""
    ctx.require("case.export")
    results = case_results(ctx.store, case_id)
    objects = build_objects(ctx.config, results, stored_source(ctx.config, results.image))
    ctx.log("export.dicom", "case", case_id, {"objects": [o.kind for o in objects]})
    return objects
