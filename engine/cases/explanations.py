"""Explanations of stored images: heatmaps cached in the store by (image, weights, method, class, layer),
computed only when missing, and audited."""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np

from engine.context import Context
from engine.inference.cam import BASELINE
from engine.inference.explainer import (
    Explainer,
    Heatmap,
    Report,
    decode_map,
    encode_map,
)
from engine.inference.faithfulness import Faithfulness
from engine.store import utc_now

__all__ = ["explain_image"]


def _from_row(row: dict) -> Heatmap:
    scores = json.loads(row["faithfulness"])
    faith = Faithfulness(**{k: tuple(v) if isinstance(v, list) else v for k, v in scores.items()})
    return Heatmap(row["method"], row["target"], row["layer"], decode_map(row["cam"]), row["runtime_ms"], faith,
                   cached=True)


def explain_image(ctx: Context, explainer: Explainer, image: dict, gray: np.ndarray, methods: Iterable[str],
                  target: str | None = None, layer: str | None = None, report: Report | None = None) -> list[Heatmap]:
    """Heatmaps of `methods` plus the random baseline for a stored image, each with its faithfulness. Maps
    already in the store for this (image, weights, class, layer) are read back; the rest are computed,
    stored and written to the audit log."""
    loaded = explainer.classifier.loaded
    methods = list(dict.fromkeys([*methods, BASELINE]))
    target = target or explainer.predicted(explainer.input(gray))
    layer = layer or explainer.default_layer
    with ctx.store.read() as db:
        rows = {r["method"]: r for r in db.query(
            "SELECT * FROM explanations WHERE image_sha256 = ? AND weights_sha256 = ? AND target = ? AND layer = ?",
            [image["sha256"], loaded.sha256, target, layer])}
    missing = [m for m in methods if m not in rows]
    if missing:
        ctx.require("case.analyse")
    fresh = {h.method: h for h in explainer.explain(gray, missing, target, layer, report=report)} if missing else {}
    if fresh:
        with ctx.store.write() as db:
            db["explanations"].insert_all(({
                "image_sha256": image["sha256"], "weights_sha256": loaded.sha256, "model_name": loaded.name,
                "model_version": loaded.version, "method": h.method, "target": h.target, "layer": h.layer,
                "cam": encode_map(h.cam), "runtime_ms": h.runtime_ms,
                "faithfulness": json.dumps(h.faithfulness.as_dict()), "created_at": utc_now(),
            } for h in fresh.values()), ignore=True)  # a concurrent session may have stored the same key
            ctx.audit(db, "explain", "case", image["case_id"],
                        {"image_id": image["id"], "methods": list(fresh), "target": target, "layer": layer,
                         "model": loaded.name, "version": loaded.version})
    return [fresh[m] if m in fresh else _from_row(rows[m]) for m in methods]
