"""The work of one batch worker, whichever backend runs it: read a list of items of a source, decode each in
the decoder sandbox (a hostile file fails alone, as a reason row), run the task's model on a batch of them and
return one plain row per item. No store here: rows go back to the run's single writer (engine.batch.run).

A row's key is (input_sha256, weights_sha256): the hash of everything the model's output depends on (the
rendered pixels, the header values of the scope rule, the pixel spacing) and of the weights, so the same image
analysed twice by the same model is one row, whatever its file is called or wherever it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from engine.batch.decode import DECODERS, decode_plain
from engine.batch.sources import read_item
from engine.config import Limits
from engine.errors import EngineError, short_reason
from engine.io.display import to_gray_uint8
from engine.io.sandbox import sandbox_for
from engine.io.study import Spacing
from engine.models.scope import Scope
from engine.tasks import TASKS, get_task
from engine.tasks.analysis import load_path

__all__ = ["Options", "Item", "Decoded", "Decoder", "Analyser", "batch_tasks", "ERROR", "COLUMNS", "STAGES"]

ERROR = "error"  # the status of an item that could not be read or decoded (a reason row)
STAGES = ("read", "decode", "preprocess", "forward", "forward_cam", "encode")  # worker seconds, summed per shard


@dataclass(frozen=True)
class Options:
    """Everything a worker needs, as plain data (it travels to other processes and nodes)."""

    task: str
    model_path: str
    weights_sha256: str
    source_kind: str
    source_location: str
    limits: dict = field(default_factory=lambda: asdict(Limits()))
    cam: bool = False  # classification: keep the Grad-CAM overlay (PNG) of each analysed image
    pixel_mm: float | None = None  # segmentation: pixel size when the file gives none
    batch_size: int = 16
    device: str = "cpu"
    roots: tuple[str, ...] | None = None  # a signed-in user's run: every item must resolve under these


@dataclass(frozen=True)
class Item:
    shard: int
    index: int  # the item's position in the source listing
    name: str


def _input_hash(gray: np.ndarray, modality: str, body_part: str, spacing: Spacing) -> str:
    digest = hashlib.sha256(json.dumps([gray.shape, modality, body_part, spacing.row_mm, spacing.col_mm]).encode())
    digest.update(np.ascontiguousarray(gray).tobytes())
    return digest.hexdigest()


@dataclass
class Decoded:
    item: Item
    gray: np.ndarray  # the model's input: a 2-D display image, or a volume's (slices, rows, cols) voxels
    modality: str
    body_part: str
    spacing: Spacing


class _TaskModel:
    """A task's loaded model (its analysis's runner), its scope, and how it turns decoded images into rows."""

    def __init__(self, options: Options):
        self.task = get_task(options.task)
        self.model = load_path(self.task, Path(options.model_path), options.device)
        self.loaded, self.options = self.model.loaded, options
        self.scope = Scope.from_card(self.loaded.card)

    def rows(self, batch: list[Decoded], timings: dict[str, float]) -> list[dict]:
        return self.task.analysis.batch_rows(self.model, self.scope, batch, self.options, timings)


def batch_tasks() -> list[str]:
    """The tasks a batch run can do: those whose analysis turns decoded images into rows."""
    return [name for name, task in TASKS.items() if task.analysis.batch_rows]


# Every column a row may carry (the Parquet schema and the `batch_results` table); a task leaves the others None.
COLUMNS = {"shard": int, "item": int, "input_sha256": str, "status": str, "status_reason": str,
           "modality": str, "body_part": str, "rows": int, "cols": int,
           **{k: v for task in TASKS.values() for k, v in task.analysis.batch_columns.items()},
           "overlay_png": bytes, "latency_ms": float}  # overlay_png: a CAM overlay or a mask, as PNG


class Decoder:
    """Reads items of the source and decodes them in this process's decoder sandbox."""

    def __init__(self, options: Options):
        self.options = options
        self.limits = Limits(**options.limits)
        self.sandbox = sandbox_for(self.limits.decode_memory_mb * 2**20, self.limits.decode_seconds,
                                   preload=(decode_plain.__module__,))
        self.pid = os.getpid()

    def decode(self, item: Item, timings: dict[str, float]) -> Decoded:
        start = time.perf_counter()
        data = read_item(self.options.source_kind, Path(self.options.source_location), item.name, self.limits,
                         self.options.roots)
        read = time.perf_counter()
        decoded = self.decode_bytes(item, data)
        timings["read"] = timings.get("read", 0.0) + read - start
        timings["decode"] = timings.get("decode", 0.0) + time.perf_counter() - read
        return decoded

    def decode_bytes(self, item: Item, data: bytes) -> Decoded:
        kind = get_task(self.options.task).analysis.batch_input
        decoded = self.sandbox.call(DECODERS[kind], data, asdict(self.limits))
        pixels = to_gray_uint8(decoded["image"]) if kind == "image" else decoded["image"]
        return Decoded(item, pixels, decoded["modality"], decoded["body_part"], Spacing(**decoded["spacing"]))

    def input_hash(self, data: bytes) -> str:
        """The row key's input hash of a file's bytes: what a result was computed on."""
        d = self.decode_bytes(Item(0, 0, ""), data)
        return _input_hash(d.gray, d.modality, d.body_part, d.spacing)

    def decode_all(self, items: list[Item], timings: dict[str, float]) -> tuple[list[Decoded], list[dict]]:
        """The items decoded, and a reason row (status 'error') for each one that could not be."""
        decoded, failed = [], []
        for item in items:
            try:
                decoded.append(self.decode(item, timings))
            except EngineError as error:
                failed.append(_row(item, status=ERROR, status_reason=f"{type(error).__name__}: {error}"))
            except Exception as error:  # a decoder bug must not take the shard down with it
                failed.append(_row(item, status=ERROR,
                                   status_reason=f"unexpected error while decoding ({short_reason(error)})"))
        return decoded, failed



class Analyser(Decoder):
    """One worker's model and decoder sandbox, loaded once and used for many batches of items."""

    def __init__(self, options: Options):
        if options.task not in batch_tasks():
            raise EngineError(f"batch runs do {', '.join(batch_tasks())}; not {options.task!r}")
        super().__init__(options)
        self.task = _TaskModel(options)

    def infer(self, decoded: list[Decoded], timings: dict[str, float]) -> list[dict]:
        """One row per decoded image, `batch_size` images per forward."""
        rows = []
        for start in range(0, len(decoded), self.options.batch_size):
            batch = decoded[start:start + self.options.batch_size]
            for d, values in zip(batch, self.task.rows(batch, timings)):
                rows.append(_row(d.item, input_sha256=_input_hash(d.gray, d.modality, d.body_part, d.spacing),
                                 modality=d.modality, body_part=d.body_part, rows=d.gray.shape[-2],
                                 cols=d.gray.shape[-1], **values))
        return rows

    def analyse(self, items: list[Item], timings: dict[str, float] | None = None) -> list[dict]:
        """One row per item, in the items' order; an unreadable item gives a reason row (status 'error')."""
        timings = {} if timings is None else timings
        rows = {}
        for start in range(0, len(items), self.options.batch_size):
            decoded, failed = self.decode_all(items[start:start + self.options.batch_size], timings)
            rows.update({r["item"]: r for r in failed + self.infer(decoded, timings)})
        return [rows[item.index] for item in items]


def _row(item: Item, **values) -> dict:
    return {**dict.fromkeys(COLUMNS), "shard": item.shard, "item": item.index, **values}
