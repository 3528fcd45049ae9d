"""Ingest time: RG1 (7 MB MONOCHROME1 chest CR) alone, and a 50-file batch of real DICOM/JPEG files.

Run: python -m bench.ingest   (each repeat uses a fresh RADLENS_HOME so nothing is a duplicate)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pydicom.data import get_testdata_file

from bench.common import report, summary, timed
from engine.cases.ingest import ingest_files
from engine.config import Config
from engine.context import Context

BATCH_DICOMS = ("RG1_UNCR.dcm", "RG3_UNCR.dcm", "693_J2KR.dcm", "MR2_J2KR.dcm", "US1_J2KR.dcm", "CT_small.dcm",
                "MR_small.dcm", "emri_small.dcm", "OBXXXX1A_rle.dcm", "JPEG-LL.dcm")


def _batch() -> list[tuple[str, bytes]]:
    files = [Path(get_testdata_file(n)) for n in BATCH_DICOMS]
    data_dir = os.environ.get("RADLENS_DATA_DIR")
    if data_dir:
        files += sorted((Path(data_dir) / "cxr_pneumonia" / "train" / "pneumonia").glob("*.jpg"))[:40]
    return [(p.name, p.read_bytes()) for p in files][:50]


def _ingest_times(items: list[tuple[str, bytes]], repeats: int) -> list[float]:
    """Each repeat ingests into its own fresh, already migrated home, so nothing is a duplicate and
    creating the database is not timed."""
    samples = []
    with tempfile.TemporaryDirectory() as root:
        for n in range(repeats):
            config = Config(home=Path(root) / str(n), data_dir=None)
            ctx = Context.open(config)
            [elapsed] = timed(lambda: ingest_files(items, ctx), 1)
            results = ingest_files(items, ctx)
            assert all(r.status == "duplicate" for r in results), [r.error for r in results if not r.ok]
            samples.append(elapsed)
    return samples


def main() -> None:
    rg1 = [("RG1_UNCR.dcm", Path(get_testdata_file("RG1_UNCR.dcm")).read_bytes())]
    batch = _batch()
    report("ingest", {
        "rg1_single_file": summary(_ingest_times(rg1, 7)),
        "batch": {"files": len(batch), "megabytes": round(sum(len(d) for _, d in batch) / 2**20, 1),
                  **summary(_ingest_times(batch, 5))},
        "note": "includes decode, validation, de-identification, JPEG metadata stripping (or PNG "
                "re-encoding), fsync'd file write, DB commit with audit rows; not the database creation",
    })


if __name__ == "__main__":
    main()
