"""Two checkouts' benchmarks alternated in one sitting (new, base, new, base, ...), so a noisy minute on this
shared machine hits both alike: each checkout runs its own version of the same benchmark, and the medians of
every run and the ratio of their means (new / base) are printed and written as JSON.

    python -m bench.alternate --base ../before --runs 2 case_latency ingest batch pacs

The base is another checkout of this repository (e.g. `git worktree add ../before HEAD~1`); both run with this
checkout's Python environment.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import report

ROOT = Path(__file__).resolve().parent.parent

# bench -> (its arguments, {figure: the path to it in the benchmark's JSON})
BENCHES = {
    "case_latency": (["--repeats", "21"], {
        "RG1 DICOM case, single pass p50 (ms)": ("cases", "RG1_UNCR.dcm", "single_pass", "p50_ms"),
        "full-resolution JPEG case, single pass p50 (ms)": ("cases", "NORMAL2-IM-1113-0001.jpeg", "single_pass",
                                                            "p50_ms")}),
    "ingest": ([], {"RG1 single file median (ms)": ("rg1_single_file", "median_ms"),
                    "50-file batch median (ms)": ("batch", "median_ms")}),
    "batch": (["--images", "200", "--skip", "classify", "loop", "ray"], {
        "local x2, no CAM (images/s)": ("configs", "local x2, no CAM", "images_per_s_median"),
        "local x2, CAM (images/s)": ("configs", "local x2, CAM", "images_per_s_median")}),
    "pacs": (["--repeats", "3"], {"push to analysed, one CR study p50 (ms)": ("push_to_analysed_one_cr_study",
                                                                               "p50_ms")}),
}


def _figure(payload: dict, path: tuple[str, ...]):
    for key in path:
        payload = payload.get(key, {}) if isinstance(payload, dict) else {}
    return payload if isinstance(payload, int | float) else None


def _run(tree: Path, bench: str) -> dict:
    args, _ = BENCHES[bench]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", f"bench.{bench}", *args], cwd=tree, env=env, capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(f"bench.{bench} failed in {tree}: {done.stderr[-1500:]}")
    payload = json.loads((tree / "bench" / "results" / f"{bench}.json").read_text())
    return {**payload, "wall_s": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benches", nargs="+", choices=list(BENCHES))
    parser.add_argument("--base", type=Path, required=True, help="the other checkout (the commit before)")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    base = args.base.resolve()
    sides = {"new": ROOT, "base": base}
    out: dict[str, dict] = {}
    for bench in args.benches:
        runs: dict[str, list[dict]] = {"new": [], "base": []}
        for _ in range(args.runs):
            for side, tree in sides.items():
                runs[side].append(_run(tree, bench))
                print(f"{bench} {side} run {len(runs[side])} done", flush=True)
        figures = {}
        for name, path in BENCHES[bench][1].items():
            values = {side: [_figure(r, path) for r in rs] for side, rs in runs.items()}
            ok = all(v is not None for vs in values.values() for v in vs)
            figures[name] = {**values, "ratio_new_over_base": round(statistics.mean(values["new"]) /
                                                                    statistics.mean(values["base"]), 3) if ok else None}
        out[bench] = figures
    base_commit = subprocess.run(["git", "-C", str(base), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip()
    new_commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    report("alternate", {"base": base_commit, "new": new_commit, "runs": args.runs, "order": "new, base, new, base",
                         "figures": out, "command": "python -m bench.alternate --base BASE " + " ".join(args.benches)})


if __name__ == "__main__":
    main()
