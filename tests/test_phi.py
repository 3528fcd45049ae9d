"""PHI: a marker in every identifying attribute of the profile must appear nowhere under RADLENS_HOME."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pydicom
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
    for path in (p for p in stored if p.is_file()):
        content = path.read_bytes()
        for needle in (MARKER, MARKER_UID, MARKER_DATE, "Jane"):
            assert needle.encode() not in content, f"{needle} found in {path.relative_to(home)}"
    dcm = next(p for p in stored if p.suffix == ".dcm")
    ds = pydicom.dcmread(dcm)
    assert ds.PatientIdentityRemoved == "YES" and str(ds.StudyDescription) == "CHEST"
    assert ds.StudyDate != MARKER_DATE and len(ds.StudyDate) == 8  # shifted, not dropped


def test_uids_are_replaced_consistently_per_salt():
    from engine.io.deid import deidentify

    ds = pydicom.dcmread(io.BytesIO(_phi_dicom()))
    a, b, c = deidentify(ds, "salt-1"), deidentify(ds, "salt-1"), deidentify(ds, "salt-2")
    assert a.StudyInstanceUID == b.StudyInstanceUID != c.StudyInstanceUID
    assert a.StudyInstanceUID.startswith("2.25.") and len(a.StudyInstanceUID) <= 64
    assert a.SOPClassUID == ds.SOPClassUID  # registered UIDs are kept
    assert a.StudyDate == b.StudyDate and a.SeriesDate == a.StudyDate  # one shift per patient


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
