"""The PDF case report: one A4 page per case with the image and the model's evidence, the result (probability
against the operating threshold with its calibration, uncertainty, OOD status, or the measurement), the
model card's summary (data, held-out test metrics with 95 % CIs, limitations), the clinician's review, the
case's pseudonym and the research-use disclaimer. Everything shown comes from the store (de-identified) and
is set as plain text. Built with fpdf2 in a Unicode font shipped inside matplotlib's wheel.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterable

import numpy as np
import pydicom
from fpdf import FPDF
from PIL import Image

from engine.cases.results import CaseResults, case_results, evidence_view
from engine.config import Config
from engine.context import Context
from engine.draw import fit_within, font_path
from engine.errors import EngineError, ExportError, UnknownModel
from engine.models.card import ModelCard
from engine.models.installed import find_model
from engine.store import Store
from engine.tasks import TASKS, Task
from engine.tasks.analysis import Bar
from engine.tasks.classification import percent
from engine.writers.derived import DISCLAIMER

__all__ = ["case_report", "MAX_REPORT_CASES"]

_TABLES = tuple(dict.fromkeys(t.analysis.table for t in TASKS.values()))  # where results are logged
MAX_REPORT_CASES = 200  # one PDF; each page decodes an image and recomputes a Grad-CAM
_INK, _GREY, _WARN = (20, 20, 20), (100, 100, 100), (170, 60, 0)


class _Report(FPDF):
    def __init__(self):
        super().__init__(format="A4")
        self.add_font("DejaVu", "", font_path())
        self.add_font("DejaVu", "B", font_path(True))
        self.set_auto_page_break(True, margin=18)
        self.set_margins(14, 14, 14)

    def footer(self) -> None:
        self.set_y(-14)
        self.set_font("DejaVu", "", 7.5)
        self.set_text_color(*_GREY)
        self.cell(0, 5, f"RadLens case report - {DISCLAIMER} - page {self.page_no()}", align="C")

    def heading(self, text: str) -> None:
        self.ln(1.5)
        self.set_font("DejaVu", "B", 10.5)
        self.set_text_color(*_INK)
        self.cell(0, 6, text, new_x="LMARGIN", new_y="NEXT")

    def line_text(self, text: str, size: float = 9, colour=_INK, bold: bool = False) -> None:
        self.set_font("DejaVu", "B" if bold else "", size)
        self.set_text_color(*colour)
        self.multi_cell(0, size * 0.5, text, align="L", new_x="LMARGIN", new_y="NEXT")

    def probability_bar(self, probability: float, threshold: float) -> None:
        """A bar from 0 to 100 % filled to the probability, with the operating threshold as a tick."""
        x, y, w, h = self.l_margin, self.get_y() + 1, 120, 4
        self.set_draw_color(*_GREY)
        self.set_fill_color(235, 235, 235)
        self.rect(x, y, w, h, style="DF")
        self.set_fill_color(*((214, 96, 20) if probability >= threshold else (46, 139, 87)))
        self.rect(x, y, w * probability, h, style="F")
        self.set_draw_color(0, 0, 0)
        self.set_line_width(0.6)
        self.line(x + w * threshold, y - 1.2, x + w * threshold, y + h + 1.2)
        self.set_line_width(0.2)
        self.set_font("DejaVu", "", 7)
        self.set_text_color(*_GREY)
        self.text(x + w + 2, y + 3.2, f"| = threshold {percent(threshold)}")
        self.set_y(y + h + 2.5)


def _card(config: Config, row: dict) -> ModelCard | None:
    try:
        return find_model(config, row["model_name"]).card
    except UnknownModel:
        return None


def _pseudonym(config: Config, image: dict) -> str:
    if image["source_format"] != "dicom":
        return "none (not a DICOM upload)"
    try:
        return str(pydicom.dcmread(config.home / image["path"], stop_before_pixels=True).get("PatientID", "")) or "-"
    except (OSError, pydicom.errors.InvalidDicomError):
        return "-"


def _jpeg(pixels: np.ndarray) -> io.BytesIO:
    """An image as a JPEG of at most 1000 px (about 150 dpi at the size printed): a report of many cases
    stays a few hundred kB a page."""
    buffer = io.BytesIO()
    Image.fromarray(fit_within(pixels, 1000)).save(buffer, format="JPEG", quality=88)
    buffer.seek(0)
    return buffer


def _images(pdf: _Report, gray: np.ndarray, evidence: np.ndarray | None, caption: str) -> None:
    top, width = pdf.get_y() + 1, (pdf.epw - 6) / 2
    height = min(95.0, width * gray.shape[0] / gray.shape[1])
    shown = [(gray, "Image")] + ([(evidence, caption)] if evidence is not None else [])
    for n, (pixels, title) in enumerate(shown):
        w = height * pixels.shape[1] / pixels.shape[0]
        x = pdf.l_margin + n * (width + 6)
        pdf.image(_jpeg(pixels), x=x, y=top, w=min(w, width))
        pdf.set_xy(x, top + height + 1)
        pdf.set_font("DejaVu", "", 7.5)
        pdf.set_text_color(*_GREY)
        pdf.cell(width, 4, title)
    pdf.set_xy(pdf.l_margin, top + height + 6)


def _result(pdf: _Report, lines: list) -> None:
    """A task's result section (engine.tasks.analysis Line / Bar items), set as plain text."""
    pdf.heading("Result")
    for item in lines:
        if isinstance(item, Bar):
            pdf.probability_bar(item.probability, item.threshold)
        else:
            pdf.line_text(item.text, item.size, _WARN if item.warn else _GREY if item.muted else _INK, item.bold)


def _not_analysed(pdf: _Report, store: Store, case_id: int) -> None:
    pdf.heading("Result")
    tables = " UNION ALL ".join(f"SELECT status_reason FROM {t} WHERE case_id = ?" for t in _TABLES)
    with store.read() as db:
        row = db.execute(f"{tables} LIMIT 1", [case_id] * len(_TABLES)).fetchone()
    pdf.line_text("Not analysed: " + (f"outside what the model was trained on ({row[0]})" if row else
                                      "no model has been run on this case"), 10, _WARN, bold=True)


def _model(pdf: _Report, task: Task, row: dict, card: ModelCard | None) -> None:
    pdf.heading(f"Model: {row['model_name']} v{row['model_version']} (weights {row['weights_sha256'][:12]})")
    if card is None:
        pdf.line_text("This model is no longer installed; its card is not available.", colour=_GREY)
        return
    data = card.data or {}
    pdf.line_text(f"Data: {data.get('description') or data.get('dataset', '-')}", 8.5)
    if test := card.test_metrics:
        pdf.line_text("Held-out test split: " + "; ".join(task.analysis.card_metrics(test)), 8.5)
    for limitation in card.limitations[:4]:
        pdf.line_text(f"- {limitation}", 8, _GREY)


def _review(pdf: _Report, review: dict | None) -> None:
    pdf.heading("Clinician review")
    if review is None:
        pdf.line_text("Not reviewed.", colour=_GREY)
        return
    corrected = f" (correct label: {review['label']})" if review["label"] else ""
    pdf.line_text(f"{review['verdict'].capitalize()}{corrected}, by {review['reviewer']} on "
                  f"{review['created_at'][:16].replace('T', ' ')} UTC")
    if review["comment"]:
        pdf.line_text(f"Comment: {review['comment'][:1500]}", 8.5)


def _page(pdf: _Report, config: Config, store: Store, results: CaseResults, today: str) -> None:
    case = store.row("cases", results.case_id)
    pdf.set_font("DejaVu", "B", 15)
    pdf.set_text_color(*_INK)
    pdf.cell(0, 8, f"RadLens case report - case #{results.case_id}", new_x="LMARGIN", new_y="NEXT")
    pdf.line_text(DISCLAIMER, 10, _WARN, bold=True)
    pdf.line_text(f"Pseudonym {_pseudonym(config, results.image)} | {case['modality'] or '-'} "
                  f"{case['body_part'] or ''} {case['study_description'] or ''} | study date (shifted) "
                  f"{case['study_date'] or '-'} | source: {case['source']} | report date {today}", 8.5, _GREY)
    gray, evidence, caption = evidence_view(config, results)
    _images(pdf, gray, evidence, caption)
    if not results.logged:
        _not_analysed(pdf, store, results.case_id)
    for logged in results.logged:
        card = _card(config, logged.row)
        _result(pdf, logged.task.analysis.report(logged.row, card))
        _model(pdf, logged.task, logged.row, card)
    _review(pdf, results.review)


def case_report(ctx: Context, case_ids: Iterable[int]) -> bytes:
    """One PDF, one page per case (needs `case.export`; audited). A case that cannot be reported gets a page
    saying why, and the others go on."""
    ctx.require("case.export")
    case_ids = list(case_ids)
    if not case_ids:
        raise ExportError("no case to report: the filter matches none")
    if len(case_ids) > MAX_REPORT_CASES:
        raise ExportError(f"a report holds at most {MAX_REPORT_CASES} cases ({len(case_ids)} asked); narrow the "
                          "filter or export the CSV")
    pdf, today = _Report(), dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    for case_id in case_ids:
        pdf.add_page()
        try:
            _page(pdf, ctx.config, ctx.store, case_results(ctx.store, case_id), today)
        except EngineError as error:
            pdf.heading(f"Case #{case_id}: cannot be reported")
            pdf.line_text(str(error), colour=_WARN)
    ctx.log("export.report", "case", case_ids[0] if len(case_ids) == 1 else "",
            {"cases": case_ids[:50], "count": len(case_ids)})
    return bytes(pdf.output())
