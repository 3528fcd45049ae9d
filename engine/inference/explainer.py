"""Explanations of a classifier's output for one image: several methods side by side, each with its
faithfulness next to the random baseline's, cached in the store by (image, weights, method, class, layer)
so the second view of a slow method is instant."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from engine.errors import InvalidOption
from engine.inference.cam import METHODS, compute_cam, inference_copy, target_layers
from engine.inference.classify import Classifier
from engine.inference.faithfulness import Faithfulness, score_map
from engine.models.registry import get_spec

__all__ = ["Heatmap", "Explainer", "encode_map", "decode_map"]

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
        self.default_layer = get_spec(classifier.loaded.card.arch).cam_layer
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
            raise InvalidOption(f"Unknown class {target!r}. The model's labels: {', '.join(self.labels)}")
        if layer not in self.layers:
            raise InvalidOption(f"{layer!r} is not a convolutional layer of this model; "
                                "choose one the layer list offers")
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


