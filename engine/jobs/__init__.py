"""Jobs: one queue of background work (training, explanation audits) and the processes that run it."""

from engine.public import public_face

# The public face the dashboard and the pages import from (engine.public: each module loads when first asked).
__getattr__, __dir__ = public_face(__name__, {
    "queue": ("Job", "JobStatus", "RESUMABLE", "cancel_job", "dispatch", "get_job", "job_metrics", "list_jobs",
              "log_tail", "resume_job"),
    "training": ("TrainConfig", "TrainingRequest", "submit_training", "visible_gpus"),
})
