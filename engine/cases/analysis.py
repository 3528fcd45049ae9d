"""The analysis job: each task's active model on the cases a plan names (the PACS routing job queues one for
the studies that arrived; `python -m engine analyse --run N` is the queue's program). Every task goes through
its own analysis (engine.tasks.analysis); a case that cannot be analysed is reported with its reason and the
others go on."""

from __future__ import annotations

from engine.context import Context
from engine.jobs.queue import JobRun, run_job
from engine.tasks import get_task
from engine.tasks.analysis import analyse_cases

__all__ = ["run_analysis"]


def run_analysis(ctx: Context, job_id: int) -> dict:
    """Execute an analysis job in this process: each task's active model on its cases, progress on the row;
    a case that cannot be analysed is reported with its reason and the others go on."""

    def work(run: JobRun) -> dict:
        plan, failed, done = run.job.config["plan"], {}, 0
        total = sum(map(len, plan.values()))

        def progress(n: int, _total: int, label: str) -> None:
            run.progress(phase=f"analysing {label}", done=done + n, total=total)

        for task, case_ids in plan.items():
            reasons = analyse_cases(ctx, get_task(task), case_ids, progress)
            failed.update({f"{task} #{k}": v for k, v in reasons.items()})
            done += len(case_ids)
        summary = {"cases": total, "failed": len(failed), "reasons": dict(list(failed.items())[:20])}
        run.finish(summary)
        return summary

    return run_job(ctx, job_id, "analysis", work)
