"""A case's result as standard DICOM objects: each task's latest analysed result contributes its objects
(engine.tasks: the classifier a Secondary Capture of its Grad-CAM, the segmenter a SEG and a capture of its
outline) and its part of one Comprehensive SR (the finding, the measurements) that references them, with the
latest review. Built from what the store logged, over a source dataset the caller chooses: the stored
de-identified image for a download, or the original study's identity for a push (engine.pacs.push). Nothing
built here is stored. Evidence is recomputed by the task from the row's own weights (the same SHA-256, else
the export is refused): it is deterministic, and a heat map is not worth a BLOB per prediction.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from pydicom.dataset import Dataset

from engine.config import Config
from engine.context import Context
from engine.errors import NotAnalysed
from engine.store import Store
from engine.stored import get_case, gray_image, stored_source
from engine.tasks import TASKS, Task
from engine.tasks.analysis import algorithm_of, analysis_of
from engine.writers import derived
from engine.writers.derived import SC_STORAGE, SEG_STORAGE, SR_STORAGE

__all__ = ["CaseResults", "Logged", "ResultObject", "case_results", "build_objects", "result_objects",
           "evidence_view", "result_zip", "OBJECT_KINDS"]

# kind -> (title, SOP class): what each object is, for pages, the CLI and the audit log.
OBJECT_KINDS = {"sr": ("Structured report (SR)", SR_STORAGE),
                "sc-cam": ("Secondary capture of the Grad-CAM overlay", SC_STORAGE),
                "seg": ("Segmentation (SEG)", SEG_STORAGE),
                "sc-seg": ("Secondary capture of the segmentation", SC_STORAGE)}



class Logged(NamedTuple):
    """A task's latest analysed row on the case."""

    task: Task
    row: dict


@dataclass(frozen=True)
class CaseResults:
    """What the store holds about one case's result: rows as logged."""

    case_id: int
    image: dict  # the image the results are about (that of the newest analysed row)
    logged: list[Logged]  # each task's latest analysed row on that image, newest first
    review: dict | None  # the latest review

    @property
    def analysed(self) -> bool:
        return bool(self.logged)


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
    newest: dict[str, tuple[str, dict]] = {}
    with store.read() as db:
        for table in dict.fromkeys(t.analysis.table for t in TASKS.values()):
            for row in db.query(f"SELECT * FROM {table} WHERE case_id = ? AND status = 'analysed' ORDER BY id DESC",
                                [case_id]):
                newest.setdefault(analysis_of(TASKS.values(), table, row).name, (row["created_at"], row))
        reviews = list(db.query("SELECT * FROM reviews WHERE case_id = ? ORDER BY id DESC LIMIT 1", [case_id]))
    logged = [Logged(TASKS[name], row) for name, (_, row) in
              sorted(newest.items(), key=lambda item: (item[1][0], item[1][1]["id"]), reverse=True)]
    image_id = logged[0].row["image_id"] if logged else case["images"][0]["id"]
    image = next(i for i in case["images"] if i["id"] == image_id)
    return CaseResults(case_id, image, [r for r in logged if r.row["image_id"] == image_id],
                       reviews[0] if reviews else None)


def evidence_view(config: Config, results: CaseResults) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(the image the model saw, the newest result's evidence drawn over it or None, its caption)."""
    gray = gray_image(config, results.image)
    if not results.logged:
        return gray, None, ""
    newest = results.logged[0]
    return gray, *newest.task.analysis.evidence(config, newest.row, gray)


def _review(results: CaseResults) -> derived.Review | None:
    r = results.review
    return derived.Review(r["verdict"], r["reviewer"], r["label"] or "") if r else None


def build_objects(config: Config, results: CaseResults, source: Dataset) -> list[ResultObject]:
    """Each logged result's objects (captures, SEG) over `source`, and one SR of them all that references them."""
    if not results.analysed:
        raise NotAnalysed(f"case {results.case_id} has no analysed result to export: run a model on it first")
    gray = gray_image(config, results.image)
    parts = [(r.row, r.task.analysis.objects(config, r.row, source, gray)) for r in results.logged]
    objects = [ResultObject(kind, ds) for _, part in parts for kind, ds in part.objects]
    found = next(((row, part) for row, part in parts if part.finding), None)
    measurements = next((part.measurements for _, part in parts if part.measurements), None)
    capture = next((ds for kind, ds in found[1].objects if ds.SOPClassUID == SC_STORAGE), None) if found else None
    seg = next((o.dataset for o in objects if o.dataset.SOPClassUID == SEG_STORAGE), None)
    sr = derived.structured_report(source, algorithm_of(found[0] if found else parts[0][0]),
                                   found[1].finding if found else None, measurements,
                                   _review(results) if found else None, capture, seg)
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
