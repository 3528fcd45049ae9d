"""Batch throughput on real chest films (the first --images of cxr_pneumonia, each a distinct file, through a
manifest): images/s of

- `classify`: today's product path, the CLI over the files (ingest into the store + Grad-CAM + a logged row each);
- `loop`: one process, one image at a time (read, sandboxed decode, forward, a row) - the plain-loop baseline;
- `local`: the batch engine with --workers processes on this machine;
- `ray`: the batch engine on a local Ray cluster of --workers CPUs (Ray Data, model actors);

each without and with the Grad-CAM overlay kept (single-pass CAM + PNG), in the same run, alternated over
--repeats. Also where the time goes (worker seconds per stage, summed over workers) and the SQLite writer's cost
per shard, from which a 1 M-image run on N machines is extrapolated in docs/benchmarks.md.

Run: python -m bench.batch [--images 1000] [--repeats 1] [--workers 2]   (needs $RADLENS_DATA_DIR)
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import report
from engine.batch.run import BatchRequest, batch_summary, run_batch, start_batch, worker_options
from engine.batch.sources import open_source
from engine.batch.work import Analyser, Item
from engine.config import Config
from engine.context import Context
from engine.jobs.queue import get_job

ROOT = Path(__file__).resolve().parent.parent


def _manifest(folder: Path, n: int) -> Path:
    data = Path(os.environ["RADLENS_DATA_DIR"]) / "cxr_pneumonia"
    with open(data / "manifest.csv", newline="") as f:
        paths = [str(data / r["path"]) for r in csv.DictReader(f)][:n]
    if len(paths) < n:
        raise SystemExit(f"only {len(paths)} films; ask for at most that many")
    manifest = folder / "films.csv"
    manifest.write_text("path\n" + "\n".join(paths) + "\n")
    return manifest


def _context(folder: Path) -> Context:
    return Context.open(Config(home=folder, data_dir=Path(os.environ["RADLENS_DATA_DIR"])), "bench:batch")


def _engine(home: Path, manifest: Path, backend: str, workers: int, cam: bool) -> dict:
    ctx = _context(home)
    job_id = start_batch(ctx, BatchRequest(str(manifest), backend=backend, workers=workers, cam=cam, shard_size=100),
                         background=False)
    start = time.perf_counter()
    summary = run_batch(ctx, job_id)
    seconds = time.perf_counter() - start
    with ctx.store.read() as db:
        shard_seconds = db.execute("SELECT sum(seconds) FROM batch_shards WHERE job_id = ?", [job_id]).fetchone()[0]
    assert summary["status"] == "finished", summary
    return {"seconds": seconds, "images_per_s": summary["items"] / seconds, "failed": summary["failed"],
            "stage_seconds": batch_summary(ctx.store, job_id)["progress"].get("stage_seconds", {}),
            "shard_seconds_total": shard_seconds}


def _loop(home: Path, manifest: Path, cam: bool) -> dict:
    """The plain loop: this process, one image per forward, one row written per image."""
    ctx = _context(home)
    job_id = start_batch(ctx, BatchRequest(str(manifest), cam=cam, workers=1), background=False)
    options = worker_options(get_job(ctx.store, job_id).config, ctx)
    analyser = Analyser(dataclasses.replace(options, batch_size=1))
    source = open_source(manifest)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    for index, name in enumerate(source.names):
        (row,) = analyser.analyse([Item(0, index, name)], timings)
        row.pop("shard")
        with ctx.store.write() as db:
            db["batch_results"].insert({**row, "job_id": job_id, "weights_sha256": options.weights_sha256},
                                       ignore=True)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images_per_s": len(source) / seconds,
            "stage_seconds": {k: round(v, 2) for k, v in timings.items()}}


def _classify(home: Path, manifest: Path) -> dict:
    """Today's product path: `python -m engine classify FILES...` (ingest, Grad-CAM, a logged prediction each)."""
    files = [line for line in manifest.read_text().splitlines()[1:] if line]
    env = {**os.environ, "RADLENS_HOME": str(home), "TQDM_DISABLE": "1"}
    subprocess.run([sys.executable, "-m", "engine", "init", "--no-demo"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "engine", "classify", *files], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-2000:]
    return {"seconds": seconds, "images_per_s": len(files) / seconds, "note": "includes process start and model load"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], help="configurations to leave out (e.g. classify)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="radlens-bench-batch-") as tmp:
        tmp = Path(tmp)
        manifest = _manifest(tmp, args.images)
        configs = {
            "classify (product today, CAM)": lambda home: _classify(home, manifest),
            "loop, no CAM": lambda home: _loop(home, manifest, False),
            "loop, CAM": lambda home: _loop(home, manifest, True),
            f"local x{args.workers}, no CAM": lambda home: _engine(home, manifest, "local", args.workers, False),
            f"local x{args.workers}, CAM": lambda home: _engine(home, manifest, "local", args.workers, True),
            f"ray x{args.workers}, no CAM": lambda home: _engine(home, manifest, "ray", args.workers, False),
            f"ray x{args.workers}, CAM": lambda home: _engine(home, manifest, "ray", args.workers, True),
        }
        configs = {k: v for k, v in configs.items() if not any(k.startswith(s) for s in args.skip)}
        runs: dict[str, list[dict]] = {k: [] for k in configs}
        for repeat in range(args.repeats):  # alternated, so a noisy minute hits every configuration alike
            for name, fn in configs.items():
                result = fn(tmp / f"home-{len(runs[name])}-{abs(hash(name))}")
                runs[name].append(result)
                print(f"[{repeat + 1}/{args.repeats}] {name}: {result['images_per_s']:.1f} images/s", flush=True)
        figures = {}
        loop = statistics.median(r["images_per_s"] for r in runs.get("loop, no CAM", [{"images_per_s": 0}]))
        for name, results in runs.items():
            rate = statistics.median(r["images_per_s"] for r in results)
            figures[name] = {"images_per_s_median": round(rate, 2), "vs_loop_no_cam": round(rate / loop, 2) if loop
                             else None, "runs": results}
    report("batch", {"images": args.images, "workers": args.workers, "repeats": args.repeats, "configs": figures})


if __name__ == "__main__":
    main()
