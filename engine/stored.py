"""Reading cases back: the case row with its images, and an image's stored (de-identified) file."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from engine.config import Config
from engine.context import Context
from engine.errors import ExportError, UnknownCase
from engine.io import read_study
from engine.io.study import Study
from engine.models.preprocess import model_view
from engine.models.scope import Scope
from engine.store import Store


class ImageRow(TypedDict):
    """One `images` row: a stored, de-identified file and the allow-listed fields read from it."""

    id: int
    case_id: int
    sha256: str  # of the stored (de-identified) file
    path: str  # relative to RADLENS_HOME
    source_format: str  # dicom, png or jpeg
    modality: str
    body_part: str
    view_position: str
    laterality: str
    rows: int
    cols: int
    frames: int
    photometric: str
    bits_allocated: int
    bits_stored: int
    spacing_row_mm: float | None
    spacing_col_mm: float | None
    spacing_source: str
    manufacturer_model: str
    study_description: str
    series_description: str
    study_date: str  # shifted
    transfer_syntax: str
    burned_in_risk: int
    created_at: str


class CaseRow(TypedDict):
    """One `cases` row (a study, or a single PNG/JPEG image) with its image rows."""

    id: int
    study_key: str  # pseudonymous
    source: str  # upload, cli, demo
    modality: str
    body_part: str
    view_position: str
    laterality: str
    study_description: str
    series_description: str
    study_date: str
    received_at: str
    image_count: int
    burned_in_risk: int
    images: list[ImageRow]


__all__ = ["CaseRow", "ImageRow", "get_case", "view_case", "record_export", "get_image", "newest_in_scope",
           "load_image", "gray_image", "recent_cases", "stored_source", "single_frame"]


def get_case(store: Store, case_id: int) -> CaseRow:
    """A case row with its images (a list of image rows). Raises UnknownCase."""
    with store.read() as db:
        rows = list(db.query("SELECT * FROM cases WHERE id = ?", [case_id]))
        if not rows:
            raise UnknownCase(f"case {case_id} does not exist; pick one from the worklist")
        images = list(db.query("SELECT * FROM images WHERE case_id = ? ORDER BY id", [case_id]))
    return {**rows[0], "images": images}


def view_case(ctx: Context, case_id: int, record: bool = True) -> CaseRow:
    """get_case for a person: needs `case.read`, and the first view in a sitting is an audit row."""
    ctx.require("case.read")
    case = get_case(ctx.store, case_id)
    if record:
        ctx.log("case.view", "case", case_id)
    return case


def record_export(ctx: Context, case_id: int, kind: str, build: Callable[[], bytes]) -> bytes:
    """A download of something derived from a case (a mask PNG, an overlay): needs `case.export`; logged."""
    ctx.require("case.export")
    data = build()
    ctx.log("export", "case", case_id, {"kind": kind, "bytes": len(data)})
    return data


def load_image(config: Config, image: ImageRow) -> Study:
    """Decode an image row's stored file (the de-identified copy; the original is never kept)."""
    path = config.home / image["path"]
    if not path.is_file():
        raise UnknownCase(f"the stored file of image {image['id']} is missing from {config.files_dir}")
    return read_study(path.read_bytes(), config.limits)


def recent_cases(store: Store, limit: int = 200) -> dict[int, str]:
    """The newest cases as {id: one-line label}, newest first."""
    sql = ("SELECT id, modality, body_part, study_description FROM cases "
           "ORDER BY received_at DESC, id DESC LIMIT ?")
    with store.read() as db:
        return {r[0]: " ".join(f"#{r[0]} {r[1]} {r[2] or ''} {r[3] or ''}".split()) for r in db.execute(sql, [limit])}


def newest_in_scope(store: Store, scope: Scope, limit: int = 200) -> int | None:
    """The newest case whose header does not put it outside `scope` (the case a model's page opens on)."""
    sql = "SELECT id, modality, body_part FROM cases ORDER BY received_at DESC, id DESC LIMIT ?"
    with store.read() as db:
        return next((r[0] for r in db.execute(sql, [limit]) if scope.outside(r[1], r[2]) is None), None)


def get_image(store: Store, image_id: int) -> ImageRow:
    row = store.row("images", image_id)
    if row is None:
        raise UnknownCase(f"image {image_id} does not exist")
    return row


def gray_image(config: Config, image: ImageRow) -> np.ndarray:
    """The stored image's display rendering (first frame, its own window) as 8-bit gray: the model's input."""
    return model_view(load_image(config, image))


# Type 2 Patient/Study attributes the derived objects copy; de-identification may have left them out.
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "AccessionNumber", "StudyID")


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
    return source


def single_frame(source: Dataset) -> Dataset:
    """`source` when it holds one frame (a capture or a SEG is drawn over one image); else ExportError."""
    if int(source.get("NumberOfFrames", 1) or 1) != 1:
        raise ExportError("image objects (captures, SEG) are built for single-frame images; download the PDF "
                          "report instead")
    return source
