"""Use cases on stored cases: read rows, call inference, log a row (ingest, worklist, diagnosis,
segmentation, explanations, heatmap audits, the demo seed)."""

from engine.public import public_face

# The public face the dashboard and the pages import from (engine.public: each module loads when first asked).
__getattr__, __dir__ = public_face(__name__, {
    "explanations": ("explain_image",),
    "heatmap_audit": ("TOP_OUTSIDE", "audit_heatmaps", "dataset_file", "get_audit", "list_audits", "start_audit"),
    "ingest": ("IngestResult", "ingest_files", "ingest_paths"),
    "report": ("MAX_REPORT_CASES", "case_report"),
    "results": ("result_zip",),
    "reviews": ("MAX_COMMENT", "VERDICTS", "case_history", "review_case", "unreviewed_cases"),
    "worklist": ("COLUMNS", "SORTS", "STATUSES", "WorklistQuery", "case_id_of", "facet_values", "list_worklist",
                 "matching_cases", "worklist_csv"),
})
