"""Demo studies seeded on first start: real DICOMs from pydicom-data, real chest X-ray JPEGs, real fetal
head ultrasounds (HC18 test split: three PNGs, and one wrapped as a US DICOM with its pixel size) and real
adrenal gland shape volumes (AdrenalMNIST3D test split at 64^3, each a multi-frame DICOM of 64 slices)."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
from pydicom.data import get_testdata_file

from engine.cases.ingest import IngestResult, ingest_files
from engine.config import Config
from engine.context import Context
from engine.writers.wrap import ultrasound_dicom, volume_dicom

__all__ = ["DEMO_DICOMS", "demo_files", "seed_demo"]

# Chest CR (MONOCHROME1), leg CR, CT (JPEG 2000), MR (JPEG 2000), US (colour), multi-frame MR.
DEMO_DICOMS = ("RG1_UNCR.dcm", "RG3_UNCR.dcm", "693_J2KR.dcm", "MR2_J2KR.dcm", "US1_J2KR.dcm", "emri_small.dcm")
_FULLRES = "cxr_pneumonia_fullres"
_FULLRES_DESCRIPTION = "Pediatric chest X-ray (Kermany 2018, demo)"
_HC18 = "hc18"
_HC18_DESCRIPTION = "Fetal head ultrasound (HC18, demo)"
_HC18_N = 4  # test-split images; the last is wrapped as DICOM
_ADRENAL = ("adrenalmnist3d", "adrenalmnist3d_64.npz")
_ADRENAL_DESCRIPTION = "Adrenal gland shape mask (AdrenalMNIST3D, demo)"
_ADRENAL_PICKS = ((1, 2), (0, 1))  # (label, how many): the first of each in the test split
_ADRENAL_VOXEL_MM = 1.0  # a 64 mm cube in 64 voxels (the dataset's README)


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


def _adrenal_items(config: Config) -> list[tuple[str, bytes]]:
    path = config.data_dir / _ADRENAL[0] / _ADRENAL[1] if config.data_dir else None
    if path is None or not path.is_file():
        return []
    with np.load(path) as arrays:
        volumes, labels = arrays["test_images"], arrays["test_labels"].reshape(-1)
        picked = [int(i) for label, n in _ADRENAL_PICKS for i in np.flatnonzero(labels == label)[:n]]
        return [(f"adrenalmnist3d-test-{i}.dcm",
                 volume_dicom(volumes[i], (_ADRENAL_VOXEL_MM,) * 3, _ADRENAL_DESCRIPTION, "ADRENAL"))
                for i in sorted(picked)]


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
    volumes = ingest_files(_adrenal_items(ctx.config), ctx, source="demo")
    # PNGs and JPEGs carry no header: say what the dataset's README says they are, so the worklist is readable.
    films = [r.case_id for p, r in zip(files, results) if p.parent.name == _FULLRES and r.status == "ok"]
    described = [(c, {"body_part": "CHEST", "study_description": _FULLRES_DESCRIPTION}) for c in films]
    described += [(r.case_id, {"modality": "US", "body_part": "HEAD", "study_description": _HC18_DESCRIPTION})
                  for r in heads if r.status == "ok"]
    described += [(r.case_id, {"study_description": _ADRENAL_DESCRIPTION}) for r in volumes if r.status == "ok"]
    with ctx.store.write() as db:
        for case_id, fields in described:
            db["cases"].update(case_id, fields)
            db.execute(f"UPDATE images SET {', '.join(f'{k} = ?' for k in fields)} WHERE case_id = ?",
                       [*fields.values(), case_id])
        db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('demo_seeded', '1')")
    return results + heads + volumes
