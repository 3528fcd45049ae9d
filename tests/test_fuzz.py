"""Seeded mutation fuzzing over real files of every codec path (native, deflate, JPEG, JPEG-LS, JPEG 2000,
RLE DICOM; PNG; JPEG; ZIP), with size-lying headers among the mutations: only EngineErrors, no hang, the
store unchanged by a failure, and the serving process's memory flat."""

import io
import random
import re
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from engine.cases.ingest import ingest_files
from engine.config import Config, Limits
from engine.context import Context
from tests.conftest import DATA_DIR, dicom_bytes, store_snapshot
from tests.hostile import deflate_bomb, lying_frame_header

SEED = 20261121
N_MUTANTS = 2000
MAX_SECONDS = 5.0
LIMITS = Limits(max_upload_mb=32)  # a bomb past this limit is quick to build and to refuse
MEMORY_MARGIN_MIB = 100  # what the serving process may grow by over the whole run


def _seeds() -> list[bytes]:
    png8, png16, jpeg = io.BytesIO(), io.BytesIO(), io.BytesIO()
    ramp = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)
    Image.fromarray(ramp).save(png8, format="PNG")
    Image.fromarray(ramp.astype(np.uint16) * 500).save(png16, format="PNG")
    Image.fromarray(ramp).save(jpeg, format="JPEG")
    files = [dicom_bytes(n) for n in ("CT_small.dcm", "MR_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm",
                                      "MR_small_jp2klossless.dcm", "OBXXXX1A_rle.dcm", "SC_rgb_jpeg_dcmtk.dcm",
                                      "image_dfl.dcm", "JPEG2000.dcm", "JPEG-LL.dcm")]
    if DATA_DIR:  # a real chest X-ray JPEG when the shared data is there
        files.append(next((DATA_DIR / "cxr_pneumonia" / "train" / "normal").glob("*.jpg")).read_bytes())
    files += [png8.getvalue(), png16.getvalue(), jpeg.getvalue()]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a/ct.dcm", files[0])
        z.writestr("b/ramp.png", png8.getvalue())
    return files + [archive.getvalue(), deflate_bomb((LIMITS.max_upload_mb + 8) << 20)]


def _deflated(data: bytes) -> bool:
    # read from the meta group only: parsing a deflated file here would inflate it in the test process
    return b"1.2.840.10008.1.2.1.99" in data[:1024]


def _oversize(data: bytes, rng: random.Random) -> bytes:
    if _deflated(data):
        return _flip(data, rng)
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


def _lying_size(data: bytes, rng: random.Random) -> bytes:
    """A size field that promises more than the file holds, for whichever format this is: a compressed
    frame's own header (JPEG SOF, JPEG-LS SOF55, JPEG 2000 SIZ), the RLE segment table, a JPEG's SOF, a
    zip member's declared size, a deflated dataset's element length."""
    huge = rng.choice([65535, 1 << 20, 0x7FFFFFFF])
    if data[:2] == b"PK":
        out = bytearray(data)  # uncompressed size in the local headers and the central directory
        declared = struct.pack("<I", rng.choice([huge, 0xFFFFFFF0]))
        for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
            for at in [m.start() for m in re.finditer(signature, data)]:
                out[at + offset:at + offset + 4] = declared
        return bytes(out)
    if data[:3] == b"\xff\xd8\xff":
        at = next((m.start() for m in re.finditer(b"\xff[\xc0\xc1\xc2]", data)), None)
        return data if at is None else data[:at + 5] + struct.pack(">HH", 65535, 65535) + data[at + 9:]
    if _deflated(data):
        return deflate_bomb(rng.choice([1, 2, 3]) * (LIMITS.max_upload_mb << 20))
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        syntax = ds.file_meta.TransferSyntaxUID
    except Exception:
        return _oversize(data, rng)
    if syntax == "1.2.840.10008.1.2.5":  # RLE: a segment offset far past the frame
        out = bytearray(data)
        at = data.find(b"\x40\x00\x00\x00", data.find(b"\xfe\xff\x00\xe0", len(data) // 2 - 64 or 0))
        if at > 0:
            out[at + 4:at + 8] = struct.pack("<I", huge)
        return bytes(out)
    if syntax.is_encapsulated:
        return lying_frame_header(data, rng.choice([4097, 60000]), rng.choice([4097, 60000])) or data
    return _oversize(data, rng)


MUTATORS = (_truncate, _flip, _length_field, _oversize, _lying_size)


def _resident_mib(field: str) -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1)) / 1024


@pytest.mark.slow
def test_mutants_fail_cleanly_leave_the_store_unchanged_and_the_server_small(tmp_path):
    config = Config(home=tmp_path / "home", data_dir=None, limits=LIMITS)
    ctx = Context.open(config)
    rng = random.Random(SEED)
    seeds = _seeds()
    kinds: dict[str, int] = {}
    Path("/proc/self/clear_refs").write_text("5")  # restart the peak (VmHWM) count from here
    resident = _resident_mib("VmRSS")
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
    assert {"TooLarge", "UnreadableStudy", "UnsafeArchive"} <= set(kinds), kinds
    grew = _resident_mib("VmHWM") - resident
    assert grew < MEMORY_MARGIN_MIB, f"the serving process grew by {grew:.0f} MiB"
