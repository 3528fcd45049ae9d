"""The model card as a typed, frozen value: what a weights file says about itself.

A card travels inside the safetensors header and as a JSON file beside it. `from_dict` reads every card
written so far (format version 1); keys it does not know are kept in `extra` and written back, so a card
read and saved again loses nothing. Task-specific parts (a classifier's calibration, operating point and
OOD gate; a segmentation model's measurement rule) are None for the other tasks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields

from engine.errors import BadCheckpoint

__all__ = ["FORMAT_VERSION", "ModelCard"]

FORMAT_VERSION = 1
_OPTIONAL = ("scope", "calibration", "operating_point", "ood", "measurement", "postprocessing", "evaluation_command",
             "weights_file", "weights_sha256")


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: str
    task: str  # a key of engine.tasks.TASKS
    arch: str  # a registered architecture
    labels: list[str]
    preprocessing: dict  # Preprocessing.to_dict()
    model_args: dict = field(default_factory=dict)
    positive_label: str = ""
    metrics: dict = field(default_factory=dict)  # split -> the task's report
    data: dict = field(default_factory=dict)  # dataset, description, counts, reviews used
    training: dict = field(default_factory=dict)  # command, hardware, time, optimizer, ...
    limitations: list[str] = field(default_factory=list)
    cam: dict = field(default_factory=dict)  # the default explanation: method, layer, target
    scope: dict | None = None  # what it was trained on (engine.models.scope.Scope.to_dict); abstains outside
    calibration: dict | None = None  # classification: engine.metrics.Calibrator.to_card()
    operating_point: dict | None = None  # classification: {"threshold": t, "rule": ...}
    ood: dict | None = None  # classification: {"threshold": d, "layer": ..., "rule": ...}
    measurement: dict | None = None  # segmentation: the boundary offset and how it was fitted
    postprocessing: str | None = None  # segmentation: mask clean-up and measurement, in words
    evaluation_command: str | None = None
    weights_file: str | None = None  # only in the JSON copy beside the weights
    weights_sha256: str | None = None  # ... likewise
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept as they were

    @classmethod
    def from_dict(cls, data: dict) -> ModelCard:
        known = {f.name for f in fields(cls)} - {"extra"}
        missing = [k for k in ("name", "version", "task", "arch", "labels", "preprocessing") if k not in data]
        if missing:
            raise BadCheckpoint(f"the model card lacks {', '.join(missing)}: the weights file is incomplete")
        return cls(**{k: v for k, v in data.items() if k in known},
                   extra={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        for key in _OPTIONAL:
            if out[key] is None:
                del out[key]
        return {**out, **self.extra}

    def replace(self, **changes) -> ModelCard:
        return dataclasses.replace(self, **changes)

    @property
    def test_metrics(self) -> dict | None:
        """The held-out test split's report, when the card has one."""
        return self.metrics.get("test") or None
