"""Dataset-level explanation audit: where does the model look across a whole split?

For every image of a split: the heatmap of the predicted class, the share of its mass in the outer 10 %
border and in the two top corners (where laterality markers and burned-in text sit on pediatric films),
and the map's faithfulness. The summary (means with CIs, per class, the mean heatmap per class and the 8
images looking most outside the centre) is stored so runs can be compared across model versions.

Runs as a job of kind 'heatmap-audit' (`python -m engine heatmap-audit --run ID`, started by the job queue); its
progress is the job's done/total, its result a `heatmap_audits` row.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.config import Config
from engine.context import Context
from engine.data.loaders import DATASETS, datasets, load_dataset
from engine.errors import JobError, UnknownDataset, UnknownMethod
from engine.inference.cam import METHODS
from engine.inference.explainer import Explainer
from engine.jobs.queue import (
    Job,
    JobRun,
    get_job,
    list_jobs,
    run_job,
    submit,
)
from engine.metrics import mean_ci
from engine.models.device import choose_device
from engine.models.installed import find_model
from engine.store import Store
from engine.tasks.classification import load_classifier

__all__ = ["BORDER", "CORNER", "AuditImage", "region_masks", "mass_shares", "audit_split", "start_audit", "run_audit",
           "list_audits", "get_audit", "audit_heatmaps", "dataset_file", "TOP_OUTSIDE"]

BORDER = 0.10  # outer share of each side
CORNER = 0.15  # side of the top-left and top-right squares, as a share of the image side
TOP_OUTSIDE = 8


@dataclass(frozen=True)
class AuditImage:
    name: str  # path inside the dataset folder (or array index)
    label: str  # ground truth
    predicted: str  # the explained class
    border_share: float  # of the heatmap's mass, in the outer BORDER of the image
    corner_share: float  # ... in the two top CORNER squares
    road: float
    confidence_change: float


def region_masks(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (size, size) masks of the outer border and of the two top corners."""
    b, c = round(size * BORDER), round(size * CORNER)
    border = np.ones((size, size), bool)
    border[b:size - b, b:size - b] = False
    corners = np.zeros((size, size), bool)
    corners[:c, :c] = corners[:c, size - c:] = True
    return border, corners


def mass_shares(cam: np.ndarray, border: np.ndarray, corners: np.ndarray) -> tuple[float, float]:
    total = float(cam.sum())
    if total <= 0:
        return 0.0, 0.0
    return float(cam[border].sum()) / total, float(cam[corners].sum()) / total


def audit_split(explainer: Explainer, dataset: str, split: str, data_dir: Path | None, method: str = "gradcam",
                layer: str | None = None, limit: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """(summary, mean heatmap per ground-truth label) over a dataset split."""
    prep = explainer.classifier.loaded.preprocessing
    images = load_dataset(dataset, prep, data_dir, only=(split,))
    labels, data = images.label_names, images.sets[split]
    # A limit takes images spread evenly over the split: the manifests are sorted by class.
    chosen = np.unique(np.linspace(0, len(data.labels) - 1, min(limit or len(data.labels), len(data.labels))).round()
                       .astype(int))
    border, corners = region_masks(prep.size)
    sums = {label: np.zeros((prep.size, prep.size), np.float64) for label in labels}
    records = []
    for step, i in enumerate(chosen, 1):
        x = prep.normalize(data.images[i:i + 1]).to(explainer.classifier.device)
        heatmap = explainer.explain_input(x, [method], layer=layer)[0]
        label = labels[int(data.labels[i])]
        sums[label] += heatmap.cam
        records.append(AuditImage(data.names[i], label, heatmap.target, *mass_shares(heatmap.cam, border, corners),
                                  heatmap.faithfulness.road, heatmap.faithfulness.confidence_change))
        if progress:
            progress(step, len(chosen))
    return _summary(records, labels, border, corners), {
        label: (sums[label] / max(1, sum(r.label == label for r in records))).astype(np.float32) for label in labels}


def _summary(records: list[AuditImage], labels: list[str], border: np.ndarray, corners: np.ndarray) -> dict:
    column = {key: np.array([getattr(r, key) for r in records]) for key in
              ("border_share", "corner_share", "road", "confidence_change")}
    outside = sorted(records, key=lambda r: r.border_share, reverse=True)[:TOP_OUTSIDE]
    return {
        "n": len(records),
        "uniform": {"border_share": float(border.mean()), "corner_share": float(corners.mean())},
        **{key: [round(v, 4) for v in mean_ci(values)] for key, values in column.items()},
        "per_class": {label: _class_means([r for r in records if r.label == label]) for label in labels},
        "accuracy": round(float(np.mean([r.label == r.predicted for r in records])), 4),
        "most_outside": [r.name for r in outside],
        "images": [asdict(r) for r in records],
    }


def _class_means(records: list[AuditImage]) -> dict:
    means = {key: round(float(np.mean([getattr(r, key) for r in records])), 4) if records else None
             for key in ("border_share", "corner_share", "road")}
    return {"n": len(records), **means}


def dataset_file(config: Config, dataset: str, name: str) -> Path | None:
    """The file behind an audited image, when the dataset is a folder of files (to open it as a case)."""
    folder = DATASETS[dataset].folder
    path = config.data_dir / folder / name if config.data_dir and folder else None
    return path if path and path.is_file() else None


def start_audit(ctx: Context, model_name: str, method: str, dataset: str, split: str,
                layer: str | None = None, limit: int | None = None, background: bool = True) -> int:
    """Queue an audit as a job of kind 'heatmap-audit' (started at once when no other audit runs); returns its id.
    `background=False` records it as running in this process, for the caller to run (`run_audit`)."""
    ctx.require("explain.audit")
    if method not in METHODS:
        raise UnknownMethod(f"Unknown explanation method {method!r}. Available: {', '.join(METHODS)}")
    if dataset not in datasets("classification"):
        raise UnknownDataset(f"Unknown dataset {dataset!r}. Available: {', '.join(datasets('classification'))}")
    installed = find_model(ctx.config, model_name)
    request = {"model_name": installed.name, "model_version": installed.card.version, "method": method,
               "layer": layer or "", "dataset": dataset, "split": split, "limit": limit}
    return submit(ctx, "heatmap-audit", device=choose_device(), task="classification",
                  config=request, detail={"model": installed.name, "method": method, "dataset": dataset,
                                          "split": split}, here=not background)


def run_audit(ctx: Context, audit_id: int) -> dict:
    """Execute an audit job in this process, recording progress, the result or the failure; then start the
    next queued job of its lane."""

    def work(run: JobRun) -> dict:
        request = run.job.config
        explainer = Explainer(load_classifier(ctx, request["model_name"]))
        summary, heatmaps = audit_split(
            explainer, request["dataset"], request["split"], ctx.config.data_dir, request["method"],
            request["layer"] or None, request["limit"],
            lambda done, total: run.progress(phase="explaining", done=done, total=total))
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **{label: cam.astype(np.float16) for label, cam in heatmaps.items()})
        loaded = explainer.classifier.loaded
        with ctx.store.write() as db:
            db["heatmap_audits"].insert({
                "job_id": audit_id, "weights_sha256": loaded.sha256, "summary": json.dumps(summary),
                "layer": request["layer"] or explainer.default_layer, "heatmaps": buffer.getvalue()}, replace=True)
        run.finish({"n": summary["n"], "border_share": summary["border_share"][0]})
        return summary

    return run_job(ctx, audit_id, "audit", work)


def _audit_row(job: Job, result: dict | None) -> dict:
    """One audit as the page and the CLI read it: the request, the job's state and the result."""
    request, result = job.config, result or {}
    return {"id": job.id, "created_at": job.created_at, "finished_at": job.finished_at, "actor": job.actor,
            "model_name": request["model_name"], "model_version": request["model_version"],
            "method": request["method"], "layer": result.get("layer") or request["layer"],
            "dataset": request["dataset"], "split": request["split"], "limit_n": request["limit"],
            "status": job.status.value, "done": job.progress.get("done", 0), "total": job.progress.get("total", 0),
            "error": job.error or None, "pid": job.pid, "weights_sha256": result.get("weights_sha256"),
            "summary": result.get("summary"), "heatmaps": result.get("heatmaps")}


def list_audits(store: Store) -> list[dict]:
    """Every audit, newest first, with its headline numbers; one whose process died reads 'interrupted'."""
    jobs = list_jobs(store, "heatmap-audit")
    with store.read() as db:
        results = {r["job_id"]: r
                   for r in db.query("SELECT job_id, layer, weights_sha256, summary FROM heatmap_audits")}
    rows = []
    for job in jobs:
        row = _audit_row(job, results.get(job.id))
        summary = json.loads(row.pop("summary") or "{}")
        for key in ("border_share", "corner_share", "road"):
            row[key] = summary[key][0] if key in summary else None
        for key in ("pid", "heatmaps"):
            del row[key]
        rows.append(row)
    return rows


def get_audit(store: Store, audit_id: int) -> dict:
    job = get_job(store, audit_id)
    if job.kind != "heatmap-audit":
        raise JobError(f"job {audit_id} is a {job.kind} job, not an explanation audit; "
                       "pick one from the list of audits")
    with store.read() as db:
        result = next(iter(db.query("SELECT * FROM heatmap_audits WHERE job_id = ?", [audit_id])), None)
    return _audit_row(job, result)


def audit_heatmaps(row: dict) -> dict[str, np.ndarray]:
    if not row.get("heatmaps"):
        return {}
    arrays = np.load(io.BytesIO(row["heatmaps"]))
    return {label: arrays[label].astype(np.float32) for label in arrays.files}
