"""PHI: a marker in every identifying attribute of the profile must appear nowhere under RADLENS_HOME."""

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from tests.conftest import dicom_bytes

MARKER = "ZZPHI7731"
MARKER_UID = "1.2.826.0.1.3680043.9.7731.1"
MARKER_DATE = "19230517"
ROOT = Path(__file__).resolve().parent.parent

# Annex E Basic Profile attributes (names, IDs, addresses, institutions, physicians, devices, comments).
TEXT_ATTRIBUTES = """
PatientID OtherPatientIDs PatientAddress PatientTelephoneNumbers AccessionNumber StudyID InstitutionName
InstitutionAddress InstitutionalDepartmentName ReferringPhysicianAddress ReferringPhysicianTelephoneNumbers
StationName DeviceSerialNumber PatientComments ImageComments AdditionalPatientHistory
AdmittingDiagnosesDescription Occupation MedicalRecordLocator IssuerOfPatientID MilitaryRank
DerivationDescription PerformedProcedureStepDescription RequestedProcedureDescription
PerformedStationAETitle CountryOfResidence RegionOfResidence PatientReligiousPreference
""".split()
NAME_ATTRIBUTES = """
PatientName OtherPatientNames PatientMotherBirthName ReferringPhysicianName PerformingPhysicianName
NameOfPhysiciansReadingStudy OperatorsName PhysiciansOfRecord RequestingPhysician ContentCreatorName
""".split()


def _phi_dicom() -> bytes:
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes("CT_small.dcm")))
    for keyword in TEXT_ATTRIBUTES:
        setattr(ds, keyword, MARKER if keyword != "PerformedStationAETitle" else MARKER[:16])
    for keyword in NAME_ATTRIBUTES:
        setattr(ds, keyword, f"{MARKER}^Jane")
    for keyword in ("PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        setattr(ds, keyword, MARKER_DATE)
    ds.StudyDescription = f"CHEST {MARKER}"
    ds.SeriesDescription = f"{MARKER} axial"
    ds.StudyInstanceUID = MARKER_UID
    ds.SeriesInstanceUID = MARKER_UID + ".2"
    ds.SOPInstanceUID = MARKER_UID + ".3"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.FrameOfReferenceUID = MARKER_UID + ".4"
    item = Dataset()
    item.RequestedProcedureID = MARKER
    item.ScheduledProcedureStepID = MARKER
    ds.RequestAttributesSequence = Sequence([item])
    ds.add_new(0x00091010, "LO", MARKER)  # private tag
    # Inside a sequence that is kept: what the profile removes at the top must go here too.
    nested = Dataset()
    nested.CodeValue, nested.CodingSchemeDesignator, nested.CodeMeaning = "T-D3000", "SRT", f"Chest {MARKER}"
    nested.add_new(0x00081190, "UR", f"https://pacs.example/{MARKER}")  # RetrieveURL
    nested.add_new(0x00420011, "OB", f"%PDF {MARKER}".encode())  # EncapsulatedDocument
    nested.add_new(0x00211234, "LO", MARKER)  # private, nested
    nested.PatientAge, nested.PatientBirthDate, nested.PatientName = "077Y", MARKER_DATE, f"{MARKER}^Jane"
    inner = Dataset()
    inner.PatientID, inner.StudyTime, inner.ReasonForStudy = MARKER, "101010", MARKER
    nested.ReferencedStudySequence = Sequence([inner])
    ds.AnatomicRegionSequence = Sequence([nested])
    # Allow-listed free text: only known imaging words may stay.
    ds.ManufacturerModelName = f"Brilliance {MARKER} Jane"
    ds.BodyPartExamined = "CHEST"
    ds.ProtocolName = f"CT CHEST W CONTRAST {MARKER} 0042137"
    ds.WindowCenterWidthExplanation = f"LUNG {MARKER}"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    assert buffer.getvalue().count(MARKER.encode()) >= 40
    return buffer.getvalue()


def test_marker_appears_nowhere_in_database_wal_files_or_logs(tmp_path):
    home = tmp_path / "home"
    source = tmp_path / "phi.dcm"
    source.write_bytes(_phi_dicom())
    env = {**os.environ, "RADLENS_HOME": str(home)}
    run = subprocess.run([sys.executable, "-m", "engine", "ingest", str(source)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    stored = list(home.rglob("*"))
    names = {p.name for p in stored}
    assert "radlens.db" in names and any(p.suffix == ".dcm" for p in stored) and "radlens.log" in names
    assert all(p.stat().st_mode & 0o077 == 0 for p in [home, *stored])  # this account's eyes only, logs too
    for path in (p for p in stored if p.is_file()):
        content = path.read_bytes()
        for needle in (MARKER, MARKER_UID, MARKER_DATE, "Jane"):
            assert needle.encode() not in content, f"{needle} found in {path.relative_to(home)}"
    dcm = next(p for p in stored if p.suffix == ".dcm")
    ds = pydicom.dcmread(dcm)
    assert ds.PatientIdentityRemoved == "YES" and str(ds.StudyDescription) == "CHEST"
    assert ds.StudyDate != MARKER_DATE and len(ds.StudyDate) == 8  # shifted, not dropped
    assert ds.ProtocolName == "CT CHEST W CONTRAST" and ds.ManufacturerModelName == "Brilliance"
    region = ds.AnatomicRegionSequence[0]  # the coded concept survives, its identifying parts do not
    assert region.CodeValue == "T-D3000" and region.CodeMeaning == "Chest"
    assert "PatientAge" not in region and not region.PatientBirthDate and "EncapsulatedDocument" not in region
    assert all(len(v) <= 64 for v in ds.DeidentificationMethod)
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113105", "113107"]


def test_uids_and_pseudonyms_are_keyed_and_consistent_per_key():
    from engine.deid.profile import deidentify

    ds = pydicom.dcmread(io.BytesIO(_phi_dicom()))
    key_1, key_2 = bytes(range(32)), bytes(range(1, 33))
    a, b, c = deidentify(ds, key_1), deidentify(ds, key_1), deidentify(ds, key_2)
    assert a.StudyInstanceUID == b.StudyInstanceUID != c.StudyInstanceUID
    assert a.StudyInstanceUID.startswith("2.25.") and len(a.StudyInstanceUID) <= 64
    assert a.SOPClassUID == ds.SOPClassUID  # registered UIDs are kept
    assert a.StudyDate == b.StudyDate and a.SeriesDate == a.StudyDate  # one shift per patient
    # 128 bits in every pseudonym: guessing an MRN and checking it needs the key, not just the database
    assert a.PatientID == b.PatientID != c.PatientID and len(a.PatientID) == len("RL-") + 32
    with pytest.raises(ValueError, match="secret key"):
        deidentify(ds, b"")


def test_the_pseudonym_key_lives_outside_the_database_in_a_private_file(ctx, config, store):
    from engine.cases.ingest import ingest_files

    [result] = ingest_files([("phi.dcm", _phi_dicom())], ctx)
    key_file = config.home / "keys" / "pseudonym.key"
    assert result.ok and key_file.stat().st_mode & 0o777 == 0o600
    assert (config.home / "keys").stat().st_mode & 0o777 == 0o700
    assert store.setting("uid_salt") is None  # no salt next to the data it protects
    stored = [p for p in (config.home / "files").rglob("*") if p.is_file()]
    assert stored and all(p.stat().st_mode & 0o077 == 0 for p in stored)  # readable by this user only


def test_comments_and_application_segments_inside_jpeg_frames_of_a_dicom_are_removed(ctx, config, store):
    from pydicom.encaps import encapsulate, generate_frames

    from engine.cases.ingest import ingest_files

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes("SC_rgb_jpeg_dcmtk.dcm")))
    [frame] = generate_frames(ds.PixelData, number_of_frames=1)
    segments = b"\xff\xfe\x00\x14" + f"{MARKER} DOE^JANE".encode() + b"\xff\xe1\x00\x0bExif" + MARKER.encode()[:5]
    ds.PixelData = encapsulate([frame[:2] + segments + frame[2:]])
    buffer = io.BytesIO()
    ds.save_as(buffer)
    assert MARKER.encode() in buffer.getvalue()
    [result] = ingest_files([("jpeg-frames.dcm", buffer.getvalue())], ctx)
    assert result.ok, result.error
    with store.read() as db:
        path = db.execute("SELECT path FROM images WHERE id = ?", [result.image_id]).fetchone()[0]
    stored = (config.home / path).read_bytes()
    assert result.ok and MARKER.encode()[:5] not in stored and b"DOE^JANE" not in stored
    assert np.array_equal(pydicom.dcmread(config.home / path).pixel_array, ds.pixel_array)  # same pixels


def test_jpeg_metadata_is_dropped_and_the_compressed_image_kept_bit_exact(ctx, config, store):
    """EXIF and COM segments can hold names; the stored JPEG keeps only what decoding needs."""
    import io

    import numpy as np
    from PIL import Image

    from engine.cases.ingest import ingest_files
    from engine.io import read_study

    pixels = np.tile(np.arange(0, 256, 2, dtype=np.uint8), (96, 1))
    exif = Image.Exif()
    exif[0x010E] = "DOE^JANE 1970-01-01"  # ImageDescription
    exif[0x0112] = 1  # orientation: as stored
    for progressive in (False, True):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", exif=exif.tobytes(), comment=b"DOE^JANE MRN 12345",
                                     progressive=progressive, quality=90)
        upload = buffer.getvalue()
        [result] = ingest_files([(f"jane-{progressive}.jpg", upload)], ctx)
        with store.read() as db:
            path = db.execute("SELECT path FROM images WHERE id = ?", [result.image_id]).fetchone()[0]
        stored = (config.home / path).read_bytes()
        assert path.endswith(".jpg") and b"DOE^JANE" not in stored and b"Exif" not in stored
        assert stored[2:4] == b"\xff\xe0" and int.from_bytes(stored[4:6], "big") == 16  # JFIF, standard length
        assert np.array_equal(read_study(stored).frames[0], read_study(upload).frames[0])
        assert len(stored) < len(upload)


def test_a_rotated_jpeg_is_stored_as_png_with_the_rotation_applied(ctx, config, store):
    import io

    import numpy as np
    from PIL import Image

    from engine.cases.ingest import ingest_files
    from engine.io import read_study

    pixels = np.tile(np.arange(0, 240, 3, dtype=np.uint8), (40, 1))  # 40 x 80
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", exif=exif.tobytes())
    [result] = ingest_files([("rotated.jpg", buffer.getvalue())], ctx)
    with store.read() as db:
        path = db.execute("SELECT path FROM images WHERE id = ?", [result.image_id]).fetchone()[0]
    stored = read_study((config.home / path).read_bytes())
    assert path.endswith(".png") and stored.shape == (80, 40)


MARKUP = "**b** [l](http://x.org) ![i](http://x.org/i.png) :red[r] <b>h</b> \x1b[31m\x07 \u202e"


def _markup_dicom() -> bytes:
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes("CT_small.dcm")))
    for keyword in ("StudyDescription", "SeriesDescription", "ProtocolName", "ManufacturerModelName", "Manufacturer",
                    "WindowCenterWidthExplanation"):
        setattr(ds, keyword, f"CHEST {MARKUP}")
    ds.InstitutionName, ds.PatientName = MARKUP, f"{MARKUP}^Jane"
    for keyword in ("BodyPartExamined", "ViewPosition", "Laterality", "Modality"):
        setattr(ds, keyword, "<b>[x](y)")
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def test_markup_and_control_characters_in_dicom_text_never_reach_the_database(ctx, store):
    """Every header value a page shows comes from the stored fields: after de-identification they hold
    known words and codes only, so no value from a file can be read as Markdown, HTML or a terminal code."""
    from engine.cases.ingest import ingest_files

    [result] = ingest_files([("markup.dcm", _markup_dicom())], ctx)
    assert result.ok, result.error
    image = store.row("images", result.image_id)
    case = store.row("cases", result.case_id)
    for row in (image, case):
        for column, value in row.items():
            if isinstance(value, str) and column not in ("path", "created_at", "received_at", "study_key",
                                                         "sha256", "study_date"):
                assert re.fullmatch(r"[A-Za-z0-9 +_.\-]*", value), (column, value)
    assert image["study_description"] == "CHEST" and image["modality"] == "OT"  # an unreadable code is dropped
