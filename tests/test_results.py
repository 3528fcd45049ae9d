"""Results leave RadLens as standard objects: SR, secondary captures, SEG (dciodvfy: no error), pushed back
into the original study on a real Orthanc by STOW-RS and C-STORE, and a PDF case report; the store keeps no
original identifier."""

from __future__ import annotations

import io
import shutil
import subprocess
import time

import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests

from engine.cases.report import case_report
from engine.cases.results import result_objects
from engine.cases.reviews import add_review, review_case
from engine.config import Config, DicomSettings
from engine.context import Context, User
from engine.errors import NoStudyLink, PermissionDenied, SendRefused
from engine.jobs.queue import get_job
from engine.pacs.nodes import PacsNode, save_credentials, save_node
from engine.pacs.push import install_after_review_hook, send_case, set_send_after_review
from engine.pacs.routing import set_routing
from engine.pacs.studies import pull
from engine.store import open_store
from engine.stored import get_case
from engine.tasks.classification import diagnose_image, load_classifier
from engine.tasks.segmentation import load_segmenter, segment_case_image
from engine.writers.derived import DISCLAIMER, SR_CODES
from tests import orthanc as pacs
from tests.conftest import DATA_DIR, needs_data
from tests.orthanc import MARKER, STUDY_UID, chest_study, head_study
from tests.test_conformance import dciodvfy_errors

pytestmark = [
    pytest.mark.xdist_group("results-orthanc"),
    pytest.mark.slow,
    pytest.mark.skipif(pacs.ORTHANC is None or not pacs.DICOMWEB_PLUGIN.is_file(),
                       reason="Orthanc and orthanc-dicomweb are not installed (make test installs them as root)"),
    pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) is not installed"),
    needs_data,
]
HEAD = head_study()  # wrapped once: its UIDs are generated
HEAD_STUDY, HEAD_SERIES = (getattr(pydicom.dcmread(io.BytesIO(HEAD)), k) for k in ("StudyInstanceUID",
                                                                                    "SeriesInstanceUID"))
SOURCE_SERIES = {STUDY_UID: f"{STUDY_UID}.1", HEAD_STUDY: HEAD_SERIES}
CLINICIAN = User("local:cleo", "Dr Cleo Reader", "clinician")


@pytest.fixture(scope="module")
def orthanc():
    server = pacs.Orthanc("RADLENS", pacs.free_port())
    for data in [*chest_study(), HEAD]:
        server.upload(data)
    yield server
    server.stop()


@pytest.fixture
def pacs_ctx(tmp_path, orthanc) -> Context:
    config = Config(home=tmp_path / "home", data_dir=DATA_DIR, dicom=DicomSettings(port=0, timeout_seconds=20))
    ctx = Context(config, open_store(config), User("cli:test", "test", "system"))
    save_node(ctx, PacsNode("orthanc", orthanc.dicomweb, pacs.AE_TITLE, "127.0.0.1", orthanc.dicom_port))
    save_credentials(ctx, "orthanc", pacs.USER, pacs.PASSWORD)
    for task in ("classification", "segmentation"):  # each test analyses its case itself, no background job races it
        set_routing(ctx, task, False)
    return ctx.as_user(CLINICIAN)


def _pulled_case(ctx: Context, study_uid: str) -> int:
    """The source series only: results sent back by an earlier test are in the study too."""
    report = pull(ctx, "orthanc", study_uid, "dicomweb", series_uid=SOURCE_SERIES[study_uid])
    assert report.landed == 1, report
    return report.case_ids[0]


def _instances(orthanc, study_uid: str) -> list[dict]:
    """What QIDO-RS lists in the original study (DICOM JSON per instance)."""
    response = requests.get(f"{orthanc.dicomweb}/studies/{study_uid}/instances", auth=(pacs.USER, pacs.PASSWORD),
                            params={"includefield": "all"}, timeout=30)
    response.raise_for_status()
    return response.json()


def _sop_uid(item: dict) -> str:
    return item["00080018"]["Value"][0]


def _series_in_study(orthanc, study_uid: str, before: set[str] = frozenset()) -> dict[str, dict]:
    """SOP class -> the instance of it in the original study that was not there `before` (SOP UIDs)."""
    return {item["00080016"]["Value"][0]: item for item in _instances(orthanc, study_uid)
            if _sop_uid(item) not in before}


def _retrieved(orthanc, item: dict) -> bytes:
    study, series, sop = (item[t]["Value"][0] for t in ("0020000D", "0020000E", "00080018"))
    index = requests.post(f"{orthanc.url}/tools/lookup", data=sop, auth=(pacs.USER, pacs.PASSWORD), timeout=30)
    orthanc_id = next(r["ID"] for r in index.json() if r["Type"] == "Instance")
    return requests.get(f"{orthanc.url}/instances/{orthanc_id}/file", auth=(pacs.USER, pacs.PASSWORD),
                        timeout=30).content


def _sr_values(sr: pydicom.Dataset) -> dict[str, object]:
    """Concept meaning -> value, over the whole content tree."""
    values = {}

    def walk(items):
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeMeaning
            if item.ValueType == "NUM":
                values[name] = float(item.MeasuredValueSequence[0].NumericValue)
            elif item.ValueType == "CODE":
                values.setdefault(name, item.ConceptCodeSequence[0].CodeMeaning)
            elif item.ValueType in ("TEXT", "PNAME"):
                values[name] = str(item.TextValue if item.ValueType == "TEXT" else item.PersonName)
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return values


def _no_new_errors(tmp_path, name: str, data: bytes) -> None:
    path = tmp_path / f"{name}.dcm"
    path.write_bytes(data)
    assert dciodvfy_errors(path) == set(), name


@pytest.mark.parametrize("via", ["dicomweb", "dimse"])
def test_a_reviewed_chest_film_goes_back_into_its_original_study(pacs_ctx, orthanc, tmp_path, via):
    case_id = _pulled_case(pacs_ctx, STUDY_UID)
    image = get_case(pacs_ctx.store, case_id)["images"][0]
    result = diagnose_image(pacs_ctx, load_classifier(pacs_ctx), image)
    add_review(pacs_ctx, case_id, "agree", comment="consolidation right lower lobe", prediction_id=result.prediction_id)
    before = {_sop_uid(item) for item in _instances(orthanc, STUDY_UID)}
    report = send_case(pacs_ctx, case_id, via=via)
    assert report.objects == ["sr", "sc-cam"] and report.node == "orthanc"

    found = _series_in_study(orthanc, STUDY_UID, before)  # QIDO-RS, in the patient's real study
    assert set(found) == {"1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7"}  # exactly the two sent
    sr_item, sc_item = found["1.2.840.10008.5.1.4.1.1.88.33"], found["1.2.840.10008.5.1.4.1.1.7"]
    sr, sc = (pydicom.dcmread(io.BytesIO(_retrieved(orthanc, item))) for item in (sr_item, sc_item))
    for ds in (sr, sc):
        assert ds.StudyInstanceUID == STUDY_UID and ds.PatientID == f"{MARKER}-MRN"
        assert str(ds.PatientName) == f"{MARKER}^Jane"
    _no_new_errors(tmp_path, "sr", _retrieved(orthanc, sr_item))
    _no_new_errors(tmp_path, "sc", _retrieved(orthanc, sc_item))

    with pacs_ctx.store.read() as db:
        row = next(db.query("SELECT * FROM predictions WHERE id = ?", [result.prediction_id]))
    values = _sr_values(sr)
    assert values["Finding"] == "Pneumonia" if row["label"] == "pneumonia" else "Normal"
    for key in ("probability", "threshold", "uncertainty", "ood_score", "ood_threshold"):
        assert values[SR_CODES[key].meaning] == pytest.approx(row[key], rel=1e-6)
    assert values["Algorithm Name"] == row["model_name"] and values["Algorithm Version"] == row["model_version"]
    assert row["weights_sha256"] in values["Algorithm Parameters"]
    assert values["Explanation method"] == "gradcam" and values["Out of distribution"] == "No"
    assert values["Review verdict"] == "agree" and values["Person Observer Name"] == "Dr Cleo Reader^"
    assert values["Comment"] == DISCLAIMER
    # The SR references the source image by its original UID, and the capture sits beside it.
    source_uid = f"{STUDY_UID}.1.1"
    evidence = {i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
    assert source_uid in evidence and sc.SOPInstanceUID in evidence
    assert sc.BurnedInAnnotation == "YES" and sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source_uid
    pixels = sc.pixel_array
    rows, cols = pacs.film_gray().shape
    assert pixels.shape[1] == cols and pixels.shape[0] > rows + 40  # the film whole, a text band above it
    assert pixels[:40].max() > 200 and np.array_equal(pixels[-rows:, :, 0] > 0, pixels[-rows:, :, 0] > 0)

    _assert_no_original_identifier(pacs_ctx)
    with pacs_ctx.store.read() as db:
        audit = [r[0] for r in db.execute("SELECT detail FROM audit_log WHERE action = 'pacs.send'")]
    assert audit and '"ok": true' in audit[-1] and via in audit[-1]


def test_a_fetal_head_measurement_goes_back_with_its_seg_and_secondary_capture(pacs_ctx, orthanc, tmp_path):
    case_id = _pulled_case(pacs_ctx, HEAD_STUDY)
    done = segment_case_image(pacs_ctx, load_segmenter(pacs_ctx), get_case(pacs_ctx.store, case_id)["images"][0])
    before = {_sop_uid(item) for item in _instances(orthanc, HEAD_STUDY)}
    report = send_case(pacs_ctx, case_id)
    assert report.objects == ["sr", "seg", "sc-seg"]
    found = _series_in_study(orthanc, HEAD_STUDY, before)
    assert {"1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.7"} <= set(found)
    for name, sop_class in (("sr", "1.2.840.10008.5.1.4.1.1.88.33"), ("seg", "1.2.840.10008.5.1.4.1.1.66.4")):
        _no_new_errors(tmp_path, name, _retrieved(orthanc, found[sop_class]))
    sr = pydicom.dcmread(io.BytesIO(_retrieved(orthanc, found["1.2.840.10008.5.1.4.1.1.88.33"])))
    values = _sr_values(sr)
    m = done.result.measurement
    assert values["Circumference"] == pytest.approx(m.circumference, rel=1e-6) and m.unit == "mm"
    assert values["Area"] == pytest.approx(m.area, rel=1e-6)
    assert values["Pixel spacing source"] == m.spacing_source
    seg = pydicom.dcmread(io.BytesIO(_retrieved(orthanc, found["1.2.840.10008.5.1.4.1.1.66.4"])))
    assert seg.StudyInstanceUID == HEAD_STUDY and np.array_equal(seg.pixel_array.astype(bool), done.result.mask)
    # highdicom reads both back: the segment as written, and the SR's measurement referencing it
    read_seg = hd.seg.Segmentation.from_dataset(seg)
    assert read_seg.get_segment_description(1).segment_label == "Fetal head"
    read_sr = hd.sr.ComprehensiveSR.from_dataset(sr)
    assert read_sr.SOPInstanceUID == sr.SOPInstanceUID and seg.SOPInstanceUID in {
        i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
        for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
    _assert_no_original_identifier(pacs_ctx)


def _assert_no_original_identifier(ctx: Context) -> None:
    """The store, its files and logs hold no original identifier after the round trip (the link is sealed)."""
    for path in (p for p in ctx.config.home.rglob("*") if p.is_file()):
        content = path.read_bytes()
        for needle in (MARKER, STUDY_UID, HEAD_STUDY, "Jane", "Mary", "20260315", "20260401"):
            assert needle.encode() not in content, f"{needle} found in {path.relative_to(ctx.config.home)}"


def test_sending_after_review_is_a_job_and_only_clinicians_and_admins_send(pacs_ctx, orthanc):
    case_id = _pulled_case(pacs_ctx, STUDY_UID)
    result = diagnose_image(pacs_ctx, load_classifier(pacs_ctx), get_case(pacs_ctx.store, case_id)["images"][0])
    researcher = pacs_ctx.as_user(User("local:rita", "Rita", "researcher"))
    with pytest.raises(PermissionDenied):
        send_case(researcher, case_id)
    admin = pacs_ctx.as_user(User("local:ada", "Ada", "admin"))
    with pytest.raises(PermissionDenied):
        set_send_after_review(pacs_ctx, True)  # a clinician may not change the setting
    set_send_after_review(admin, True)
    install_after_review_hook()  # as the dashboard does
    before = len(_instances(orthanc, STUDY_UID))
    _, [job_id] = review_case(pacs_ctx, case_id, "disagree", comment="normal film",
                              prediction_id=result.prediction_id)
    job = get_job(pacs_ctx.store, job_id)
    deadline = time.monotonic() + 120
    while job.active and time.monotonic() < deadline:
        time.sleep(0.5)
        job = get_job(pacs_ctx.store, job_id)
    assert job.status == "finished", job.error
    assert len(_instances(orthanc, STUDY_UID)) == before + 2  # the SR and the secondary capture
    assert send_case(admin, case_id).objects == ["sr", "sc-cam"]


def test_a_case_that_did_not_come_from_a_pacs_cannot_be_sent_but_can_be_downloaded(pacs_ctx, tmp_path):
    from engine.cases.ingest import ingest_files

    [landed] = ingest_files([("film.dcm", chest_study(study_uid="1.2.826.0.1.3680043.9.4417.9")[0])], pacs_ctx)
    diagnose_image(pacs_ctx, load_classifier(pacs_ctx), get_case(pacs_ctx.store, landed.case_id)["images"][0])
    with pytest.raises(NoStudyLink, match="not retrieved from or pushed by a PACS"):
        send_case(pacs_ctx, landed.case_id)
    objects = {o.kind: o for o in result_objects(pacs_ctx, landed.case_id)}
    assert set(objects) == {"sr", "sc-cam"}
    for kind, obj in objects.items():
        _no_new_errors(tmp_path, kind, obj.data)
        assert obj.dataset.PatientID.startswith("RL-")  # the download carries the pseudonym only


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler-utils is not installed")
def test_the_pdf_report_says_what_a_reader_needs(pacs_ctx, tmp_path):
    case_id = _pulled_case(pacs_ctx, STUDY_UID)
    result = diagnose_image(pacs_ctx, load_classifier(pacs_ctx), get_case(pacs_ctx.store, case_id)["images"][0])
    add_review(pacs_ctx, case_id, "corrected", "normal", "no consolidation", result.prediction_id)
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(case_report(pacs_ctx, [case_id]))
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout
    p = result.prediction
    shown = f"{p.probability:.1%}".replace("%", " %")
    assert shown in text and f"{p.threshold:.1%}".replace("%", " %") in text
    assert "cxr-pneumonia-resnet18-v2 v2.0.0" in text and "AUC 0.997 (95 % CI" in text
    assert "Corrected (correct label: normal), by Dr Cleo Reader" in text and "no consolidation" in text
    assert DISCLAIMER in text and "Pseudonym RL-" in text and MARKER not in text
    subprocess.run(["pdftoppm", "-r", "40", "-png", str(pdf), str(tmp_path / "page")], check=True)
    assert (tmp_path / "page-1.png").stat().st_size > 10_000


def test_the_diagnosis_page_sends_results_and_the_pacs_page_turns_on_send_after_review(pacs_ctx, orthanc,
                                                                                       monkeypatch):
    import streamlit as st

    from engine.pacs.push import send_after_review
    from tests.test_pages import _run

    monkeypatch.setenv("RADLENS_HOME", str(pacs_ctx.config.home))
    st.cache_resource.clear()
    case_id = _pulled_case(pacs_ctx, STUDY_UID)
    before = len(_instances(orthanc, STUDY_UID))
    at = _run("pages/diagnosis.py", role="clinician", **{"radlens.current_case": case_id})
    downloads = {b.label: b.proto.disabled for b in at.get("download_button")}
    assert downloads == {"PDF report": False, "DICOM SR + captures": False}
    next(b for b in at.button if b.label == "Send results to PACS").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.success[0].value.startswith("Sent 2 object(s) to orthanc (dicomweb,")
    assert len(_instances(orthanc, STUDY_UID)) == before + 2

    admin = _run("pages/pacs.py", role="admin")
    admin.toggle(key="pacs.send_after_review").set_value(True).run()
    assert not admin.exception and send_after_review(pacs_ctx.store)
    st.cache_resource.clear()


def test_the_command_line_pushes_a_case_and_says_why_it_cannot(pacs_ctx, orthanc):
    import json
    import sys

    case_id = _pulled_case(pacs_ctx, STUDY_UID)
    env = {"RADLENS_HOME": str(pacs_ctx.config.home), "PATH": "/usr/bin", "RADLENS_USER": "cli:tester"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "engine", "pacs", "push", str(case_id), *args],
                              capture_output=True, text=True, env=env, timeout=300)

    early = cli()
    assert early.returncode == 2 and early.stderr.startswith(f"error: case {case_id} has no analysed result")
    diagnose_image(pacs_ctx, load_classifier(pacs_ctx), get_case(pacs_ctx.store, case_id)["images"][0])
    run = cli("--via", "dimse", "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["node"] == "orthanc" and summary["via"] == "dimse" and summary["objects"] == ["sr", "sc-cam"]
    unknown = cli("--node", "elsewhere")
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: ") and "elsewhere" in unknown.stderr
    log = (pacs_ctx.config.log_dir / "radlens.log").read_text()
    assert "Store Response" not in log  # pynetdicom's INFO lines (UIDs, patients) are held back ...
    _assert_no_original_identifier(pacs_ctx)  # ... and no original identifier, there or anywhere in the home


# Last in this module: it deletes the chest study from the module's Orthanc.
def test_results_go_only_to_the_studys_own_node_over_https_and_into_a_study_it_holds(pacs_ctx, orthanc):
    case_id = _pulled_case(pacs_ctx, STUDY_UID)
    diagnose_image(pacs_ctx, load_classifier(pacs_ctx), get_case(pacs_ctx.store, case_id)["images"][0])
    system = pacs_ctx.as_user(User("cli:test", "test", "system"))
    save_node(system, PacsNode("copy", orthanc.dicomweb))
    with pytest.raises(SendRefused, match="results go back only there"):
        send_case(pacs_ctx, case_id, node_name="copy")
    save_node(system, PacsNode("remote", "http://pacs.example.invalid/dicom-web", accepts_other_studies=True))
    with pytest.raises(SendRefused, match="plain http"):
        send_case(pacs_ctx, case_id, node_name="remote")
    [study] = orthanc.rest("POST", "/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": STUDY_UID}})
    orthanc.rest("DELETE", f"/studies/{study}")
    for via in ("dicomweb", "dimse"):
        with pytest.raises(SendRefused, match="does not hold this case's original study"):
            send_case(pacs_ctx, case_id, via=via)
    refused = [r["detail"] for r in pacs_ctx.store.audit_rows(50) if r["action"] == "pacs.send"]
    assert len(refused) == 4 and all('"ok": false' in d for d in refused)
