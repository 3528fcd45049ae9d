"""Use cases on stored cases: read rows, call inference, log a row (ingest, worklist, diagnosis,
segmentation, explanations, heatmap audits, the demo seed)."""
