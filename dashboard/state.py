"""Session-state keys, in one place so pages never spell them twice."""

CURRENT_CASE = "radlens.current_case"  # case id the viewer opens
UPLOAD_RESULTS = "radlens.upload_results"  # the last batch's IngestResult list
WINDOW_PRESET = "radlens.window_preset"
WINDOW_CENTER = "radlens.window_center"
WINDOW_WIDTH = "radlens.window_width"
DIAGNOSIS = "radlens.diagnosis"  # {(image id, weights sha, tta): CaseResult} so reruns do not re-log
EXPLAIN_METHODS = "radlens.explain.methods"  # the methods the Explainability grid shows
AUDIT_RUNNING = "radlens.audit.running"  # an audit was running at the last refresh
RAW_OUTPUT = "radlens.raw_output"  # {(prediction or segmentation id,): the revealed raw output}, logged once
SEQUENCE = "radlens.sequence"  # {(image id, weights sha): SequenceResult}, as DIAGNOSIS
SEGMENTATION = "radlens.segmentation"  # {(image id, weights sha, pixel size): CaseSegmentation}, as DIAGNOSIS
TRAIN_JOB = "radlens.train.job"  # the job the Training page shows
BATCH_JOB = "radlens.batch.job"  # the run the Batch page shows
SESSION = "radlens.session"  # the sign-in session's token (only its hash is in the store)
SIGN_IN_NOTE = "radlens.sign_in_note"  # why the user is looking at the sign-in form (expired, signed out)
VIEWED = "radlens.viewed"  # cases whose view is already in the audit trail this sitting
CONFIRM = "radlens.models.confirm"  # the promotion / roll back awaiting confirmation
USER = "radlens.user"  # the User the login gate let in on this run
PACS_MATCHES = "radlens.pacs.matches"  # (node, via, [StudyMatch]) of the last search: PHI, this session only
PACS_ECHO = "radlens.pacs.echo"  # {node name: EchoReport} of the connection tests this session
SYNTHETIC = "radlens.synthetic"  # {(generator, classifier, label, count, seed): Gallery}: generated (and logged) once
SYNTHETIC_ASKED = "radlens.synthetic.asked"  # the (label, count, seed) the page shows
