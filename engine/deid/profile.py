"""De-identification at ingest, after DICOM PS3.15 Annex E: the Basic Application Level Confidentiality
Profile with the Clean Descriptors and the Retain Longitudinal Temporal Information with Modified Dates
options. The same rules apply at every nesting level, inside every sequence item.

The rules go by what a value can hold, so an attribute nobody listed cannot leak:
- private tags, unknown public tags (VR UN), overlays, curves and binary data other than pixels and LUTs
  are removed; so are the profile's identifying numbers and codes (age, size, weight, sex ...);
- text (PN, LO, SH, ST, LT, UT, UC, UR, AE, AS) is emptied (zero length: valid for type 2 and 3
  attributes, so the object stays conformant), except a few descriptors reduced to known imaging
  words (engine.deid.vocabulary) and the codes of coded concepts;
- code strings (CS) are kept when they look like codes (upper case, digits, space, underscore);
- UIDs are replaced by keyed pseudonyms (registered UIDs are kept), dates are shifted by a keyed
  per-patient offset, birth and death dates are emptied; times of day are kept (the Modified Dates
  option: with the date moved they no longer point at a day);
- numbers and pixel data are kept.
Pseudonyms are HMAC-SHA256 under a secret key kept outside the database (engine.keys), 128 bits each:
nobody with the database and files but not the key can test a guessed MRN or UID against them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
)

from engine.deid.vocabulary import keep_known_words

__all__ = ["deidentify", "pseudo_uid", "DEID_METHOD"]

# DeidentificationMethod (LO, at most 64 characters per value).
DEID_METHOD = ("RadLens rules by value type, every nesting level",
               "PS3.15 E.1.1 Basic Profile", "Clean Descriptors Option", "Modified Dates Option")
# PS3.16 CID 7050 De-identification Method.
_DEID_CODES = (("113100", "Basic Application Confidentiality Profile"),
               ("113105", "Clean Descriptors Option"),
               ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))

_TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC", "UR", "AE", "AS"})
_BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
# Binary data kept: the image and the lookup tables that display it.
_BINARY_KEEP = frozenset("""
    PixelData FloatPixelData DoubleFloatPixelData LUTData RedPaletteColorLookupTableData
    GreenPaletteColorLookupTableData BluePaletteColorLookupTableData AlphaPaletteColorLookupTableData
    SegmentedRedPaletteColorLookupTableData SegmentedGreenPaletteColorLookupTableData
    SegmentedBluePaletteColorLookupTableData SegmentedAlphaPaletteColorLookupTableData
    LargeRedPaletteColorLookupTableData LargeGreenPaletteColorLookupTableData LargeBluePaletteColorLookupTableData
    """.split())
# Descriptors kept after cleaning (Clean Descriptors option): known imaging words only.
_DESCRIPTORS = frozenset("""
    StudyDescription SeriesDescription ProtocolName BodyPartExamined ManufacturerModelName Manufacturer
    RequestedProcedureDescription PerformedProcedureStepDescription WindowCenterWidthExplanation
    ViewName PositionReferenceIndicator LUTExplanation SoftwareVersions PulseSequenceName DeviceSerialNumber
    SegmentLabel SegmentDescription SegmentAlgorithmName LUTLabel
    """.split())
# Type 1 in some IOD (enhanced objects): an emptied value becomes this dummy (Annex E action D).
_DUMMY = "REMOVED"
_DUMMY_WHEN_EMPTY = frozenset({"Manufacturer", "ManufacturerModelName", "SoftwareVersions", "PulseSequenceName",
                               "DeviceSerialNumber", "SegmentLabel", "SegmentAlgorithmName", "LUTLabel"})
# Coding schemes of published terminologies: a CodeMeaning from one of them is a concept's name.
_STANDARD_SCHEMES = frozenset({"DCM", "SCT", "SRT", "SNM3", "LN", "UCUM", "FMA", "RADLEX", "NCIt", "NCIT", "UMLS",
                               "ACR"})
# Coded concepts: a code value or scheme is a short token, not free text.
_CODE_PARTS = frozenset({"CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "LongCodeValue",
                         "MappingResource", "ContextIdentifier", "ContextGroupVersion", "RescaleType",
                         "ModalityLUTType", "StackID"})
_CODE = re.compile(r"^[!-\[\]-~]{1,64}$")  # one printable token, no space or backslash (UCUM: mL/min, {ratio})
_CODE_STRING = re.compile(r"^[A-Z0-9_ ]{0,16}$")
# Annex E identifying attributes of non-text types: removed (X) or emptied (Z, type 2).
_REMOVE = frozenset("""
    PatientAge PatientSize PatientWeight PatientSexNeutered PregnancyStatus SmokingStatus EthnicGroup
    PatientBirthTime PatientDeathDateInAlternativeCalendar PatientBirthDateInAlternativeCalendar
    LastMenstrualDate OtherPatientIDsSequence ReferencedPatientSequence ReferencedPatientPhotoSequence
    PatientInsurancePlanCodeSequence PatientPrimaryLanguageCodeSequence MedicalAlerts Allergies
    InstitutionCodeSequence InstitutionalDepartmentTypeCodeSequence ReferringPhysicianIdentificationSequence
    PhysiciansOfRecordIdentificationSequence PerformingPhysicianIdentificationSequence
    PhysiciansReadingStudyIdentificationSequence OperatorIdentificationSequence EncapsulatedDocument
    RequestAttributesSequence
    """.split())
# Values whose words are collected (besides every person name) and never kept in a cleaned descriptor.
_IDENTIFYING = frozenset("""
    PatientID OtherPatientIDs IssuerOfPatientID AccessionNumber StudyID InstitutionName
    InstitutionAddress InstitutionalDepartmentName StationName DeviceSerialNumber PatientAddress
    PatientTelephoneNumbers MilitaryRank BranchOfService MedicalRecordLocator Occupation
    RequestingService PerformedStationAETitle ScheduledStationAETitle RegionOfResidence
    """.split())
_EMPTY = frozenset({"PatientSex", "PatientBirthDate", "PatientDeathDate"})
# Type 2 attributes of the Patient and General Study modules: emptied when the source lacks them too.
_TYPE2 = ("PatientBirthDate", "PatientSex", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
_MAX_SHIFT_DAYS = 3650


def _mac(key: bytes, value: str) -> bytes:
    return hmac.new(key, value.encode(), hashlib.sha256).digest()


def pseudo_uid(key: bytes, uid: str) -> str:
    """A stable replacement UID in the 2.25 (UUID-derived) root: 128 keyed bits, at most 44 characters."""
    return f"2.25.{int.from_bytes(_mac(key, 'uid:' + uid)[:16], 'big')}"


class _Rules:
    """One de-identification pass: the key, the patient's date shift and the words that identify them."""

    def __init__(self, ds: Dataset, key: bytes):
        self.key = key
        patient = str(ds.get("PatientID", "") or ds.get("StudyInstanceUID", "") or "unknown")
        self.pseudonym = "RL-" + _mac(key, "patient:" + patient)[:16].hex()
        self.shift = dt.timedelta(days=1 + int.from_bytes(_mac(key, "date:" + patient)[:8], "big") % _MAX_SHIFT_DAYS)
        self.identifiers = _identifying_words(ds)

    def dataset(self, source: Dataset) -> Dataset:
        out = Dataset()
        for elem in source:
            new = self.element(elem)
            if new is not None:
                out[elem.tag] = new
        if "CodeMeaning" in source:
            out.CodeMeaning = self.code_meaning(source)
        return out

    def element(self, elem: DataElement) -> DataElement | None:
        keyword, vr = elem.keyword, elem.VR
        if elem.tag.is_private or not keyword or elem.tag.group in _REPEATING_GROUPS or keyword in _REMOVE:
            return None
        if vr == "UN":  # a known attribute whose type the file did not say: kept empty, never read
            return DataElement(elem.tag, dictionary_VR(elem.tag), None)
        if keyword in _EMPTY:
            return DataElement(elem.tag, vr, None)
        if vr == "SQ":
            return DataElement(elem.tag, vr, Sequence([self.dataset(item) for item in elem.value or []]))
        if vr in _BINARY_VRS:
            return DataElement(elem.tag, vr, elem.value) if keyword in _BINARY_KEEP else None
        if vr == "UI":
            return DataElement(elem.tag, vr, _each(elem.value, self.uid))
        if vr in ("DA", "DT"):
            return DataElement(elem.tag, vr, _each(elem.value, self.date))
        if keyword in _DESCRIPTORS:
            limit = 16 if vr in ("CS", "SH") else 64
            value = _each(elem.value, lambda v: self.words(v, vr, limit))
            if not value and elem.value and keyword in _DUMMY_WHEN_EMPTY:
                value = _DUMMY
            return DataElement(elem.tag, vr, value)
        if keyword in _CODE_PARTS:
            return DataElement(elem.tag, vr, _each(elem.value, self.code))
        if vr in _TEXT_VRS:
            return DataElement(elem.tag, vr, None)
        if vr == "CS":
            return DataElement(elem.tag, vr, _each(elem.value, self.code_string))
        return DataElement(elem.tag, vr, elem.value)

    def uid(self, value: str) -> str:
        uid = UID(value)
        return value if (not value or uid.name != str(uid)) else pseudo_uid(self.key, value)  # keep registered

    def date(self, value: str) -> str:
        if len(value) < 8 or not value[:8].isdigit():
            return ""
        try:
            day = dt.datetime.strptime(value[:8], "%Y%m%d").date() - self.shift
        except ValueError:
            return ""
        return day.strftime("%Y%m%d") + value[8:]

    def words(self, value: str, vr: str, limit: int) -> str:
        kept = keep_known_words(value, self.identifiers, limit)
        return kept.upper() if vr == "CS" else kept

    def code_string(self, value: str) -> str:
        text = value.strip()
        named = len(text) >= 4 and text.lower() in self.identifiers  # short codes (CT, HU, L) collide with names
        return text if _CODE_STRING.match(text) and not named else ""

    def code(self, value: str) -> str:
        return value if _CODE.match(value) and value.lower() not in self.identifiers else ""

    def code_meaning(self, item: Dataset) -> str:
        """A coded concept's meaning: kept when its scheme is a published terminology and it holds no
        identifying word or number; otherwise reduced to known words."""
        meaning = str(item.get("CodeMeaning", "") or "")
        words = {w.lower() for w in re.findall(r"[A-Za-z0-9]+", meaning)}
        if (str(item.get("CodingSchemeDesignator", "")) in _STANDARD_SCHEMES and not words & self.identifiers
                and not re.search(r"\d{4}", meaning)):
            return meaning[:64]
        return keep_known_words(meaning, self.identifiers)


# Overlays (60xx), curves (50xx) and overlay-like repeating groups: can carry burned-in text.
_REPEATING_GROUPS = frozenset(range(0x5000, 0x5100, 2)) | frozenset(range(0x6000, 0x6100, 2))


def _each(value, fn):
    """Apply fn to each value of a (possibly multi-valued) element; positions are kept (an emptied value
    stays, empty, where it was: value 3 of ImageType means the same thing after cleaning)."""
    if isinstance(value, (list, tuple, MultiValue)):
        values = [fn(str(x)) for x in value]
        return values if any(values) else ""
    return fn(str(value)) if value not in (None, "") else value


def deidentify(ds: Dataset, key: bytes) -> Dataset:
    """A new, de-identified dataset from `ds` (pixel data kept), marked as PS3.15 describes."""
    if len(key) < 16:
        raise ValueError("de-identification needs a secret key of at least 128 bits")
    rules = _Rules(ds, key)
    out = rules.dataset(ds)
    # Laterality (General Series, type 2C) is required, empty being valid, while the body part is unknown;
    # enhanced objects carry it per frame instead.
    unknown_part = not out.get("BodyPartExamined") and "SharedFunctionalGroupsSequence" not in out
    laterality = ("Laterality",) if unknown_part else ()
    for keyword in _TYPE2 + laterality:
        if keyword not in out:  # type 2: present and empty
            setattr(out, keyword, None)
    out.PatientName = rules.pseudonym + "^"  # one component, the caret says so (PS3.5 6.2.1.2)
    out.PatientID = rules.pseudonym
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = list(DEID_METHOD)
    out.DeidentificationMethodCodeSequence = Sequence([_code(value, meaning) for value, meaning in _DEID_CODES])
    out.LongitudinalTemporalInformationModified = "MODIFIED"
    out.file_meta = _file_meta(ds, out)
    return out


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item


def _identifying_words(ds: Dataset) -> frozenset[str]:
    """Words of every name and identifying text anywhere in the file: never kept, even if a known term."""
    words: set[str] = set()
    for elem in ds.iterall():
        if elem.VR == "PN" or elem.keyword in _IDENTIFYING:
            words.update(w.lower() for w in re.split(r"[\s^=,;/\\.\-_]+", str(elem.value or "")) if len(w) >= 2)
    return frozenset(words)


def _file_meta(source: Dataset, out: Dataset) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = out.get("SOPClassUID", UID("1.2.840.10008.5.1.4.1.1.7"))
    meta.MediaStorageSOPInstanceUID = out.get("SOPInstanceUID", "2.25.1")
    # A deflated dataset is stored inflated: a stored file is re-read in the serving process, never inflated there.
    syntax = UID(source.file_meta.TransferSyntaxUID)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if syntax == DeflatedExplicitVRLittleEndian else syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "RADLENS_1"
    return meta
