"""Seeded mutation fuzzing over real DICOM/PNG/JPEG files: only EngineErrors, no hang, store unchanged."""

import io
import random
import struct
import time

import numpy as np
import pydicom
from PIL import Image

from engine.cases.ingest import ingest_files
from tests.conftest import DATA_DIR, dicom_bytes, store_snapshot

SEED = 20261121
N_MUTANTS = 520
MAX_SECONDS = 5.0


def _seeds() -> list[bytes]:
    png8, png16, jpeg = io.BytesIO(), io.BytesIO(), io.BytesIO()
    ramp = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)
    Image.fromarray(ramp).save(png8, format="PNG")
    Image.fromarray(ramp.astype(np.uint16) * 500).save(png16, format="PNG")
    Image.fromarray(ramp).save(jpeg, format="JPEG")
    files = [dicom_bytes(n) for n in ("CT_small.dcm", "MR_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm",
                                      "MR_small_jp2klossless.dcm", "OBXXXX1A_rle.dcm", "SC_rgb_jpeg_dcmtk.dcm")]
    if DATA_DIR:  # a real chest X-ray JPEG when the shared data is there
        files.append(next((DATA_DIR / "cxr_pneumonia" / "train" / "normal").glob("*.jpg")).read_bytes())
    return files + [png8.getvalue(), png16.getvalue(), jpeg.getvalue()]


def _oversize(data: bytes, rng: random.Random) -> bytes:
    if data[:8] == b"\x89PNG\r\n\x1a\n":  # IHDR width/height
        return data[:16] + struct.pack(">II", rng.choice([65535, 1 << 20]), rng.choice([65535, 1 << 20])) + data[24:]
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.Rows, ds.Columns = rng.choice([(65535, 65535), (40000, 1), (1, 0)])
        if rng.random() < 0.5:
            ds.NumberOfFrames = rng.choice([100000, 0, 3])
        out = io.BytesIO()
        ds.save_as(out)
        return out.getvalue()
    except Exception:  # not a DICOM (JPEG): fall back to a bit flip
        return _flip(data, rng)


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(0, len(data))]


def _flip(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 24)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def _length_field(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    at = rng.randrange(0, min(len(out) - 4, 2048))
    out[at:at + 4] = rng.choice([b"\xff\xff\xff\xff", b"\xf0\xff\xff\x7f", struct.pack("<I", rng.randrange(1 << 32))])
    return bytes(out)


MUTATORS = (_truncate, _flip, _length_field, _oversize)


def test_mutants_fail_cleanly_and_leave_the_store_unchanged(ctx, config, store):
    rng = random.Random(SEED)
    seeds = _seeds()
    kinds: dict[str, int] = {}
    for i in range(N_MUTANTS):
        mutator = MUTATORS[i % len(MUTATORS)]
        mutant = mutator(seeds[rng.randrange(len(seeds))], rng)
        before = store_snapshot(config)
        started = time.monotonic()
        result = ingest_files([(f"mutant{i}", mutant)], ctx)  # any non-EngineError propagates
        elapsed = time.monotonic() - started
        assert elapsed < MAX_SECONDS, f"mutant {i} ({mutator.__name__}) took {elapsed:.1f}s"
        for r in result:
            if r.status == "error":
                kinds[r.error.split(":")[0]] = kinds.get(r.error.split(":")[0], 0) + 1
                assert "\n" not in r.error
        if all(r.status == "error" for r in result):
            assert store_snapshot(config) == before, f"mutant {i} ({mutator.__name__}) changed the store"
    assert sum(kinds.values()) > N_MUTANTS // 2  # the mutations really do break most files
