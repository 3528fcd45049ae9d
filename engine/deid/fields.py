"""The allow-listed header fields stored in SQLite, taken from the de-identified dataset only."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID

from engine.io.study import Study

__all__ = ["fields_of", "STORED_FIELDS"]

STORED_FIELDS = (
    "source_format", "modality", "body_part", "view_position", "laterality", "rows", "cols", "frames",
    "photometric", "bits_allocated", "bits_stored", "spacing_row_mm", "spacing_col_mm", "spacing_source",
    "manufacturer_model", "study_description", "series_description", "study_date", "transfer_syntax",
    "burned_in_risk",
)


def fields_of(study: Study, deidentified: Dataset | None) -> dict[str, Any]:
    """Stored fields for a study; DICOM values come from the de-identified dataset, never the original."""
    rows, cols = study.shape
    ds = deidentified if deidentified is not None else Dataset()
    bits = int(study.voi.get("BitsStored", 8))
    fields = {
        "source_format": study.source_format,
        "modality": _text(ds, "Modality") or "OT",
        "body_part": _text(ds, "BodyPartExamined"),
        "view_position": _text(ds, "ViewPosition"),
        "laterality": _text(ds, "Laterality") or _text(ds, "ImageLaterality"),
        "rows": rows,
        "cols": cols,
        "frames": study.n_frames,
        "photometric": _text(ds, "PhotometricInterpretation") or study.photometric,
        "bits_allocated": int(ds.get("BitsAllocated", 16 if bits > 8 else 8)),
        "bits_stored": int(ds.get("BitsStored", bits)),
        "spacing_row_mm": study.spacing.row_mm,
        "spacing_col_mm": study.spacing.col_mm,
        "spacing_source": study.spacing.source,
        "manufacturer_model": _text(ds, "ManufacturerModelName"),
        "study_description": _text(ds, "StudyDescription") if deidentified is not None
        else f"{study.source_format.upper()} image",
        "series_description": _text(ds, "SeriesDescription"),
        "study_date": _iso_date(_text(ds, "StudyDate")),
        "transfer_syntax": UID(ds.file_meta.TransferSyntaxUID).name
        if "TransferSyntaxUID" in getattr(ds, "file_meta", {}) else "",
        "burned_in_risk": int(study.burned_in_risk),
    }
    assert set(fields) == set(STORED_FIELDS)
    return fields


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value).strip() if value is not None else ""


def _iso_date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) >= 8 and value[:8].isdigit() else ""
