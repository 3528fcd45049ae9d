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


def demo_files(config: Config) -> list[Path]:
    files = [Path(get_testdata_file(name)) for name in DEMO_DICOMS]
    if config.data_dir and (config.data_dir / _FULLRES).is_dir():
        files += sorted((config.data_dir / _FULLRES).glob("*.jpeg"))
    return files


def seed_demo(config: Config, store: Store) -> list[IngestResult]:
    """Ingest the demo studies once per home folder (a second call does nothing)."""
    if store.setting("demo_seeded"):
        return []
    results = ingest_files(((p.name, p.read_bytes()) for p in demo_files(config)), config, store, source="demo")
    with store.write() as db:
        db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('demo_seeded', '1')")
    return results
