"""What a batch worker asks the decoder sandbox (engine.io.sandbox) for one untrusted file: the rendered image
and the header values a model's scope and measurements need. Light on purpose (no torch): the sandbox child
imports it before it says it is ready."""

from __future__ import annotations

from dataclasses import asdict

from engine.config import Limits
from engine.io import read_study, render

__all__ = ["decode_plain"]


def decode_plain(data: bytes, limits: dict) -> dict:
    study = read_study(data, Limits(**limits))
    ds = study.dataset
    header = {key: str(ds.get(key, "") or "").strip().upper() if ds is not None else ""
              for key in ("Modality", "BodyPartExamined")}
    return {"image": render(study).image, "modality": header["Modality"] or "OT",
            "body_part": header["BodyPartExamined"], "spacing": asdict(study.spacing)}
