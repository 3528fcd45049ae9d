"""Hostile files cannot take the server down: decoding runs in a capped child process, every codec's own
size header is checked before decoding, a deflated dataset is inflated under a cap. Each fails alone,
with one line, and the rest of the batch lands."""

import io
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.cases.ingest import ingest_files
from engine.config import Config, Limits
from engine.context import Context
from engine.errors import UnreadableStudy
from engine.io.sandbox import Sandbox
from tests.conftest import dicom_bytes, store_snapshot
from tests.hostile import lying_frame_header

ROOT = Path(__file__).resolve().parent.parent

# Runs in a fresh interpreter, as the server would: a 600 MiB deflate bomb next to a good file.
_SERVER = textwrap.dedent("""
    import json, re, sys
    from pathlib import Path
    from engine.cases.ingest import ingest_files
    from engine.config import Config
    from engine.context import Context
    from tests.conftest import dicom_bytes
    from tests.hostile import deflate_bomb
    bomb = deflate_bomb(600 << 20)
    ctx = Context.open(Config(home=Path(sys.argv[1]), data_dir=None))
    results = ingest_files([("bomb.dcm", bomb), ("ct.dcm", dicom_bytes("CT_small.dcm"))], ctx)
    # this process's own high-water mark (ru_maxrss would include the parent's, inherited over fork)
    peak = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read())[1]) / 1024
    print(json.dumps({"upload_kib": len(bomb) // 1024, "errors": [r.error for r in results],
                      "ok": [r.ok for r in results], "server_peak_mib": peak}))
""")


def test_a_deflate_bomb_fails_alone_and_the_serving_process_stays_small(tmp_path):
    run = subprocess.run([sys.executable, "-c", _SERVER, str(tmp_path / "home")], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["upload_kib"] < 1024 and report["ok"] == [False, True]
    assert report["errors"][0].startswith("TooLarge: the deflated dataset inflates to more than 512 MiB")
    assert report["server_peak_mib"] < 400, report  # the bomb's 600 MiB never reached this process


def _big_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((9000, 9000), np.uint16)).save(buffer, format="PNG")  # 162 MB decoded, ~0.3 MB file
    return buffer.getvalue()


def test_a_file_over_the_decoder_memory_cap_fails_alone_and_the_next_file_lands(tmp_path):
    limits = Limits(decode_memory_mb=700, max_pixels=200_000_000)
    ctx = Context.open(Config(home=tmp_path / "home", data_dir=None, limits=limits))
    results = ingest_files([("huge.png", _big_png()), ("ct.dcm", dicom_bytes("CT_small.dcm"))], ctx)
    assert [r.status for r in results] == ["error", "ok"]
    assert results[0].error.startswith(("TooLarge: decoding this file needs more than the 700 MiB",
                                        "UnreadableStudy: the decoder stopped on this file (out of memory"))
    assert "\n" not in results[0].error


def test_a_decoder_that_hangs_is_stopped_and_the_next_call_gets_a_fresh_one():
    sandbox = Sandbox(1 << 30, seconds=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(UnreadableStudy, match="took longer than 1 s"):
            sandbox.call(time.sleep, 30)
        assert time.monotonic() - started < 10
        assert sandbox.call(sorted, [3, 1, 2]) == [1, 2, 3]
    finally:
        sandbox.close()


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "emri_small_jpeg_ls_lossless.dcm",
                                  "MR_small_jp2klossless.dcm", "JPEG2000.dcm"])
def test_a_frame_whose_codec_header_claims_more_pixels_than_the_dicom_is_refused_before_decoding(
        ctx, config, name):
    lying = lying_frame_header(dicom_bytes(name))
    assert lying is not None
    before = store_snapshot(config)
    [result] = ingest_files([(name, lying)], ctx)
    assert result.error.startswith("TooLarge: frame 1 declares"), result.error
    assert store_snapshot(config) == before


def test_what_crosses_from_the_decoder_is_plain_data_only():
    from engine.io.wire import WireError, pack, unpack

    value = {"image": np.arange(12, dtype=np.uint16).reshape(3, 4), "stored": b"\x00DICM", "fields": {"n": 1.5},
             "steps": ["a", None, True]}
    back = unpack(b"".join(bytes(p) for p in pack(value)))
    assert back["stored"] == b"\x00DICM" and back["fields"] == {"n": 1.5} and back["steps"] == ["a", None, True]
    assert np.array_equal(back["image"], value["image"]) and back["image"].dtype == np.uint16
    for not_data in (Exception("x"), np.array([object()]), {1: "non-string key"}):
        with pytest.raises(WireError):
            pack(not_data)
    head = json.dumps({"$array": 0, "n": 8, "dtype": "|O", "shape": [1]}).encode()  # a forged object array
    with pytest.raises(WireError, match="do not cross"):
        unpack(len(head).to_bytes(8, "little") + head + bytes(8))
    head = json.dumps({"$bytes": 0, "n": 10**9}).encode()  # a blob longer than the message
    with pytest.raises(WireError, match="past the end"):
        unpack(len(head).to_bytes(8, "little") + head)


def test_the_decoders_named_errors_arrive_as_themselves():
    from engine.errors import UnsupportedFormat
    from engine.io.sniff import detect_format

    sandbox = Sandbox(1 << 30, seconds=30)
    try:
        with pytest.raises(UnsupportedFormat, match="not a DICOM, PNG, JPEG or ZIP"):
            sandbox.call(detect_format, b"plain text, not an image")
        assert sandbox.call(detect_format, dicom_bytes("CT_small.dcm")) == "dicom"
    finally:
        sandbox.close()
