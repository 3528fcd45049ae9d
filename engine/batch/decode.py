"""What a batch worker asks the decoder sandbox (engine.io.sandbox) for one untrusted file: the rendered image
(or a volume's voxels, for a sequence model) and the header values a model's scope and measurements need. Light
on purpose (no torch): the sandbox child imports it before it says it is ready."""

from __future__ import annotations

from dataclasses import asdict

from engine.config import Limits
from engine.io import read_study, render
from engine.io.study import Spacing
from engine.io.volume import read_volume

__all__ = ["decode_plain", "decode_volume", "DECODERS"]


def decode_plain(data: bytes, limits: dict) -> dict:
    study = read_study(data, Limits(**limits))
    ds = study.dataset
    header = {key: str(ds.get(key, "") or "").strip().upper() if ds is not None else ""
              for key in ("Modality", "BodyPartExamined")}
    return {"image": render(study).image, "modality": header["Modality"] or "OT",
            "body_part": header["BodyPartExamined"], "spacing": asdict(study.spacing)}


def decode_volume(data: bytes, limits: dict) -> dict:
    volume = read_volume(data, Limits(**limits))
    spacing = Spacing(*volume.spacing_mm[1:], "volume header") if volume.spacing_mm else Spacing(None, None, "unknown")
    return {"image": volume.voxels, "modality": volume.modality.strip().upper() or "OT",
            "body_part": volume.body_part.strip().upper(), "spacing": asdict(spacing)}


# What a task's batch rows are computed from (its analysis's `batch_input`): a 2-D image or a volume.
DECODERS = {"image": decode_plain, "volume": decode_volume}
