"""The analysis job: each task's active model on the cases a plan names (the PACS routing job queues one for
the studies that arrived; `python -m engine analyse --run N` is the queue's program). Every task goes through
its own analysis (engine.tasks.analysis); a case that cannot be analysed is reported with its reason and the
others go on."""

from __future__ import annotations

import os

from engine.context import Context
from engine.errors import JobError, short_reason
from engine.jobs.queue import claim_job, dispatch, fail_job, finish_job, update_job
from engine.tasks import get_task
from engine.tasks.analysis import analyse_cases

__all__ = ["run_analysis"]


def run_analysis(ctx: Context, job_id: int) -> dict:
    """Execute an analysis job in this process: each task's active model on its cases, progress on the row;
    a case that cannot be analysed is reported with its reason and the others go on."""
    try:
        job = claim_job(ctx.store, job_id, os.getpid())
        plan, failed, done = job.config["plan"], {}, 0
        total = sum(map(len, plan.values()))

        def progress(n: int, _total: int, label: str) -> None:
            update_job(ctx.store, job_id, {"phase": f"analysing {label}", "done": done + n, "total": total})

        try:
            for task, case_ids in plan.items():
                failed.update({f"{task} #{k}": v for k, v in
                               analyse_cases(ctx, get_task(task), case_ids, progress).items()})
                done += len(case_ids)
        except Exception as error:  # noqa: BLE001 - recorded on the row as one line, never lost
            fail_job(ctx.store, job_id, short_reason(error))
            raise JobError(f"analysis {job_id} failed: {short_reason(error)}") from error
        summary = {"cases": total, "failed": len(failed), "reasons": dict(list(failed.items())[:20])}
        finish_job(ctx.store, job_id, job.actor or ctx.actor, summary)
        return summary
    finally:
        dispatch(ctx)
