"""The command line: ingest exit codes and JSON lines; render writes exactly the viewer's image."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.io import read_study, render
from engine.io.study import Window
from tests.conftest import dicom_bytes, dicom_path

ROOT = Path(__file__).resolve().parent.parent


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RADLENS_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)


@pytest.mark.slow
def test_ingest_reports_each_file_and_exits_1_when_any_failed(tmp_path):
    folder = tmp_path / "batch"
    folder.mkdir()
    (folder / "ct.dcm").write_bytes(dicom_bytes("CT_small.dcm"))
    (folder / "broken.dcm").write_bytes(dicom_bytes("CT_small.dcm")[:3000])
    run = _cli(tmp_path / "home", "ingest", str(folder), "--json")
    assert run.returncode == 1
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    by_name = {Path(r["file"]).name: r for r in lines}
    assert by_name["ct.dcm"]["status"] == "ok" and by_name["ct.dcm"]["case_id"] == 1
    assert by_name["broken.dcm"]["status"] == "error" and by_name["broken.dcm"]["error"]
    again = _cli(tmp_path / "home", "ingest", str(folder / "ct.dcm"))
    assert again.returncode == 0 and again.stdout.startswith("duplicate")


def test_render_writes_the_viewer_image(tmp_path):
    out = tmp_path / "ct.png"
    run = _cli(tmp_path / "home", "render", str(dicom_path("CT_small.dcm")), "--window", "40,400", "--out",
               str(out), "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    expected = render(read_study(dicom_bytes("CT_small.dcm")), window=Window(40, 400)).image
    assert np.array_equal(np.asarray(Image.open(out)), expected)
    assert report["steps"][0].startswith("Modality LUT") and report["fields"]["modality"] == "CT"
    assert report["shape"] == [128, 128] and "mm" in report["spacing"]


def test_render_of_a_bad_file_is_one_line_error(tmp_path):
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"nothing")
    run = _cli(tmp_path / "home", "render", str(bad), "--out", str(tmp_path / "x.png"))
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
