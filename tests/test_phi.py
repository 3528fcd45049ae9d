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
