"""Peak memory of the serving process on a hostile upload, before and after decoding moved to a capped
child (issue #15): a Deflated DICOM of ~0.4 MB whose dataset inflates to 400 MiB.

before: what ingest did until then, pydicom.dcmread of the upload in the serving process;
after: ingest_files, which inflates under a cap in the decoder child and refuses the file.
Each in a fresh interpreter; peak RSS (ru_maxrss) of that process and, after, of its child. Also the
cost of the sandbox on a normal file (CT_small.dcm): prepare() through the child vs in process.

Run: python -m bench.hostile
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from bench.common import report

ROOT = Path(__file__).resolve().parent.parent
INFLATED_MIB = 400

_COMMON = rf"""
import io, json, re, resource, sys, tempfile, time
from pathlib import Path
from tests.hostile import deflate_bomb
bomb = deflate_bomb({INFLATED_MIB} << 20)
def peak():  # this process's own high-water mark (ru_maxrss would include the parent's, inherited over fork)
    return round(int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read())[1]) / 1024, 1)
"""
_BEFORE = _COMMON + """
import pydicom
start = peak()
try:
    pydicom.dcmread(io.BytesIO(bomb)).PixelData
    outcome = "read"
except Exception as exc:
    outcome = type(exc).__name__
print(json.dumps({"upload_kib": len(bomb) // 1024, "outcome": outcome, "server_peak_mib": peak(),
                  "server_before_mib": start}))
"""
_AFTER = _COMMON + """
from engine.cases.ingest import ingest_files, prepare, prepare_here
from engine.io.sandbox import close_all
from engine.config import Config
from engine.context import Context
from tests.conftest import dicom_bytes
ctx = Context.open(Config(home=Path(tempfile.mkdtemp()), data_dir=None))
start = peak()
[result] = ingest_files([("bomb.dcm", bomb)], ctx)
ct, key = dicom_bytes("CT_small.dcm"), bytes(32)
def median_ms(fn, n=30):
    times = []
    for _ in range(n):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return round(sorted(times)[n // 2] * 1000, 2)
sandboxed = median_ms(lambda: prepare(ct, key, ctx.config))
in_process = median_ms(lambda: prepare_here(ct, key, ctx.config.limits))
server_peak = peak()
close_all()  # the child's peak is known once it has ended
print(json.dumps({"upload_kib": len(bomb) // 1024, "outcome": result.error, "server_peak_mib": server_peak,
                  "server_before_mib": start,
                  "decoder_child_peak_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
                  "ct_small_prepare_ms": {"sandboxed": sandboxed, "in_process": in_process}}))
"""


def _run(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    before, after = _run(_BEFORE), _run(_AFTER)
    report("hostile", {"inflated_mib": INFLATED_MIB, "before": before, "after": after,
                       "server_peak_ratio_before_over_after": round(before["server_peak_mib"] /
                                                                    after["server_peak_mib"], 2)})


if __name__ == "__main__":
    main()
