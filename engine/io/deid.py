"""De-identification at ingest, after DICOM PS3.15 Annex E (Basic Application Level Confidentiality
Profile, with the Retain Longitudinal Temporal Information with Modified Dates option).

Instead of deleting a deny-list of identifying attributes, the stored header is rebuilt from an
allow-list: any attribute not named below (all names, IDs, addresses, institutions, physicians,
device serials, comments, private tags...) never reaches the stored file. Inside the few kept
sequences, the same rules apply element by element. UIDs are replaced by a salted hash (the same
study always maps to the same UID, so re-uploads land in the same case); dates are shifted by a
salted per-patient offset; descriptions are kept only after cleaning.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

__all__ = ["deidentify", "pseudo_uid", "clean_text", "DEID_METHOD"]

DEID_METHOD = "RadLens allow-list, PS3.15 E.1.1 Basic Profile + Modified Dates option"

# Kept as they are: image pixel description, display, geometry and acquisition technique.
_KEEP = frozenset(
    """
    SpecificCharacterSet ImageType SOPClassUID Modality BodyPartExamined ViewPosition Laterality
    ImageLaterality PatientOrientation Manufacturer ManufacturerModelName ConversionType
    SamplesPerPixel PhotometricInterpretation PlanarConfiguration NumberOfFrames FrameIncrementPointer
    FrameTime Rows Columns BitsAllocated BitsStored HighBit PixelRepresentation PixelAspectRatio
    SmallestImagePixelValue LargestImagePixelValue PixelPaddingValue PixelSpacing ImagerPixelSpacing
    PixelSpacingCalibrationType SliceThickness SpacingBetweenSlices SliceLocation ImagePositionPatient
    ImageOrientationPatient RescaleIntercept RescaleSlope RescaleType ModalityLUTSequence
    WindowCenter WindowWidth WindowCenterWidthExplanation VOILUTFunction VOILUTSequence
    PresentationLUTShape LossyImageCompression LossyImageCompressionRatio LossyImageCompressionMethod
    BurnedInAnnotation RecognizableVisualFeatures KVP ExposureTime XRayTubeCurrent Exposure
    SequenceOfUltrasoundRegions SharedFunctionalGroupsSequence PerFrameFunctionalGroupsSequence
    RedPaletteColorLookupTableDescriptor GreenPaletteColorLookupTableDescriptor
    BluePaletteColorLookupTableDescriptor RedPaletteColorLookupTableData
    GreenPaletteColorLookupTableData BluePaletteColorLookupTableData
    SegmentedRedPaletteColorLookupTableData SegmentedGreenPaletteColorLookupTableData
    SegmentedBluePaletteColorLookupTableData PaletteColorLookupTableUID
    StudyDate SeriesDate AcquisitionDate ContentDate AcquisitionDateTime
    StudyInstanceUID SeriesInstanceUID SOPInstanceUID FrameOfReferenceUID
    SeriesNumber InstanceNumber AcquisitionNumber PixelData FloatPixelData DoubleFloatPixelData
    """.split()
)
# Free text kept only after clean_text (Annex E "C": clean descriptors).
_CLEAN = frozenset({"StudyDescription", "SeriesDescription", "ProtocolName"})
# Values from which identifying words are collected before cleaning descriptions.
_IDENTIFYING = frozenset(
    """
    PatientID OtherPatientIDs IssuerOfPatientID AccessionNumber StudyID InstitutionName
    InstitutionAddress InstitutionalDepartmentName StationName DeviceSerialNumber PatientAddress
    PatientTelephoneNumbers MilitaryRank BranchOfService MedicalRecordLocator Occupation
    RequestingService PerformedStationAETitle ScheduledStationAETitle RegionOfResidence
    """.split()
)
_REMOVE_IN_SEQUENCES = frozenset({"PN", "LT", "ST", "UT", "LO", "SH", "AE", "UC"})
_MAX_SHIFT_DAYS = 3650


def _digest(salt: str, value: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}|{value}".encode()).digest()[:16], "big")


def pseudo_uid(salt: str, uid: str) -> str:
    """A stable replacement UID in the 2.25 (UUID-derived) root; at most 44 characters."""
    return f"2.25.{_digest(salt, uid)}"


def deidentify(ds: Dataset, salt: str) -> Dataset:
    """A new, de-identified dataset built from `ds`'s allow-listed elements (pixel data kept)."""
    patient = str(ds.get("PatientID", "") or ds.get("StudyInstanceUID", "") or "unknown")
    shift = dt.timedelta(days=1 + _digest(salt, "date:" + patient) % _MAX_SHIFT_DAYS)
    identifiers = _identifying_words(ds)
    out = Dataset()
    for elem in ds:
        keyword = elem.keyword
        if elem.tag.is_private or not keyword:
            continue
        if keyword in _CLEAN:
            cleaned = clean_text(str(elem.value or ""), identifiers)
            if cleaned:
                out[elem.tag] = elem.__class__(elem.tag, elem.VR, cleaned)
        elif keyword in _KEEP:
            out[elem.tag] = _transform(elem, salt, shift, identifiers)
    out.PatientName = f"RL-{_digest(salt, 'patient:' + patient) % 16**10:010x}"
    out.PatientID = str(out.PatientName)
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = DEID_METHOD
    out.LongitudinalTemporalInformationModified = "MODIFIED"
    out.file_meta = _file_meta(ds, out)
    return out


def _transform(elem, salt: str, shift: dt.timedelta, identifiers: set[str]):
    new = elem.__class__(elem.tag, elem.VR, elem.value)
    if elem.VR == "SQ":
        new.value = Sequence([_clean_item(item, salt, shift, identifiers) for item in elem.value])
    elif elem.VR == "UI":
        new.value = _uid(elem.value, salt)
    elif elem.VR in ("DA", "DT"):
        new.value = _shift(str(elem.value or ""), shift)
    return new


def _clean_item(item: Dataset, salt: str, shift: dt.timedelta, identifiers: set[str]) -> Dataset:
    out = Dataset()
    for elem in item:
        if elem.tag.is_private or elem.VR in _REMOVE_IN_SEQUENCES or elem.keyword in _IDENTIFYING:
            continue
        out[elem.tag] = _transform(elem, salt, shift, identifiers)
    return out


def _uid(value, salt: str):
    if isinstance(value, (list, tuple, MultiValue)):
        return [_uid(v, salt) for v in value]
    uid = UID(str(value))
    return uid if (not value or uid.name != str(uid)) else pseudo_uid(salt, str(uid))  # keep registered UIDs


def _shift(value: str, shift: dt.timedelta) -> str:
    if len(value) < 8 or not value[:8].isdigit():
        return ""
    try:
        day = dt.datetime.strptime(value[:8], "%Y%m%d").date() - shift
    except ValueError:
        return ""
    return day.strftime("%Y%m%d") + value[8:]


def _identifying_words(ds: Dataset) -> set[str]:
    words: set[str] = set()
    for elem in ds.iterall():
        if elem.VR == "PN" or elem.keyword in _IDENTIFYING:
            words.update(w.lower() for w in re.split(r"[\s^=,;/\\.\-_]+", str(elem.value)) if len(w) >= 2)
    return words


def clean_text(text: str, identifiers: set[str]) -> str:
    """Drop words that appear in identifying attributes, ID- or date-like tokens, non-printables."""
    kept = []
    for word in re.split(r"\s+", text.strip()):
        parts = [p for p in re.split(r"[\W_]+", word.lower()) if p]
        if not parts or any(p in identifiers for p in parts) or sum(c.isdigit() for c in word) >= 4:
            continue
        kept.append("".join(c for c in word if c.isprintable()))
    return " ".join(kept)[:64]


def _file_meta(source: Dataset, out: Dataset) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = out.get("SOPClassUID", UID("1.2.840.10008.5.1.4.1.1.7"))
    meta.MediaStorageSOPInstanceUID = out.get("SOPInstanceUID", pseudo_uid("radlens", "missing"))
    meta.TransferSyntaxUID = source.file_meta.TransferSyntaxUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "RADLENS_1"
    return meta
