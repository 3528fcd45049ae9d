"""PACS connectivity against a real Orthanc (tests/orthanc.py): echo, find (QIDO-RS and C-FIND), pull
(WADO-RS and C-GET) through the de-identifying ingest, the listener taking pushed studies and routing them
to the models, refusals and failures, and who may do what."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from engine.config import Config, DicomSettings
from engine.context import Context, User
from engine.errors import PacsError, PermissionDenied
from engine.jobs.queue import get_job
from engine.pacs.listener import CANNOT_UNDERSTAND, Listener
from engine.pacs.nodes import PacsNode, save_credentials, save_node
from engine.pacs.studies import pull, search
from engine.pacs.transports import StudyQuery, echo, find
from engine.store import open_store
from engine.writers.wrap import encoded
from tests import orthanc as pacs
from tests.conftest import DATA_DIR, dicom_bytes, needs_data
from tests.orthanc import MARKER, STUDY_UID, chest_study, head_study

pytestmark = [
    pytest.mark.xdist_group("pacs-orthanc"),
    pytest.mark.slow,
    pytest.mark.skipif(pacs.ORTHANC is None or not pacs.DICOMWEB_PLUGIN.is_file(),
                       reason="Orthanc and orthanc-dicomweb are not installed (make test installs them as root)"),
    needs_data,
]

@pytest.fixture(scope="module")
def orthanc():
    listener_port = pacs.free_port()
    server = pacs.Orthanc("RADLENS", listener_port)
    server.listener_port = listener_port
    for data in [*chest_study(), head_study(), dicom_bytes("CT_small.dcm")]:
        server.upload(data)
    yield server
    server.stop()


@pytest.fixture
def pacs_ctx(tmp_path, orthanc) -> Context:
    config = Config(home=tmp_path / "home", data_dir=DATA_DIR,
                    dicom=DicomSettings(port=orthanc.listener_port, quiet_seconds=1.0, timeout_seconds=10))
    ctx = Context(config, open_store(config), User("cli:test", "test", "system"))
    save_node(ctx, PacsNode("orthanc", orthanc.dicomweb, pacs.AE_TITLE, "127.0.0.1", orthanc.dicom_port))
    save_credentials(ctx, "orthanc", pacs.USER, pacs.PASSWORD)
    return ctx


def _node(ctx, **changes) -> PacsNode:
    base = dict(name="orthanc", dicomweb_url="", ae_title=pacs.AE_TITLE, host="127.0.0.1", port=0)
    return PacsNode(**{**base, **changes})


def test_echo_says_ok_or_exactly_what_is_wrong(pacs_ctx, orthanc):
    good = echo(pacs_ctx.config, PacsNode("orthanc", orthanc.dicomweb, pacs.AE_TITLE, "127.0.0.1", orthanc.dicom_port))
    assert good.ok and good.results == {"dimse": "ok", "dicomweb": "ok"}
    wrong_ae = echo(pacs_ctx.config, _node(pacs_ctx, ae_title="NOTORTHANC", port=orthanc.dicom_port))
    assert "rejected the association" in wrong_ae.results["dimse"] and "NOTORTHANC" in wrong_ae.results["dimse"]
    closed = echo(pacs_ctx.config, _node(pacs_ctx, port=pacs.free_port()))
    assert "connection refused" in closed.results["dimse"]
    save_node(pacs_ctx, PacsNode("nopassword", orthanc.dicomweb))
    unauthorised = echo(pacs_ctx.config, PacsNode("nopassword", orthanc.dicomweb))
    assert not unauthorised.ok and "HTTP 401" in unauthorised.results["dicomweb"]


@pytest.mark.parametrize("via", ["dicomweb", "dimse"])
def test_find_by_modality_date_and_accession(pacs_ctx, orthanc, via):
    node = _node(pacs_ctx, dicomweb_url=orthanc.dicomweb, port=orthanc.dicom_port)
    chest = find(pacs_ctx.config, node, StudyQuery(modality="CR"), via)
    assert [m.study_uid for m in chest] == [STUDY_UID]
    assert chest[0].patient_name == f"{MARKER}^Jane" and chest[0].modalities == "CR"  # shown to the user as is
    in_april = find(pacs_ctx.config, node, StudyQuery(date_from="20260401", date_to="20260430"), via)
    assert [m.modalities for m in in_april] == ["US"]
    by_accession = find(pacs_ctx.config, node, StudyQuery(accession=f"{MARKER[:10]}A1"), via)
    assert [m.study_uid for m in by_accession] == [STUDY_UID]
    assert find(pacs_ctx.config, node, StudyQuery(modality="MG"), via) == []
    with pytest.raises(PacsError, match="YYYYMMDD"):
        find(pacs_ctx.config, node, StudyQuery(date_from="2026-04-01"), via)


def _wait_job(ctx, job_id: int, seconds: float = 180):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job = get_job(ctx.store, job_id)
        if not job.active:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job.status} after {seconds} s")


def _assert_no_marker(home):
    for path in (p for p in home.rglob("*") if p.is_file()):
        content = path.read_bytes()
        for needle in (MARKER, STUDY_UID, "Jane", "20260315"):
            assert needle.encode() not in content, f"{needle} found in {path.relative_to(home)}"


@pytest.mark.parametrize("via", ["dicomweb", "dimse"])
def test_a_pulled_study_is_deidentified_routed_and_analysed(pacs_ctx, orthanc, via):
    seen = []
    report = pull(pacs_ctx, "orthanc", STUDY_UID, via, lambda done, total, r: seen.append((done, total, r.status)))
    assert report.error == "" and report.landed == 1 and len(report.case_ids) == 1
    assert seen == [(1, 1, "ok")]  # instance 1 of 1, both ways (C-GET asks the count by C-FIND first)
    job = _wait_job(pacs_ctx, report.job_id)
    assert job.status == "finished", job.error
    with pacs_ctx.store.read() as db:
        case = next(db.query("SELECT source, modality, body_part FROM cases WHERE id = ?", report.case_ids))
        prediction = list(db.query("SELECT status, label FROM predictions WHERE case_id = ?", report.case_ids))
    assert case == {"source": "PACS pull: orthanc", "modality": "CR", "body_part": "CHEST"}
    assert [p["status"] for p in prediction] == ["analysed"] and prediction[0]["label"] in ("normal", "pneumonia")
    _assert_no_marker(pacs_ctx.config.home)


def test_a_study_no_model_applies_to_is_stored_not_analysed(pacs_ctx, orthanc):
    ct = find(pacs_ctx.config, _node(pacs_ctx, port=orthanc.dicom_port), StudyQuery(modality="CT"), "dimse")
    report = pull(pacs_ctx, "orthanc", ct[0].study_uid, "dicomweb")
    assert report.landed == 1 and report.job_id is None
    with pacs_ctx.store.read() as db:
        assert db.execute("SELECT routed_at IS NOT NULL, job_id FROM arrivals").fetchall() == [(1, None)]


def test_orthanc_pushes_a_study_the_listener_routes_and_the_worklist_shows_it(pacs_ctx, orthanc):
    listener = Listener(pacs_ctx).start(port=orthanc.listener_port)
    try:
        us = find(pacs_ctx.config, _node(pacs_ctx, port=orthanc.dicom_port), StudyQuery(modality="US"), "dimse")
        orthanc.rest("POST", "/modalities/radlens/store", {"Resources": [_orthanc_id(orthanc, us[0].study_uid)],
                                                          "Synchronous": True})
        assert listener.stored == 1 and listener.failed == 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with pacs_ctx.store.read() as db:
                routed = db.execute("SELECT job_id FROM arrivals WHERE routed_at IS NOT NULL").fetchall()
            if routed:
                break
            time.sleep(0.2)
        assert routed and routed[0][0], "the pushed study was not routed after its quiet period"
        assert _wait_job(pacs_ctx, routed[0][0]).status == "finished"
    finally:
        listener.stop()
    from engine.cases.worklist import WorklistQuery, list_worklist

    [row] = list_worklist(pacs_ctx, WorklistQuery()).rows
    assert row["source"] == f"pushed by {pacs.AE_TITLE}" and row["modality"] == "US"
    assert row["latest_measurement"] and "mm" in row["latest_measurement"]


def _orthanc_id(orthanc, study_uid: str) -> str:
    [found] = orthanc.rest("POST", "/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})
    return found


def test_the_listener_refuses_strangers_and_fails_a_corrupt_instance_alone(pacs_ctx, orthanc):
    listener = Listener(pacs_ctx).start(port=orthanc.listener_port)
    try:
        stranger = AE(ae_title="STRANGER")
        stranger.add_requested_context(Verification)
        assoc = stranger.associate("127.0.0.1", listener.port, ae_title="RADLENS")
        assert assoc.is_rejected
        sender = AE(ae_title=pacs.AE_TITLE)
        sender.add_requested_context(CTImageStorage)
        good = pydicom.dcmread(io.BytesIO(dicom_bytes("CT_small.dcm")))
        broken = pydicom.dcmread(io.BytesIO(dicom_bytes("CT_small.dcm")))
        broken.SOPInstanceUID = broken.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.9.4417.9"
        broken.PixelData = broken.PixelData[:1000]  # truncated pixels
        assoc = sender.associate("127.0.0.1", listener.port, ae_title="RADLENS")
        assert assoc.is_established
        statuses = [assoc.send_c_store(ds).Status for ds in (broken, good)]
        assoc.release()
        assert statuses == [CANNOT_UNDERSTAND, 0x0000]
        assert listener.stored == 1 and listener.failed == 1
    finally:
        listener.stop()
    with pacs_ctx.store.read() as db:
        assert db.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 1


def test_orthanc_stopped_mid_retrieve_gives_a_clear_error_and_keeps_only_whole_instances(tmp_path):
    listener_port = pacs.free_port()
    server = pacs.Orthanc("RADLENS", listener_port)
    try:
        uid = "1.2.826.0.1.3680043.9.4417.2"
        for data in chest_study(4, uid):
            server.upload(data)
        config = Config(home=tmp_path / "home", data_dir=DATA_DIR, dicom=DicomSettings(timeout_seconds=5))
        ctx = Context(config, open_store(config), User("cli:test", "test", "system"))
        save_node(ctx, PacsNode("orthanc", server.dicomweb))
        save_credentials(ctx, "orthanc", pacs.USER, pacs.PASSWORD)
        report = pull(ctx, "orthanc", uid, "dicomweb", lambda done, total, r: server.stop() if done == 2 else None)
    finally:
        server.stop()
    assert report.landed == 2 and "WADO-RS" in report.error and "2 of 4" in report.error
    with ctx.store.read() as db:
        assert db.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 2
    stored = [p for p in (ctx.config.home / "files").rglob("*") if p.is_file()]
    assert len(stored) == 2 and not [p for p in stored if p.suffix == ".tmp"]


def test_who_may_search_pull_and_configure(pacs_ctx, orthanc):
    researcher = pacs_ctx.as_user(User("local:rita", "Rita", "researcher"))
    admin = pacs_ctx.as_user(User("local:ada", "Ada", "admin"))
    clinician = pacs_ctx.as_user(User("local:cleo", "Cleo", "clinician"))
    with pytest.raises(PermissionDenied):
        pull(researcher, "orthanc", STUDY_UID)
    with pytest.raises(PermissionDenied):
        pull(admin, "orthanc", STUDY_UID)  # an administrator reads no cases
    with pytest.raises(PermissionDenied):
        save_node(clinician, PacsNode("other", "http://127.0.0.1:1/dicom-web"))
    with pytest.raises(PermissionDenied):
        search(researcher, "orthanc", StudyQuery(modality="CR"))
    assert [m.study_uid for m in search(clinician, "orthanc", StudyQuery(modality="CR"))] == [STUDY_UID]
    assert [m.study_uid for m in search(admin, "orthanc", StudyQuery(modality="CR"))] == [STUDY_UID]


def test_credentials_stay_out_of_the_database(pacs_ctx):
    db_bytes = pacs_ctx.config.db_path.read_bytes()
    assert pacs.PASSWORD.encode() not in db_bytes
    key_file = pacs_ctx.config.home / "keys" / "pacs-orthanc.json"
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_the_command_line_adds_a_node_echoes_finds_and_the_listener_process_takes_a_push(tmp_path, orthanc):
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "RADLENS_HOME": str(tmp_path / "home"), "RADLENS_DATA_DIR": str(DATA_DIR),
           "RADLENS_DICOM_PORT": str(orthanc.listener_port), "RADLENS_DICOM_QUIET_S": "1"}

    def cli(*args, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "engine", *args], cwd=root, env=env, input=stdin,
                              capture_output=True, text=True, timeout=120)

    added = cli("pacs", "add", "orthanc", "--url", orthanc.dicomweb, "--ae", pacs.AE_TITLE, "--host", "127.0.0.1",
                "--port", str(orthanc.dicom_port), "--username", pacs.USER, "--password-stdin",
                stdin=pacs.PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    echoed = cli("pacs", "echo", "orthanc")
    assert echoed.returncode == 0 and "dimse     ok" in echoed.stdout and "dicomweb  ok" in echoed.stdout
    found = cli("pacs", "find", "orthanc", "--modality", "CR", "--json")
    assert [json.loads(line)["study_uid"] for line in found.stdout.splitlines()] == [STUDY_UID]
    listener = subprocess.Popen([sys.executable, "-m", "engine", "listen"], cwd=root, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "DICOM listener: AE title RADLENS" in listener.stdout.readline()
        orthanc.rest("POST", "/modalities/radlens/store", {"Resources": [_orthanc_id(orthanc, STUDY_UID)],
                                                          "Synchronous": True})
    finally:
        listener.terminate()
        listener.wait(10)
    # over DIMSE too: pynetdicom's INFO lines name the patient of every C-FIND answer and the study of a C-GET
    found = cli("pacs", "find", "orthanc", "--modality", "CR", "--via", "dimse", "--json")
    assert [json.loads(line)["study_uid"] for line in found.stdout.splitlines()] == [STUDY_UID], found.stderr
    assert cli("pacs", "pull", "orthanc", "--study", STUDY_UID, "--via", "dimse").returncode == 0
    store = open_store(Config(home=tmp_path / "home", data_dir=DATA_DIR))
    with store.read() as db:
        assert db.execute("SELECT source, modality FROM cases").fetchall() == [(f"pushed by {pacs.AE_TITLE}", "CR")]
    assert not any((tmp_path / "home" / "spool").iterdir())  # nothing raw left behind
    _assert_no_marker(tmp_path / "home")


def test_the_pacs_page_adds_a_node_searches_and_retrieves(tmp_path, orthanc, monkeypatch):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from dashboard import state
    from engine.identity.sessions import start_session

    home = tmp_path / "home"
    monkeypatch.setenv("RADLENS_HOME", str(home))
    monkeypatch.setenv("RADLENS_DATA_DIR", str(DATA_DIR))
    st.cache_resource.clear()
    ctx = Context.open(Config.from_env())
    root = Path(__file__).resolve().parent.parent

    def page(role: str) -> AppTest:
        at = AppTest.from_file(str(root / "dashboard" / "app.py"), default_timeout=120)
        at.session_state[state.SESSION] = start_session(ctx, User(f"local:{role}", role, role), "local")
        at.run()
        at.switch_page(str(root / "pages" / "pacs.py")).run()
        assert not at.exception, [e.message for e in at.exception]
        return at

    admin = page("admin")
    assert [t.label for t in admin.tabs] == ["Search and retrieve", "Nodes and routing"]
    for label, value in (("Name", "orthanc"), ("DICOMweb URL", orthanc.dicomweb), ("AE title", pacs.AE_TITLE),
                         ("Host", "127.0.0.1"), ("DICOMweb user name (optional)", pacs.USER),
                         ("Password", pacs.PASSWORD)):
        next(w for w in admin.text_input if w.label == label).input(value)
    next(w for w in admin.number_input if w.label == "Port").set_value(orthanc.dicom_port)
    next(b for b in admin.button if b.label == "Save node").click().run()
    assert not admin.exception and "orthanc" in list(admin.dataframe[0].value["Name"])
    next(b for b in admin.button if b.label == "Test connection").click().run()
    assert list(admin.dataframe[0].value["Last test"]) == ["dicomweb: ok; dimse: ok"]

    clinician = page("clinician")
    assert [t.label for t in clinician.tabs] == ["Search and retrieve"]  # nodes are the administrator's
    clinician.selectbox[2].set_value("CR")  # modality
    next(b for b in clinician.button if b.label == "Search").click().run()
    matches = clinician.dataframe[0].value
    assert list(matches["Patient"]) == [f"{MARKER}^Jane"]
    clinician.session_state["pacs.matches"] = {"selection": {"rows": [0], "columns": []}}
    clinician.run()
    next(b for b in clinician.button if b.label == "Retrieve the selected study").click().run()
    assert not clinician.exception, [e.message for e in clinician.exception]
    assert any("1 landed" in s.value for s in clinician.success)
    assert any("Analysis queued" in i.value for i in clinician.info)
    with ctx.store.read() as db:
        assert db.execute("SELECT source FROM cases").fetchall() == [("PACS pull: orthanc",)]
    st.cache_resource.clear()


@pytest.mark.parametrize("via", ["dicomweb", "dimse"])
def test_one_series_of_a_study_can_be_pulled_alone(pacs_ctx, orthanc, via):
    uid = "1.2.826.0.1.3680043.9.4417.3"
    first, second = chest_study(2, uid)
    other = pydicom.dcmread(io.BytesIO(second))
    other.SeriesInstanceUID = f"{uid}.2"
    for data in (first, encoded(other)):
        orthanc.upload(data)
    try:
        report = pull(pacs_ctx, "orthanc", uid, via, series_uid=f"{uid}.2")
    finally:  # the module's PACS keeps only the studies the other tests count on
        orthanc.rest("DELETE", f"/studies/{_orthanc_id(orthanc, uid)}")
    assert report.error == "" and report.landed == 1
    with pacs_ctx.store.read() as db:
        assert db.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 1
