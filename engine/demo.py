"""Demo studies seeded on first start: real DICOMs from pydicom-data and real chest X-ray JPEGs."""

from __future__ import annotations

from pathlib import Path

from pydicom.data import get_testdata_file

from engine.config import Config
from engine.ingest import IngestResult, ingest_files
from engine.store import Store

__all__ = ["DEMO_DICOMS", "demo_files", "seed_demo"]

# Chest CR (MONOCHROME1), leg CR, CT (JPEG 2000), MR (JPEG 2000), US (colour), multi-frame MR.
DEMO_DICOMS = ("RG1_UNCR.dcm", "RG3_UNCR.dcm", "693_J2KR.dcm", "MR2_J2KR.dcm", "US1_J2KR.dcm", "emri_small.dcm")
_FULLRES = "cxr_pneumonia_fullres"
_FULLRES_DESCRIPTION = "Pediatric chest X-ray (Kermany 2018, demo)"


def demo_files(config: Config) -> list[Path]:
    files = [Path(get_testdata_file(name)) for name in DEMO_DICOMS]
    if config.data_dir and (config.data_dir / _FULLRES).is_dir():
        files += sorted((config.data_dir / _FULLRES).glob("*.jpeg"))
    return files


def seed_demo(config: Config, store: Store) -> list[IngestResult]:
    """Ingest the demo studies once per home folder (a second call does nothing)."""
    if store.setting("demo_seeded"):
        return []
    files = demo_files(config)
    results = ingest_files(((p.name, p.read_bytes()) for p in files), config, store, source="demo")
    # JPEGs carry no header: say what the dataset's README says they are, so the worklist is readable.
    films = [r.case_id for p, r in zip(files, results) if p.parent.name == _FULLRES and r.status == "ok"]
    with store.write() as db:
        for case_id in films:
            db["cases"].update(case_id, {"body_part": "CHEST", "study_description": _FULLRES_DESCRIPTION})
            db.execute("UPDATE images SET body_part = 'CHEST', study_description = ? WHERE case_id = ?",
                       [_FULLRES_DESCRIPTION, case_id])
        db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('demo_seeded', '1')")
    return results
