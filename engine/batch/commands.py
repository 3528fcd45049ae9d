"""The CLI of batch runs: `python -m engine batch SOURCE ...` (foreground, with a progress bar), `--run JOB` (what
the job queue starts), `--resume JOB`, `--results JOB --out FILE.csv`, `--list`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from engine.batch.backends import BACKENDS
from engine.batch.run import (
    DEFAULT_SHARD_SIZE,
    BatchRequest,
    batch_summary,
    list_batches,
    run_batch,
    start_batch,
    write_results_csv,
)
from engine.batch.work import batch_tasks
from engine.context import Context
from engine.errors import JobError
from engine.jobs.queue import lower_priority, resume_job

__all__ = ["add_parsers", "COMMANDS"]



def add_parsers(sub) -> None:
    batch = sub.add_parser("batch", help="run a model over a folder, zip or manifest of images (a resumable batch job)")
    batch.add_argument("source", nargs="?", type=Path, help="a folder, a .zip, or a manifest (.csv/.parquet with a "
                       "'path' column; relative paths from its folder)")
    batch.add_argument("--task", choices=batch_tasks(), default="classification")
    batch.add_argument("--model", default="", help="installed model (default: the task's active one)")
    batch.add_argument("--cam", action="store_true", help="classification: keep each image's Grad-CAM overlay (PNG)")
    batch.add_argument("--backend", choices=list(BACKENDS), default="local",
                       help="local: processes on this machine; ray: a Ray cluster (a local one, bound to this "
                            "machine and token-authenticated, unless the server sets RADLENS_RAY_ADDRESS)")
    batch.add_argument("--workers", type=int, default=2, help="worker processes / Ray model actors (default 2)")
    batch.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="items per shard (the unit of "
                       "retry and resume)")
    batch.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    batch.add_argument("--pixel-size", type=float, help="segmentation: pixel size in mm for files that give none")
    batch.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    batch.add_argument("--cases", action="store_true", help="the analysed images also become cases (de-identified "
                       "by the normal ingest), their results logged as on the Diagnosis/Segmentation pages")
    batch.add_argument("--background", action="store_true", help="queue the run as a job and return its id")
    batch.add_argument("--run", type=int, metavar="JOB", help="execute a queued batch job (the job queue does this)")
    batch.add_argument("--resume", type=int, metavar="JOB", help="continue an interrupted, cancelled or failed run "
                       "in the foreground (loaded shards are kept)")
    batch.add_argument("--results", type=int, metavar="JOB", help="write a run's results (--out FILE.csv), one line "
                       "per item with its path from the source")
    batch.add_argument("--out", type=Path, help="the CSV --results writes")
    batch.add_argument("--list", action="store_true", help="every batch run with its counts")
    batch.add_argument("--json", action="store_true", help="print the summary as JSON")


def _bar(total: int):
    """A progress bar on the terminal (tqdm; TQDM_DISABLE=1 turns it off, as in background jobs)."""
    from tqdm import tqdm

    # straight to the terminal: the bar's carriage returns are its own, it carries no value from a file
    bar = tqdm(total=total, unit="img", file=sys.__stderr__, dynamic_ncols=True)

    def update(progress) -> None:
        bar.n = progress.get("done", 0)
        bar.set_postfix(failed=progress.get("failures", 0), refresh=False)
        bar.refresh()
    return bar, update


def _print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    rate = summary["progress"].get("images_per_s")
    s = summary
    print(f"batch {s['job_id']} {s['status']}: {s['items']:,} items, {s['analysed']:,} analysed, "
          f"{s['not_analysed']:,} not analysed (outside the model's scope), {s['failed']:,} failed; "
          f"{s['new_rows']:,} new result rows ({s['already_known']:,} already known)"
          + (f"; {rate:.1f} images/s" if rate else "") + (f"; labels {s['labels']}" if s["labels"] else ""))


def _batch(args, ctx: Context) -> int:
    if args.list:
        for summary in list_batches(ctx.store):
            _print_summary(summary, args.json)
        return 0
    if args.results is not None:
        if not args.out:
            raise JobError("--results needs --out FILE.csv")
        with open(args.out, "w", newline="", encoding="utf-8") as handle:
            count = write_results_csv(ctx, args.results, handle)
        print(f"wrote {args.out} ({count:,} items)")
        return 0
    lower_priority()  # a batch run is background work, even in the foreground
    if args.run is not None:
        job_id = args.run
    elif args.resume is not None:
        resume_job(ctx, args.resume, here=True)
        job_id = args.resume
    else:
        if args.source is None:
            raise JobError("give a SOURCE (a folder, zip or manifest), or one of --run, --resume, --results, --list")
        request = BatchRequest(str(args.source), args.task, args.model, args.cam, args.backend,
                               workers=args.workers, shard_size=args.shard_size, batch_size=args.batch_size,
                               pixel_mm=args.pixel_size, device=args.device, cases=args.cases)
        job_id = start_batch(ctx, request, background=args.background)
        if args.background:
            print(f"batch job {job_id} queued")
            return 0
    total = batch_summary(ctx.store, job_id)["items"]
    bar, update = _bar(total)
    try:
        summary = run_batch(ctx, job_id, update)
    finally:
        bar.close()
    _print_summary(summary, args.json)
    return 1 if summary["failed"] else 0


COMMANDS = {"batch": _batch}
