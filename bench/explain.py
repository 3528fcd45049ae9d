"""Explanation methods on the shipped classifier: faithfulness against the random baseline over the
cxr_pneumonia demo_split test images, and runtime per method per image.

    python -m bench.explain faithfulness --skip scorecam         # all 156 images -> results/explain_faithfulness.jsonl
    python -m bench.explain faithfulness --methods scorecam,gradcam,random --every 4 --tag scorecam
    python -m bench.explain runtime [--images 8]                 # medians per method, one process

Score-CAM costs ~19 s per image on one thread (512 masked forwards), so it is scored on every 4th test
image (39) rather than all 156; the tag keeps that run's log and JSON apart.

The faithfulness run is resumable (images already in the JSONL are skipped) and its numbers do not depend
on timing, so it may share the machine; the runtime run must not.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from bench.common import RESULTS, report
from engine.inference.cam import BASELINE, METHODS
from engine.inference.faithfulness import METRICS
from engine.metrics import mean_ci

WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "cxr-pneumonia-resnet18.safetensors"


def _log(tag: str) -> Path:
    return RESULTS / f"explain_faithfulness{'_' + tag if tag else ''}.jsonl"


def _test_rows(limit: int | None, every: int = 1) -> list[dict]:
    root = Path(os.environ["RADLENS_DATA_DIR"]) / "cxr_pneumonia"
    with open(root / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["demo_split"] == "test"]
    rows = rows[::every]
    rows = rows[:limit] if limit else rows
    return [{"path": str(root / r["path"]), "name": r["path"], "label": r["label"]} for r in rows]


def _explainer(threads: int):
    import torch

    from engine.inference.classify import Classifier
    from engine.inference.explainer import Explainer
    from engine.models.checkpoint import load_model

    torch.set_num_threads(threads)
    return Explainer(Classifier(load_model(WEIGHTS, "cpu")))


def _worker(rows: list[dict], out: str, methods: list[str]) -> int:
    from engine.data.loaders import gray_of_file

    explainer = _explainer(1)
    with open(out, "a") as f:
        for row in rows:
            gray = gray_of_file(Path(row["path"]))
            maps = explainer.explain(gray, methods)
            f.write(json.dumps({"name": row["name"], "label": row["label"], "explained": maps[0].target,
                                "methods": {h.method: h.faithfulness.as_dict() for h in maps}}) + "\n")
            f.flush()
    return len(rows)


def faithfulness(workers: int, limit: int | None, every: int, methods: list[str], tag: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    log = _log(tag)
    done = {json.loads(line)["name"] for line in log.open()} if log.exists() else set()
    todo = [r for r in _test_rows(limit, every) if r["name"] not in done]
    parts = [f"{log}.{i}" for i in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_worker, [todo[i::workers] for i in range(workers)], parts, [methods] * workers))
    with log.open("a") as f:
        for part in parts:
            if Path(part).exists():
                f.write(Path(part).read_text())
                Path(part).unlink()
    names = {r["name"] for r in _test_rows(limit, every)}
    records = [r for r in map(json.loads, log.open()) if r["name"] in names]
    report(log.stem, {"images": len(records), "split": f"cxr_pneumonia demo_split test, every {every}",
                      "weights": WEIGHTS.name, "confidence": "log-odds of the explained (predicted) class",
                      "summary": summarise(records, methods)})


def summarise(records: list[dict], methods: list[str]) -> dict:
    """Per method: mean (95 % CI) of each metric, and the paired difference to the random baseline."""
    out = {}
    for method in methods:
        values = {m: np.array([r["methods"][method][m] for r in records]) for m in METRICS}
        base = {m: np.array([r["methods"][BASELINE][m] for r in records]) for m in METRICS}
        out[method] = {m: {"mean_ci": [round(v, 4) for v in mean_ci(values[m])],
                           "minus_random_ci": [round(v, 4) for v in mean_ci(values[m] - base[m])]}
                       for m in METRICS}
        out[method]["road_beats_random_share"] = round(float((values["road"] > base["road"]).mean()), 3)
    return out


def runtime(images: int) -> None:
    import time

    from engine.data.loaders import gray_of_file

    explainer = _explainer(2)
    rows = _test_rows(None)[::max(1, 156 // images)][:images]
    grays = [gray_of_file(Path(r["path"])) for r in rows]
    explainer.explain(grays[0], METHODS, faithfulness=False)  # warm-up
    per_method: dict[str, list[float]] = {m: [] for m in METHODS}
    faith_ms = []
    for gray in grays:
        for heatmap in explainer.explain(gray, METHODS, faithfulness=False):
            per_method[heatmap.method].append(heatmap.runtime_ms)
        start = time.perf_counter()
        explainer.explain(gray, ["gradcam"])
        faith_ms.append((time.perf_counter() - start) * 1000)
    import torch

    baseline = _library_baseline(explainer, grays[:3])
    report("explain_runtime", {
        "images": len(grays), "threads": torch.get_num_threads(), "device": "cpu",
        "median_ms": {m: round(statistics.median(v), 1) for m, v in per_method.items()},
        "max_ms": {m: round(max(v), 1) for m, v in per_method.items()},
        "gradcam_with_faithfulness_median_ms": round(statistics.median(faith_ms), 1),
        "library_baseline_same_run": baseline,
    })


def _library_baseline(explainer, grays) -> dict:
    """grad-cam's own ScoreCAM / AblationCAM (batch 32, the shared channels_last model) on the same images,
    and the floor for any exact Score-CAM: 512 plain forwards of the BN-folded model."""
    import time

    import torch
    from pytorch_grad_cam import AblationCAM, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    classifier = explainer.classifier
    out: dict[str, list[float]] = {"scorecam_library_ms": [], "ablationcam_library_ms": [], "forward_floor_512_ms": []}
    for gray in grays:
        x = explainer.input(gray)
        for key, cls in (("scorecam_library_ms", ScoreCAM), ("ablationcam_library_ms", AblationCAM)):
            with cls(model=classifier.model, target_layers=[classifier.layer]) as cam:
                cam.batch_size = 32
                start = time.perf_counter()
                cam(input_tensor=x, targets=[ClassifierOutputTarget(1)])
                out[key].append((time.perf_counter() - start) * 1000)
        batch = x.expand(32, -1, -1, -1).contiguous(memory_format=torch.channels_last)
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(16):
                explainer.fast(batch)
        out["forward_floor_512_ms"].append((time.perf_counter() - start) * 1000)
    return {key: round(statistics.median(v), 1) for key, v in out.items()} | {"images": len(grays)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    f = sub.add_parser("faithfulness")
    f.add_argument("--workers", type=int, default=2)
    f.add_argument("--limit", type=int)
    f.add_argument("--every", type=int, default=1, help="take every Nth test image")
    f.add_argument("--methods", default=",".join(METHODS))
    f.add_argument("--skip", default="", help="methods left out of --methods")
    f.add_argument("--tag", default="")
    r = sub.add_parser("runtime")
    r.add_argument("--images", type=int, default=8)
    args = parser.parse_args()
    if args.what == "faithfulness":
        skip = set(filter(None, args.skip.split(",")))
        methods = [m for m in args.methods.split(",") if m not in skip]
        if set(methods) - set(METHODS) or BASELINE not in methods:
            parser.error(f"methods must be among {', '.join(METHODS)} and include the {BASELINE} baseline")
        faithfulness(args.workers, args.limit, args.every, methods, args.tag)
    else:
        runtime(args.images)


if __name__ == "__main__":
    main()
