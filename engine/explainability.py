"""Explanations of a classifier's output for one image: several methods side by side, each with its
faithfulness next to the random baseline's, cached in the store by (image, weights, method, class, layer)
so the second view of a slow method is instant."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from engine.errors import EngineError
from engine.explain import BASELINE, METHODS, compute_cam, inference_copy, target_layers
from engine.faithfulness import Faithfulness, score_map
from engine.infer import Classifier
from engine.models.registry import get_spec
from engine.store import Store, utc_now

__all__ = ["Heatmap", "Explainer", "explain_image", "encode_map", "decode_map"]

Report = Callable[[float, str], None]  # (fraction done, what is running)


@dataclass(frozen=True)
class Heatmap:
    method: str
    target: str  # the label whose evidence the map shows
    layer: str
    cam: np.ndarray  # (S, S) float32 in [0, 1], the model's input size; float16 precision (as cached)
    runtime_ms: float  # computing the map, not its faithfulness
    faithfulness: Faithfulness | None
    cached: bool = False

    @property
    def title(self) -> str:
        return METHODS[self.method].title


class Explainer:
    """Every registered method for one loaded classifier. Holds the classifier's lock while hooks are on
    its shared modules; metrics run on a BN-folded copy (no hooks, same outputs)."""

    def __init__(self, classifier: Classifier):
        self.classifier = classifier
        self.labels = classifier.loaded.labels
        self.default_layer = get_spec(classifier.loaded.card["arch"]).cam_layer
        self.layers = target_layers(classifier.model, self.default_layer)
        self.fast = inference_copy(classifier.model)

    def input(self, gray: np.ndarray) -> torch.Tensor:
        """The model's input for a display image, (1, 1, S, S) on the model's device."""
        return self.classifier.loaded.preprocessing(gray).to(self.classifier.device)

    def predicted(self, x: torch.Tensor) -> str:
        """The label at the model's operating threshold: what an explanation explains by default."""
        with self.classifier.lock, torch.no_grad():
            return self.labels[self.classifier.choose(self.classifier.model(x)[0].float())]

    def explain(self, gray: np.ndarray, methods: Iterable[str], target: str | None = None, layer: str | None = None,
                faithfulness: bool = True, report: Report | None = None) -> list[Heatmap]:
        return self.explain_input(self.input(gray), methods, target, layer, faithfulness, report)

    def explain_input(self, x: torch.Tensor, methods: Iterable[str], target: str | None = None,
                      layer: str | None = None, faithfulness: bool = True,
                      report: Report | None = None) -> list[Heatmap]:
        """Heatmaps of one model input x (1, 1, S, S); the class defaults to the predicted one."""
        methods = list(methods)
        target = target or self.predicted(x)
        layer = layer or self.default_layer
        if target not in self.labels:
            raise EngineError(f"Unknown class {target!r}. The model's labels: {', '.join(self.labels)}")
        if layer not in self.layers:
            raise EngineError(f"{layer!r} is not a convolutional layer of this model")
        k = self.labels.index(target)
        out = []
        for i, method in enumerate(methods):
            def inner(done: int, total: int, i=i, method=method) -> None:
                if report:
                    report((i + done / total) / len(methods), f"{METHODS[method].title}: {done} of {total} forwards")
            if report:
                report(i / len(methods), f"{METHODS[method].title}")
            start = time.perf_counter()
            with self.classifier.lock, _seeded_numpy(0):  # RandomCAM draws from numpy's global generator
                cam = compute_cam(self.classifier.model, self.classifier.model.get_submodule(layer), x, method, k,
                                  progress=inner, inference_model=self.fast)[0]
            runtime_ms = (time.perf_counter() - start) * 1000
            cam = cam.astype(np.float16).astype(np.float32)  # what the cache stores, so a hit is identical
            scores = score_map(self.fast, x, cam, k) if faithfulness else None
            out.append(Heatmap(method, target, layer, cam, runtime_ms, scores))
        if report:
            report(1.0, "done")
        return out


@contextmanager
def _seeded_numpy(seed: int) -> Iterator[None]:
    """numpy's global generator seeded inside the block and restored after it."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def encode_map(cam: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, cam=cam.astype(np.float16))
    return buffer.getvalue()


def decode_map(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob))["cam"].astype(np.float32)


def _from_row(row: dict) -> Heatmap:
    scores = json.loads(row["faithfulness"])
    faith = Faithfulness(**{k: tuple(v) if isinstance(v, list) else v for k, v in scores.items()})
    return Heatmap(row["method"], row["target"], row["layer"], decode_map(row["cam"]), row["runtime_ms"], faith,
                   cached=True)


def explain_image(store: Store, explainer: Explainer, image: dict, gray: np.ndarray, methods: Iterable[str],
                  target: str | None = None, layer: str | None = None, actor: str = "",
                  report: Report | None = None) -> list[Heatmap]:
    """Heatmaps of `methods` plus the random baseline for a stored image, each with its faithfulness. Maps
    already in the store for this (image, weights, class, layer) are read back; the rest are computed,
    stored and written to the audit log."""
    loaded = explainer.classifier.loaded
    methods = list(dict.fromkeys([*methods, BASELINE]))
    target = target or explainer.predicted(explainer.input(gray))
    layer = layer or explainer.default_layer
    with store.read() as db:
        rows = {r["method"]: r for r in db.query(
            "SELECT * FROM explanations WHERE image_sha256 = ? AND weights_sha256 = ? AND target = ? AND layer = ?",
            [image["sha256"], loaded.sha256, target, layer])}
    missing = [m for m in methods if m not in rows]
    fresh = {h.method: h for h in explainer.explain(gray, missing, target, layer, report=report)} if missing else {}
    if fresh:
        with store.write() as db:
            db["explanations"].insert_all(({
                "image_sha256": image["sha256"], "weights_sha256": loaded.sha256, "model_name": loaded.name,
                "model_version": loaded.version, "method": h.method, "target": h.target, "layer": h.layer,
                "cam": encode_map(h.cam), "runtime_ms": h.runtime_ms,
                "faithfulness": json.dumps(h.faithfulness.as_dict()), "created_at": utc_now(),
            } for h in fresh.values()), ignore=True)  # a concurrent session may have stored the same key
            Store.audit(db, actor, "explain", "case", image["case_id"],
                        {"image_id": image["id"], "methods": list(fresh), "target": target, "layer": layer,
                         "model": loaded.name, "version": loaded.version})
    return [fresh[m] if m in fresh else _from_row(rows[m]) for m in methods]
