"""Demo studies seeded on first start: real DICOMs from pydicom-data, real chest X-ray JPEGs and real fetal
head ultrasounds (HC18 test split: three PNGs, and one wrapped as a US DICOM with its pixel size)."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
from pydicom.data import get_testdata_file

from engine.cases.ingest import IngestResult, ingest_files
from engine.config import Config
from engine.context import Context
from engine.io.wrap import ultrasound_dicom

__all__ = ["DEMO_DICOMS", "demo_files", "seed_demo"]

# Chest CR (MONOCHROME1), leg CR, CT (JPEG 2000), MR (JPEG 2000), US (colour), multi-frame MR.
DEMO_DICOMS = ("RG1_UNCR.dcm", "RG3_UNCR.dcm", "693_J2KR.dcm", "MR2_J2KR.dcm", "US1_J2KR.dcm", "emri_small.dcm")
_FULLRES = "cxr_pneumonia_fullres"
_FULLRES_DESCRIPTION = "Pediatric chest X-ray (Kermany 2018, demo)"
_HC18 = "hc18"
_HC18_DESCRIPTION = "Fetal head ultrasound (HC18, demo)"
_HC18_N = 4  # test-split images; the last is wrapped as DICOM


def _hc18_items(config: Config) -> list[tuple[str, bytes]]:
    folder = config.data_dir / _HC18 if config.data_dir else None
    if folder is None or not (folder / "manifest.csv").is_file():
        return []
    with open(folder / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"][:_HC18_N]
    items = [(Path(r["image"]).name, (folder / r["image"]).read_bytes()) for r in rows[:-1]]
    last = rows[-1]
    gray = cv2.imread(str(folder / last["image"]), cv2.IMREAD_GRAYSCALE)
    items.append((Path(last["image"]).stem + ".dcm", ultrasound_dicom(gray, float(last["pixel_size_mm"]),
                                                                      _HC18_DESCRIPTION)))
    return items


def demo_files(config: Config) -> list[Path]:
    files = [Path(get_testdata_file(name)) for name in DEMO_DICOMS]
    if config.data_dir and (config.data_dir / _FULLRES).is_dir():
        files += sorted((config.data_dir / _FULLRES).glob("*.jpeg"))
    return files


def seed_demo(ctx: Context) -> list[IngestResult]:
    """Ingest the demo studies once per home folder (a second call does nothing)."""
    if ctx.store.setting("demo_seeded"):
        return []
    files = demo_files(ctx.config)
    results = ingest_files(((p.name, p.read_bytes()) for p in files), ctx, source="demo")
    heads = ingest_files(_hc18_items(ctx.config), ctx, source="demo")
    # PNGs and JPEGs carry no header: say what the dataset's README says they are, so the worklist is readable.
    films = [r.case_id for p, r in zip(files, results) if p.parent.name == _FULLRES and r.status == "ok"]
    described = [(c, {"body_part": "CHEST", "study_description": _FULLRES_DESCRIPTION}) for c in films]
    described += [(r.case_id, {"modality": "US", "body_part": "HEAD", "study_description": _HC18_DESCRIPTION})
                  for r in heads if r.status == "ok"]
    with ctx.store.write() as db:
        for case_id, fields in described:
            db["cases"].update(case_id, fields)
            db.execute(f"UPDATE images SET {', '.join(f'{k} = ?' for k in fields)} WHERE case_id = ?",
                       [*fields.values(), case_id])
        db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('demo_seeded', '1')")
    return results + heads
