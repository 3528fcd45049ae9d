"""Dataset-level explanation audit: where does the model look across a whole split?

For every image of a split: the heatmap of the predicted class, the share of its mass in the outer 10 %
border and in the two top corners (where laterality markers and burned-in text sit on pediatric films),
and the map's faithfulness. The summary (means with CIs, per class, the mean heatmap per class and the 8
images looking most outside the centre) is stored so runs can be compared across model versions.

Runs as a background process (`python -m engine audit --run ID`) started by the page; progress is the
row's done/total.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.background import alive, start_process
from engine.config import Config
from engine.diagnosis import load_classifier
from engine.errors import EngineError
from engine.explain import METHODS
from engine.explainability import Explainer
from engine.train.metrics import mean_ci
from engine.models.catalog import find_model
from engine.store import Store, utc_now
from engine.train.data import DATASETS, datasets, load_dataset

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


def start_audit(config: Config, store: Store, model_name: str, method: str, dataset: str, split: str,
                layer: str | None = None, limit: int | None = None, background: bool = True) -> int:
    """Record an audit and (by default) start its background process; returns the audit id."""
    if method not in METHODS:
        raise EngineError(f"Unknown explanation method {method!r}. Available: {', '.join(METHODS)}")
    if dataset not in datasets("classification"):
        raise EngineError(f"Unknown dataset {dataset!r}. Available: {', '.join(datasets('classification'))}")
    installed = find_model(config, model_name)
    with store.write() as db:
        audit_id = db["explanation_audits"].insert({
            "model_name": installed.name, "model_version": installed.card["version"], "method": method, "layer": layer or "",
            "dataset": dataset, "split": split, "limit_n": limit, "status": "queued", "done": 0, "total": 0,
            "actor": config.user, "created_at": utc_now(),
        }).last_pk
        Store.audit(db, config.user, "explain.audit.start", "explanation_audit", audit_id,
                    {"model": installed.name, "method": method, "dataset": dataset, "split": split})
    if not background:
        return audit_id
    pid = start_process(config, [sys.executable, "-m", "engine", "audit", "--run", str(audit_id)],
                        config.log_dir / f"audit-{audit_id}.log")
    _update(store, audit_id, pid=pid)
    return audit_id


def run_audit(config: Config, store: Store, audit_id: int) -> dict:
    """Execute a queued audit in this process, recording progress, the result or the failure."""
    row = get_audit(store, audit_id)
    _update(store, audit_id, status="running", pid=os.getpid())
    try:
        explainer = Explainer(load_classifier(config, store, row["model_name"]))
        summary, heatmaps = audit_split(explainer, row["dataset"], row["split"], config.data_dir, row["method"],
                                        row["layer"] or None, row["limit_n"],
                                        lambda done, total: _update(store, audit_id, done=done, total=total))
    except Exception as error:  # noqa: BLE001 - any failure is recorded on the row as one line, never lost
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        _update(store, audit_id, status="failed", error=message, finished_at=utc_now())
        raise EngineError(f"audit {audit_id} failed: {message}") from error
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{label: cam.astype(np.float16) for label, cam in heatmaps.items()})
    loaded = explainer.classifier.loaded
    with store.write() as db:
        db["explanation_audits"].update(audit_id, {
            "status": "finished", "summary": json.dumps(summary), "heatmaps": buffer.getvalue(),
            "weights_sha256": loaded.sha256, "layer": row["layer"] or explainer.default_layer, "finished_at": utc_now()})
        Store.audit(db, row["actor"] or config.user, "explain.audit.finish", "explanation_audit", audit_id,
                    {"n": summary["n"], "border_share": summary["border_share"][0]})
    return summary


def _update(store: Store, audit_id: int, **values) -> None:
    with store.write() as db:
        db["explanation_audits"].update(audit_id, values)


def list_audits(store: Store) -> list[dict]:
    """Every audit, newest first; a queued/running one whose process is gone reads 'interrupted'."""
    with store.read() as db:
        rows = list(db.query(
            "SELECT id, created_at, model_name, model_version, method, layer, dataset, split, status, done, total, "
            "pid, error, summary FROM explanation_audits ORDER BY id DESC"))
    for row in rows:
        if row["status"] in ("queued", "running") and not alive(row["pid"]):
            row["status"] = "interrupted"
        summary = json.loads(row.pop("summary") or "{}")
        for key in ("border_share", "corner_share", "road"):
            row[key] = summary[key][0] if key in summary else None
        del row["pid"]
    return rows


def get_audit(store: Store, audit_id: int) -> dict:
    row = store.row("explanation_audits", audit_id)
    if row is None:
        raise EngineError(f"explanation audit {audit_id} does not exist")
    return row


def audit_heatmaps(row: dict) -> dict[str, np.ndarray]:
    if not row.get("heatmaps"):
        return {}
    arrays = np.load(io.BytesIO(row["heatmaps"]))
    return {label: arrays[label].astype(np.float32) for label in arrays.files}
