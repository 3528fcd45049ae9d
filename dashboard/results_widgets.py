"""Results out: a case's PDF report and DICOM objects (SR, secondary capture, SEG) as downloads, and "Send
results to PACS" for a study that came from one; the worklist filter's CSV and PDF. Files are built only
when a button is clicked (by the engine, which checks the permission and logs the export)."""

from __future__ import annotations

import streamlit as st

from dashboard.text import md
from engine.cases import MAX_REPORT_CASES, WorklistQuery, case_report, matching_cases, result_zip, worklist_csv
from engine.context import Context
from engine.pacs import has_link, send_case

__all__ = ["case_results_out", "filter_exports"]


def case_results_out(ctx: Context, case_id: int, image: dict) -> None:
    """The case's downloads and the push to its source PACS (the latest analysed result and review)."""
    st.markdown("**Results out**")
    c1, c2 = st.columns(2)
    if ctx.user.may("case.export"):
        c1.download_button("PDF report", lambda: case_report(ctx, [case_id]), f"case{case_id}-report.pdf",
                           "application/pdf", on_click="ignore", icon=":material/picture_as_pdf:", width="stretch",
                           help="One page: image and evidence, result, model card summary, review")
        is_dicom = image["source_format"] == "dicom"
        c2.download_button("DICOM SR + captures", (lambda: result_zip(ctx, case_id)) if is_dicom else b"",
                           f"case{case_id}-results.zip", "application/zip", on_click="ignore",
                           icon=":material/folder_zip:", disabled=not is_dicom, width="stretch",
                           help="Structured report, secondary capture(s) and SEG over the de-identified image"
                           if is_dicom else "Needs a DICOM source image")
    if not ctx.user.may("pacs.send"):
        return
    if not has_link(ctx.store, case_id):
        st.caption("Results go back to a PACS only for studies that came from one.")
    elif st.button("Send results to PACS", icon=":material/send:", key=f"send.{case_id}", width="stretch",
                   help="The SR and secondary capture(s) (and the SEG) into this study's original study"):
        with st.spinner("Building and sending the SR and captures..."):
            report = send_case(ctx, case_id)
        st.success(md("Sent {n} object(s) to {node} ({via}, {seconds:.1f} s) into the original study.",
                      n=len(report.objects), node=report.node, via=report.via, seconds=report.seconds),
                   icon=":material/check:")


def filter_exports(ctx: Context, query: WorklistQuery, total: int) -> None:
    """CSV of every case the filter matches, and one PDF with a page per case (up to MAX_REPORT_CASES)."""
    if not ctx.user.may("case.export") or not total:
        return
    c1, c2, _ = st.columns([2, 2, 1])
    cases = f"{total:,} case{'s' if total != 1 else ''}"
    c1.download_button(f"CSV of these {cases}", lambda: worklist_csv(ctx, query),
                       "radlens-worklist.csv", "text/csv", on_click="ignore", icon=":material/table_view:")
    fits = total <= MAX_REPORT_CASES
    c2.download_button(f"PDF report of these {cases}",
                       (lambda: case_report(ctx, [r["id"] for r in matching_cases(ctx, query).rows])) if fits
                       else b"", "radlens-cases.pdf", "application/pdf", on_click="ignore", disabled=not fits,
                       icon=":material/picture_as_pdf:",
                       help=None if fits else f"At most {MAX_REPORT_CASES} cases per PDF: narrow the filter")
