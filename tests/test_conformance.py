"""Every DICOM object RadLens writes passes dicom3tools' dciodvfy with no error its source did not have:
the stored de-identified copy of every real DICOM in pydicom-data, a DICOM SEG export, the demo's
ultrasound wrapper. `make test` installs dicom3tools from Debian when it can (like chromium)."""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from engine.cases.ingest import ingest_files, prepare_here
from engine.config import Limits
from engine.errors import EngineError
from engine.tasks.segmentation import seg_dicom
from engine.writers.wrap import ultrasound_dicom, volume_dicom

pytestmark = pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) is not "
                                "installed; `make test` installs it when run as root")
KEY = bytes(range(32))


def _real_dicoms() -> list[Path]:
    folder = Path(get_testdata_file("CT_small.dcm")).parent  # pydicom's own test files ...
    store = Path(get_testdata_file("693_J2KR.dcm")).parent  # ... and pydicom-data's
    return sorted({p for d in (folder, store) for p in d.glob("*.dcm")})


def dciodvfy_errors(path: Path) -> set[str]:
    run = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60)
    return {re.sub(r"\s+", " ", line) for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")}


@pytest.mark.slow
def test_stored_copies_of_every_real_dicom_add_no_conformance_error(tmp_path):
    checked, new = 0, {}
    for source in _real_dicoms():
        try:
            prepared = prepare_here(source.read_bytes(), KEY, Limits())
        except EngineError:
            continue  # refused files are not written (test_ingest covers why)
        if prepared.extension != "dcm":
            continue
        stored = tmp_path / source.name
        stored.write_bytes(prepared.stored_bytes)
        added = dciodvfy_errors(stored) - dciodvfy_errors(source)
        if added:
            new[source.name] = sorted(added)
        checked += 1
    assert checked >= 60, checked  # the whole corpus, not a lucky few
    assert not new, new


def test_a_dicom_seg_export_and_the_ultrasound_wrapper_have_no_conformance_error(ctx, config, store, tmp_path):
    for name in ("CT_small.dcm", "US1_UNCR.dcm"):
        [result] = ingest_files([(name, Path(get_testdata_file(name)).read_bytes())], ctx)
        image = store.row("images", result.image_id)
        mask = np.zeros((image["rows"], image["cols"]), bool)
        mask[10:30, 10:40] = True
        seg = tmp_path / f"seg-{name}"
        seg.write_bytes(seg_dicom(config, image, mask, "hc18-unet", "1.0.0"))
        assert dciodvfy_errors(seg) == set(), name
    wrapped = tmp_path / "us.dcm"
    wrapped.write_bytes(ultrasound_dicom(np.zeros((64, 80), np.uint8), 0.1, "fetal head"))
    assert dciodvfy_errors(wrapped) == set()


def test_volumes_stored_as_multiframe_dicom_have_no_conformance_error(tmp_path):
    """A NumPy or NIfTI upload is stored as a Multi-frame Grayscale Byte Secondary Capture, as are the demo's
    adrenal volumes: both as written and after the de-identifying ingest."""
    import io

    volume = np.zeros((10, 24, 20), np.uint8)
    volume[3:7, 5:15, 4:12] = 255
    array = io.BytesIO()
    np.save(array, volume)
    written = {"demo.dcm": volume_dicom(volume, (1.0, 1.0, 1.0), "Adrenal gland shape mask", "ADRENAL"),
               "unknown-spacing.dcm": volume_dicom(volume, None, "Volume")}
    written["npy-stored.dcm"] = prepare_here(array.getvalue(), KEY, Limits()).stored_bytes
    written["demo-stored.dcm"] = prepare_here(written["demo.dcm"], KEY, Limits()).stored_bytes
    for name, data in written.items():
        (tmp_path / name).write_bytes(data)
        assert dciodvfy_errors(tmp_path / name) == set(), name
