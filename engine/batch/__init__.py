"""Batch runs: a model over an archive (a folder, zip or manifest), sharded, resumable, every image once."""

from engine.public import public_face

# The public face the dashboard and the pages import from (engine.public: each module loads when first asked).
__getattr__, __dir__ = public_face(__name__, {
    "backends": ("BACKENDS",),
    "run": ("BatchRequest", "DEFAULT_SHARD_SIZE", "EXPORT_COLUMNS", "batch_rows", "batch_summary", "start_batch",
            "write_results_csv"),
    "work": ("batch_tasks",),
})
