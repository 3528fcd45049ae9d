"""Downloads of results without a PACS: the DICOM objects over the de-identified image (dciodvfy: no error),
the PDF report from the command line, the worklist filter as CSV; what cannot be exported says why."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
import zipfile

import pydicom
import pytest

from engine.cases.ingest import ingest_files
from engine.cases.results import result_objects, result_zip
from engine.cases.worklist import WorklistQuery, worklist_csv
from engine.context import User
from engine.errors import ExportError, NotAnalysed, PermissionDenied
from engine.stored import get_case
from engine.tasks.classification import diagnose_image, load_classifier
from engine.writers.derived import BURNED_IN
from engine.writers.wrap import encoded, radiograph_dicom
from tests.conftest import needs_data
from tests.test_conformance import dciodvfy_errors

PUBLIC_FILM = "person1597_bacteria_4190.jpeg"


def _film_case(ctx) -> int:
    from tests.orthanc import film_gray

    ds = radiograph_dicom(film_gray(512), "CHEST PA", patient_id="EXPORT-TEST", PatientName="Export^Test")
    [landed] = ingest_files([("film.dcm", encoded(ds))], ctx)
    diagnose_image(ctx, load_classifier(ctx), get_case(ctx.store, landed.case_id)["images"][0])
    return landed.case_id


@needs_data
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) is not installed")
def test_a_downloaded_result_is_valid_dicom_under_the_pseudonym(ctx, tmp_path):
    case_id = _film_case(ctx)
    objects = {o.kind: o for o in result_objects(ctx, case_id)}
    assert set(objects) == {"sr", "sc-cam"}
    for kind, obj in objects.items():
        path = tmp_path / obj.filename
        path.write_bytes(obj.data)
        assert dciodvfy_errors(path) == set(), kind
        assert obj.dataset.PatientID.startswith("RL-") and "Export" not in str(obj.dataset.PatientName)
    sc = objects["sc-cam"].dataset
    assert sc.BurnedInAnnotation == "YES" and sc.SeriesDescription == "RadLens Grad-CAM (research use only)"
    with zipfile.ZipFile(io.BytesIO(result_zip(ctx, case_id))) as archive:
        assert sorted(archive.namelist()) == [f"case{case_id}-sc-cam.dcm", f"case{case_id}-sr.dcm"]
        sr = pydicom.dcmread(io.BytesIO(archive.read(f"case{case_id}-sr.dcm")))
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33" and sr.CompletionFlag == "COMPLETE"
    with ctx.store.read() as db:
        assert db.execute("SELECT count(*) FROM audit_log WHERE action = 'export.dicom'").fetchone()[0] == 2
    assert BURNED_IN.startswith("RESEARCH USE ONLY")


def test_what_cannot_be_exported_says_why(ctx):
    from tests.conftest import dicom_bytes

    [ct] = ingest_files([("ct.dcm", dicom_bytes("CT_small.dcm"))], ctx)
    with pytest.raises(NotAnalysed, match="no analysed result"):
        result_objects(ctx, ct.case_id)
    researcher = ctx.as_user(User("local:rita", "Rita", "researcher"))
    admin = ctx.as_user(User("local:ada", "Ada", "admin"))
    with pytest.raises(PermissionDenied):
        result_objects(admin, ct.case_id)  # administrators read no cases
    with pytest.raises(NotAnalysed):
        result_objects(researcher, ct.case_id)


@pytest.mark.slow
@needs_data
def test_a_png_upload_has_a_pdf_report_but_no_dicom_objects(ctx, tmp_path):
    from tests.conftest import DATA_DIR

    film = DATA_DIR / "cxr_pneumonia_fullres" / PUBLIC_FILM
    [landed] = ingest_files([("film.jpeg", film.read_bytes())], ctx)
    diagnose_image(ctx, load_classifier(ctx), get_case(ctx.store, landed.case_id)["images"][0])
    with pytest.raises(ExportError, match="needs a DICOM source image"):
        result_objects(ctx, landed.case_id)
    out = tmp_path / "report.pdf"
    run = subprocess.run([sys.executable, "-m", "engine", "report", str(landed.case_id), "999", "--out", str(out)],
                         capture_output=True, text=True, env={"RADLENS_HOME": str(ctx.config.home), "PATH": "/usr/bin"},
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes().startswith(b"%PDF") and "2 case(s)" in run.stdout
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", str(out), "-"], capture_output=True, text=True).stdout
        assert "Pseudonym none (not a DICOM upload)" in text and "calibrated probability of pneumonia" in text
        assert "Case #999: cannot be reported" in text and "case 999 does not exist" in text  # fails alone
    bad = subprocess.run([sys.executable, "-m", "engine", "export", str(landed.case_id), "--out", str(tmp_path)],
                         capture_output=True, text=True, env={"RADLENS_HOME": str(ctx.config.home), "PATH": "/usr/bin"},
                         timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: a DICOM export needs a DICOM source image")
    assert "Traceback" not in bad.stderr


def test_the_worklist_filter_exports_as_csv_without_formulas(ctx):
    from tests.conftest import dicom_bytes

    ingest_files([("ct.dcm", dicom_bytes("CT_small.dcm")), ("rg.dcm", dicom_bytes("RG1_UNCR.dcm"))], ctx)
    with ctx.store.write() as db:  # a description a spreadsheet would run as a formula
        db.execute("UPDATE cases SET study_description = '=HYPERLINK(\"http://x\")' WHERE modality = 'CT'")
    rows = list(csv.reader(io.StringIO(worklist_csv(ctx, WorklistQuery(modalities=("CT",))).decode())))
    assert rows[0][:4] == ["Case", "Modality", "Body part", "Description"] and len(rows) == 2
    assert rows[1][1] == "CT" and rows[1][3] == "'=HYPERLINK(\"http://x\")"
    everything = list(csv.reader(io.StringIO(worklist_csv(ctx, WorklistQuery(page_size=1)).decode())))
    assert len(everything) == 3  # every matching case, not one page
    with pytest.raises(PermissionDenied):
        worklist_csv(ctx.as_user(User("local:ada", "Ada", "admin")), WorklistQuery())


@needs_data
def test_the_original_study_link_is_sealed_to_its_key_and_image(ctx):
    from engine.deid.link import LINK_KEYWORDS, reidentify, seal, unseal
    from engine.errors import KeyUnavailable
    from engine.keys import secret_key
    from engine.pacs.push import has_link
    from tests.orthanc import MARKER, chest_study

    data = chest_study(study_uid="1.2.826.0.1.3680043.9.4417.7")[0]
    [uploaded] = ingest_files([("film.dcm", data)], ctx)
    assert not has_link(ctx.store, uploaded.case_id)  # an upload never keeps its original identity
    [again] = ingest_files([("film.dcm", data)], ctx, origin_node="orthanc")  # the same film, now from a PACS
    assert again.status == "duplicate" and has_link(ctx.store, uploaded.case_id)
    with ctx.store.read() as db:
        sealed, sha = db.execute("SELECT l.sealed, i.sha256 FROM study_links l JOIN images i ON i.id = l.image_id"
                                 ).fetchone()
    assert MARKER.encode() not in sealed and b"4417" not in sealed  # ciphertext only
    key = secret_key(ctx.config.home, "pseudonym")
    original = unseal(key, sha, sealed)
    assert original["PatientID"] == f"{MARKER}-MRN" and original["StudyInstanceUID"] == "1.2.826.0.1.3680043.9.4417.7"
    assert set(original) <= set(LINK_KEYWORDS)
    with pytest.raises(KeyUnavailable, match="another image"):
        unseal(key, "0" * 64, sealed)  # bound to its own stored file
    with pytest.raises(KeyUnavailable):
        unseal(bytes(32), sha, sealed)  # and to the de-identification key
    stored = pydicom.dcmread(ctx.config.home / get_case(ctx.store, uploaded.case_id)["images"][0]["path"])
    restored = reidentify(stored, original)
    assert restored.PatientID == f"{MARKER}-MRN" and "PatientIdentityRemoved" not in restored
    assert stored.PatientID.startswith("RL-")  # the stored copy is untouched
    assert unseal(key, sha, seal(key, sha, {"PatientID": "x"})) == {"PatientID": "x"}
