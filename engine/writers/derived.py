"""DICOM objects derived from a source image: a Secondary Capture of an overlay, a Segmentation, and a
Comprehensive SR of a model's result. Pure: datasets and values in, datasets out (highdicom builds them,
copying the Patient and Study modules of the source, so they join the source's study).

The SR tree (root "Diagnostic imaging report", LOINC 18748-4):
  HAS OBS CONTEXT  the device observer (the model: name, version, RadLens)
  CONTAINS         Algorithm Name / Version / Parameters (weights SHA-256)
  CONTAINS         Finding (CODE: pneumonia / normal ...), INFERRED FROM the source image
                   Probability (NUM; HAS CONCEPT MOD: the positive label it is the probability of), operating
                   threshold, uncertainty, OOD score and threshold (NUM), OOD flag (CODE), explanation method
                   (TEXT), the secondary capture (IMAGE, "Illustration of ROI")
  CONTAINS         Circumference and area (NUM, mm / mm2, or pixels), each INFERRED FROM segment 1 of the SEG;
                   the pixel-spacing source (TEXT)
  CONTAINS         Clinician review: person observer (name) and verdict, when reviewed
  CONTAINS         Comment: the research-use disclaimer
Concepts without a standard code use the private scheme 99RADLENS (declared in the object).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

__all__ = ["DISCLAIMER", "BURNED_IN", "Algorithm", "Finding", "Measurements", "Review", "secondary_capture",
           "segmentation", "structured_report", "SR_CODES", "SEG_STORAGE", "SC_STORAGE", "SR_STORAGE"]

DISCLAIMER = "For research use only. Not for use in diagnostic procedures."
BURNED_IN = "RESEARCH USE ONLY \u2014 NOT FOR DIAGNOSIS"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"
_PRIVATE = "99RADLENS"
# highdicom logs, at INFO, the UIDs of the datasets it copies the patient and study from: over a re-identified
# source (a push) those are the original identifiers, and the CLI writes INFO to RADLENS_HOME/logs.
logging.getLogger("highdicom").setLevel(logging.WARNING)


def _private(value: str, meaning: str) -> Code:
    return Code(value, _PRIVATE, meaning)


SR_CODES = {
    "title": Code("18748-4", "LN", "Diagnostic imaging report"),
    "finding": codes.DCM.Finding,
    "probability": codes.DCM.Probability,
    "threshold": _private("RL001", "Operating threshold"),
    "uncertainty": _private("RL002", "Predictive uncertainty"),
    "ood_score": _private("RL003", "Out-of-distribution score"),
    "ood_threshold": _private("RL004", "Out-of-distribution threshold"),
    "ood_flag": _private("RL005", "Out of distribution"),
    "explanation": _private("RL006", "Explanation method"),
    "review": _private("RL007", "Clinician review"),
    "verdict": _private("RL008", "Review verdict"),
    "corrected_label": _private("RL009", "Corrected label"),
    "spacing_source": _private("RL010", "Pixel spacing source"),
    "circumference": codes.SCT.Circumference,
    "area": codes.SCT.Area,
    "algorithm_name": codes.DCM.AlgorithmName,
    "algorithm_version": codes.DCM.AlgorithmVersion,
    "algorithm_parameters": codes.DCM.AlgorithmParameters,
    "comment": codes.DCM.Comment,
}
# Labels with a standard concept; any other label is coded privately under its own name.
_LABEL_CODES = {"pneumonia": Code("233604007", "SCT", "Pneumonia"), "normal": codes.SCT.Normal}
_UNITS = {"mm": Code("mm", "UCUM", "millimeter"), "mm2": Code("mm2", "UCUM", "square millimeter"),
          "px": Code("{pixels}", "UCUM", "pixels"), "px2": Code("{pixels}", "UCUM", "pixels"),
          "1": Code("1", "UCUM", "no units"), "bit": Code("bit", "UCUM", "bit")}
_REL = hd.sr.RelationshipTypeValues


@dataclass(frozen=True)
class Algorithm:
    name: str
    version: str
    weights_sha256: str


@dataclass(frozen=True)
class Finding:
    label: str
    probability: float  # calibrated probability of the positive label
    positive_label: str
    threshold: float
    uncertainty: float | None  # None: the model gives none (a sequence model)
    uncertainty_method: str  # "entropy" (bits) or "tta-<n>" (spread of the probability)
    ood_score: float
    ood_threshold: float
    explanation: str  # the CAM method


@dataclass(frozen=True)
class Measurements:
    circumference: float
    area: float
    unit: str  # "mm" or "px"
    spacing_source: str


@dataclass(frozen=True)
class Review:
    verdict: str
    reviewer: str
    label: str = ""


def _equipment(ds: Dataset, series_description: str, model: Algorithm) -> Dataset:
    ds.SeriesDescription = series_description[:64]
    ds.ManufacturerModelName = model.name[:64]
    ds.SoftwareVersions = model.version[:64]
    return ds


def secondary_capture(source: Dataset, rgb: np.ndarray, series_description: str, model: Algorithm,
                      derivation: str) -> Dataset:
    """An RGB Secondary Capture in the source's study; its pixels carry burned-in text (flagged as such)."""
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=np.ascontiguousarray(rgb, np.uint8), photometric_interpretation="RGB",
        bits_allocated=8, coordinate_system="PATIENT", series_instance_uid=hd.UID(), series_number=901,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="RadLens",
        patient_orientation=_orientation(source) or ("L", "F"))
    if _orientation(source) is None:
        sc.PatientOrientation = None  # type 2: empty when unknown (highdicom insists on a value; none is known)
    sc.Laterality = source.get("Laterality") or None  # type 2C (General Series)
    sc.BurnedInAnnotation = "YES"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = derivation[:1024]
    reference = Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    sc.ImageComments = DISCLAIMER
    return _equipment(sc, series_description, model)


def _orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's row/column orientation when it is a plain biped pair (L, F ...), else None."""
    value = source.get("PatientOrientation")
    pair = (str(value[0]), str(value[1])) if value and len(value) == 2 else None
    return pair if pair and all(v in ("A", "P", "L", "R", "H", "F") for v in pair) else None


def segmentation(source: Dataset, mask: np.ndarray, model: Algorithm, label: str = "Fetal head") -> Dataset:
    """A binary DICOM SEG with one segment over the single-frame source image."""
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label,
        segmented_property_category=codes.SCT.AnatomicalStructure, segmented_property_type=codes.SCT.Head,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=model.name, version=model.version, family=codes.DCM.ArtificialIntelligence))
    seg = hd.seg.Segmentation(
        source_images=[source], pixel_array=mask[None].astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[description],
        series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="RadLens", manufacturer_model_name=model.name, software_versions=model.version,
        device_serial_number="none", content_description="Research use only", omit_empty_frames=False)
    if "PatientOrientation" not in seg and "FrameOfReferenceUID" not in seg:
        seg.PatientOrientation = None  # type 2C: required (empty is valid) when no patient geometry is known
    seg.SeriesDescription = f"RadLens {model.name} segmentation (research use only)"[:64]
    return seg


def _image(name: Code, ds: Dataset, relationship, segment: int | None = None) -> hd.sr.ImageContentItem:
    return hd.sr.ImageContentItem(name=name, referenced_sop_class_uid=ds.SOPClassUID,
                                  referenced_sop_instance_uid=ds.SOPInstanceUID,
                                  referenced_segment_numbers=segment, relationship_type=relationship)


def _num(key: str, value: float, unit: str) -> hd.sr.NumContentItem:
    return hd.sr.NumContentItem(name=SR_CODES[key], value=float(value), unit=_UNITS[unit],
                                relationship_type=_REL.CONTAINS)


def _text(key: str, value: str, relationship=_REL.CONTAINS) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=SR_CODES[key], value=value[:1024], relationship_type=relationship)


def _label_code(label: str) -> Code:
    return _LABEL_CODES.get(label.lower(), _private(f"L-{label.upper()[:12]}", label[:64]))


def _finding_items(finding: Finding, source: Dataset, capture: Dataset | None) -> list:
    code = hd.sr.CodeContentItem(name=SR_CODES["finding"], value=_label_code(finding.label),
                                 relationship_type=_REL.CONTAINS)
    code.ContentSequence = hd.sr.ContentSequence([_image(codes.DCM.SourceOfMeasurement, source,
                                                         _REL.INFERRED_FROM)])
    spread_unit = "1" if finding.uncertainty_method.startswith("tta") else "bit"
    probability = _num("probability", finding.probability, "1")
    probability.ContentSequence = hd.sr.ContentSequence([hd.sr.CodeContentItem(  # probability *of* what
        name=SR_CODES["finding"], value=_label_code(finding.positive_label), relationship_type=_REL.HAS_CONCEPT_MOD)])
    spread = [] if finding.uncertainty is None else [_num("uncertainty", finding.uncertainty, spread_unit)]
    items = [code, probability, _num("threshold", finding.threshold, "1"), *spread,
             _num("ood_score", finding.ood_score, "1"),
             _num("ood_threshold", finding.ood_threshold, "1"),
             hd.sr.CodeContentItem(name=SR_CODES["ood_flag"],
                                   value=codes.SCT.Yes if finding.ood_score > finding.ood_threshold else codes.SCT.No,
                                   relationship_type=_REL.CONTAINS),
             _text("explanation", finding.explanation)]
    if capture is not None:
        items.append(_image(codes.DCM.IllustrationOfROI, capture, _REL.CONTAINS))
    return items


def _measurement_items(m: Measurements, seg: Dataset | None) -> list:
    items = [_num("circumference", m.circumference, m.unit), _num("area", m.area, m.unit + "2")]
    if seg is not None:
        for item in items:
            item.ContentSequence = hd.sr.ContentSequence([_image(codes.DCM.SourceOfMeasurement, seg,
                                                                 _REL.INFERRED_FROM, segment=1)])
    return [*items, _text("spacing_source", m.spacing_source)]


def _person(name: str) -> str:
    """A display name as a PN value: all of it the family-name component (nothing is known to split it)."""
    return (name.replace("^", " ").replace("=", " ").strip()[:60] or "unknown") + "^"


def _review_items(review: Review) -> list:
    container = hd.sr.ContainerContentItem(name=SR_CODES["review"], relationship_type=_REL.CONTAINS)
    children = [hd.sr.CodeContentItem(name=codes.DCM.ObserverType, value=codes.DCM.Person,
                                      relationship_type=_REL.HAS_OBS_CONTEXT),
                hd.sr.PnameContentItem(name=codes.DCM.PersonObserverName, value=_person(review.reviewer),
                                       relationship_type=_REL.HAS_OBS_CONTEXT),
                _text("verdict", review.verdict)]
    if review.label:
        children.append(_text("corrected_label", review.label))
    container.ContentSequence = hd.sr.ContentSequence(children)
    return [container]


def structured_report(source: Dataset, model: Algorithm, finding: Finding | None = None,
                      measurements: Measurements | None = None, review: Review | None = None,
                      capture: Dataset | None = None, seg: Dataset | None = None) -> Dataset:
    """A Comprehensive SR of one case's result (see the module's docstring for the tree)."""
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=model.name[:64], manufacturer_name="RadLens", model_name=model.version[:64]))
    root = hd.sr.ContainerContentItem(name=SR_CODES["title"])
    items = [*device,
             _text("algorithm_name", model.name), _text("algorithm_version", model.version),
             _text("algorithm_parameters", f"weights sha256 {model.weights_sha256}")]
    if finding:
        items += _finding_items(finding, source, capture)
    if measurements:
        items += _measurement_items(measurements, seg)
    if review:
        items += _review_items(review)
    items.append(_text("comment", DISCLAIMER))
    root.ContentSequence = hd.sr.ContentSequence(items)
    evidence = [ds for ds in (source, capture, seg) if ds is not None]
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence, content=root, series_instance_uid=hd.UID(), series_number=902,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="RadLens", is_complete=True)
    scheme = Dataset()
    scheme.CodingSchemeDesignator, scheme.CodingSchemeName = _PRIVATE, "RadLens private concepts"
    scheme.CodingSchemeResponsibleOrganization = "RadLens"
    sr.CodingSchemeIdentificationSequence = [scheme]
    return _equipment(sr, f"RadLens {model.name} result (research use only)", model)
