"""Every registered task through every path a result takes, with its shipped model: a study pushed to the DICOM
listener and analysed by the routing job, the task's page, the CLI, a batch run that lands its cases, the PDF
report and the DICOM export. A task registered without one of these paths fails here, and so does a task without
a study below (the routing job once had no sequence entry: a pushed volume failed the whole analysis job)."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import time

import pydicom
import pytest

from engine.batch.run import BatchRequest, run_batch, start_batch
from engine.cases.report import case_report
from engine.cases.results import result_objects
from engine.config import Config, DicomSettings
from engine.context import Context, User
from engine.jobs.queue import get_job
from engine.models.installed import find_model
from engine.pacs.listener import Listener
from engine.pacs.nodes import PacsNode, save_credentials, save_node
from engine.store import open_store
from engine.tasks import TASKS, get_task, task_names
from tests import orthanc as pacs
from tests.conftest import DATA_DIR, needs_data
from tests.test_conformance import dciodvfy_errors

pytestmark = [
    pytest.mark.xdist_group("task-paths-pushed"),
    pytest.mark.slow,
    pytest.mark.skipif(pacs.ORTHANC is None or not pacs.DICOMWEB_PLUGIN.is_file(),
                       reason="Orthanc and orthanc-dicomweb are not installed (make test installs them as root)"),
    pytest.mark.skipif(shutil.which("dciodvfy") is None or shutil.which("pdftotext") is None,
                       reason="dciodvfy (dicom3tools) and pdftotext (poppler-utils) are not installed"),
    needs_data,
]


def _adrenal_volume(config: Config) -> list[bytes]:
    """A shipped-model-scope volume: an AdrenalMNIST3D test mask (modality SEG, body part ADRENAL)."""
    from engine.cases.demo import _adrenal_items
    from engine.writers.wrap import encoded

    ds = pydicom.dcmread(io.BytesIO(_adrenal_items(config)[0][1]))
    ds.Modality = "SEG"
    return [encoded(ds)]


# task -> one study (DICOM files) inside its shipped model's scope. A new task adds its study here.
STUDIES = {
    "classification": lambda config: pacs.chest_study(),
    "segmentation": lambda config: [pacs.head_study()],
    "sequence": _adrenal_volume,
}


def test_every_registered_task_has_a_study_and_a_page():
    from dashboard.registry import PAGES

    assert sorted(STUDIES) == sorted(task_names())
    assert {t.analysis.page for t in TASKS.values()} <= {p.script for p in PAGES}


def _wait(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found := predicate():
            return found
        time.sleep(0.3)
    raise AssertionError(f"{what} after {seconds:.0f} s")


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """A home whose listener took Orthanc's push of one study per task; the routing job has run. Yields
    (ctx, {task: case id})."""
    home = tmp_path_factory.mktemp("paths")
    listener_port = pacs.free_port()
    server = pacs.Orthanc("RADLENS", listener_port)
    config = Config(home=home / "home", data_dir=DATA_DIR,
                    dicom=DicomSettings(port=listener_port, quiet_seconds=1.0, timeout_seconds=10))
    ctx = Context(config, open_store(config), User("cli:test", "test", "system"))
    save_node(ctx, PacsNode("orthanc", server.dicomweb, pacs.AE_TITLE, "127.0.0.1", server.dicom_port))
    save_credentials(ctx, "orthanc", pacs.USER, pacs.PASSWORD)
    listener = Listener(ctx).start(port=listener_port)
    cases = {}
    try:
        for task in task_names():
            files = STUDIES[task](config)
            for data in files:
                server.upload(data)
            uid = pydicom.dcmread(io.BytesIO(files[0]), stop_before_pixels=True).StudyInstanceUID
            [found] = server.rest("POST", "/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": uid}})
            server.rest("POST", "/modalities/radlens/store", {"Resources": [found], "Synchronous": True})
            with ctx.store.read() as db:
                cases[task] = db.execute("SELECT max(id) FROM cases").fetchone()[0]
        assert len(set(cases.values())) == len(cases), f"each push is its own case: {cases}"

        def routed():
            with ctx.store.read() as db:
                rows = db.execute("SELECT job_id FROM arrivals WHERE routed_at IS NOT NULL").fetchall()
            return rows if len(rows) == len(cases) else None

        for job_id in {r[0] for r in _wait(routed, 60, "the pushed studies were not all routed")}:
            assert job_id, "a pushed study in a model's scope was not routed to it"
            job = _wait(lambda: (j := get_job(ctx.store, job_id)) and not j.active and j, 300, f"job {job_id} runs")
            assert job.status == "finished", job.error
    finally:
        listener.stop()
        server.stop()
    yield ctx, cases


def _latest(ctx: Context, task, case_id: int) -> dict | None:
    with ctx.store.read() as db:
        rows = list(db.query(f"SELECT * FROM {task.analysis.table} WHERE case_id = ? ORDER BY id DESC", [case_id]))
    return next((r for r in rows if task.analysis.owns(r)), None)


def _headline(ctx: Context, task, row: dict) -> str:
    return task.analysis.report(row, find_model(ctx.config, row["model_name"]).card)[0].text


@pytest.mark.parametrize("name", task_names())
def test_a_pushed_study_is_routed_to_its_task_and_analysed(pushed, name):
    ctx, cases = pushed
    row = _latest(ctx, get_task(name), cases[name])
    assert row is not None and row["status"] == "analysed", (name, row and row["status_reason"])


def _words(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@pytest.mark.parametrize("name", task_names())
def test_the_pdf_report_shows_the_result(pushed, name, tmp_path):
    ctx, cases = pushed
    task = get_task(name)
    (tmp_path / "r.pdf").write_bytes(case_report(ctx, [cases[name]]))
    text = _words(subprocess.run(["pdftotext", "-layout", str(tmp_path / "r.pdf"), "-"], capture_output=True,
                                 text=True, check=True).stdout)
    assert "cannot be reported" not in text and "Not analysed" not in text
    assert _words(_headline(ctx, task, _latest(ctx, task, cases[name]))) in text
    assert "Held-out test split" in text and "For research use only" in text


@pytest.mark.parametrize("name", task_names())
def test_the_dicom_export_passes_dciodvfy(pushed, name, tmp_path):
    ctx, cases = pushed
    objects = result_objects(ctx, cases[name])
    assert objects[0].kind == "sr"
    for obj in objects:
        path = tmp_path / obj.filename
        path.write_bytes(obj.data)
        assert dciodvfy_errors(path) == set(), (name, obj.kind)
    sr = pydicom.dcmread(io.BytesIO(objects[0].data))
    assert "RadLens" in str(sr.get("ContentSequence", "")) or sr.Manufacturer == "RadLens"


@pytest.mark.parametrize("name", task_names())
def test_the_cli_analyses_the_case(pushed, name, monkeypatch, capsys):
    from engine.__main__ import main

    ctx, cases = pushed
    monkeypatch.setenv("RADLENS_HOME", str(ctx.config.home))
    assert main(["analyse", "--task", name, str(cases[name]), "--json"]) == 0
    [line] = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert line["status"] == "analysed" and line["task"] == name and line["result"]


@pytest.mark.parametrize("name", task_names())
def test_a_batch_run_analyses_the_files_and_lands_them_as_cases(name, ctx, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for n, data in enumerate(STUDIES[name](ctx.config)):
        (folder / f"{n}.dcm").write_bytes(data)
    summary = run_batch(ctx, start_batch(ctx, BatchRequest(str(folder), task=name, workers=1, cases=True),
                                         background=False))
    with ctx.store.read() as db:
        statuses = [r[0] for r in db.execute("SELECT status FROM batch_results")]
        [case_id] = [r[0] for r in db.execute("SELECT DISTINCT case_id FROM batch_results")]
    assert statuses and set(statuses) == {"analysed"}, summary
    row = _latest(ctx, get_task(name), case_id)
    assert row is not None and row["status"] == "analysed"


@pytest.mark.parametrize("name", task_names())
def test_the_page_analyses_the_case_it_opens_on(pushed, name, monkeypatch):
    import streamlit as st

    from tests.test_pages import _run

    ctx, cases = pushed
    task = get_task(name)
    monkeypatch.setenv("RADLENS_HOME", str(ctx.config.home))
    st.cache_resource.clear()
    before = _latest(ctx, task, cases[name])["id"]
    try:
        at = _run(task.analysis.page)
    finally:
        st.cache_resource.clear()
    after = _latest(ctx, task, cases[name])
    assert after["id"] > before and after["status"] == "analysed", [e.value for e in at.error]
