"""Session-state keys, in one place so pages never spell them twice."""

USER = "radlens.user"  # display name recorded in the audit log
CURRENT_CASE = "radlens.current_case"  # case id the viewer opens
UPLOAD_RESULTS = "radlens.upload_results"  # the last batch's IngestResult list
WINDOW_PRESET = "radlens.window_preset"
WINDOW_CENTER = "radlens.window_center"
WINDOW_WIDTH = "radlens.window_width"
DIAGNOSIS = "radlens.diagnosis"  # {(image id, weights sha, tta): CaseResult} so reruns do not re-log
EXPLAIN_METHODS = "radlens.explain.methods"  # the methods the Explainability grid shows
AUDIT_RUNNING = "radlens.audit.running"  # an audit was running at the last refresh
SEGMENTATION = "radlens.segmentation"  # {(image id, weights sha, pixel size): CaseSegmentation}, as DIAGNOSIS
TRAIN_JOB = "radlens.train.job"  # the job the Training page shows
