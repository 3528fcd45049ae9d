"""Wrap an 8-bit grayscale image as DICOM: an ultrasound as a US Image with its pixel size in a Sequence of
Ultrasound Regions (where scanners put it), a radiograph as a CR Image. Used to give the demo, the tests and
the PACS benchmark a real DICOM path for images that come as PNG/JPEG (HC18, Kermany): the pixels and their
physical size are the dataset's, unchanged."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

__all__ = ["ultrasound_dicom", "radiograph_dicom", "encoded", "US_IMAGE_STORAGE", "CR_IMAGE_STORAGE"]

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
_CM = 3  # PhysicalUnitsX/YDirection code for centimetres


def _wrapped(gray: np.ndarray, sop_class: str, modality: str, body_part: str, description: str,
             patient_id: str, study_uid: str | None) -> pydicom.Dataset:
    gray = np.ascontiguousarray(gray, dtype=np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "", patient_id, "", ""
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = "", "", "", ""
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, 1
    ds.Modality, ds.BodyPartExamined = modality, body_part
    ds.StudyDescription = ds.SeriesDescription = description
    ds.Manufacturer = "RadLens (wrapped image)"
    ds.Rows, ds.Columns = gray.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = gray.tobytes()
    return ds


def encoded(ds: pydicom.Dataset) -> bytes:
    """A dataset as the bytes of a DICOM file (preamble, file meta)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def ultrasound_dicom(gray: np.ndarray, pixel_mm: float, description: str, patient_id: str = "ANON") -> bytes:
    ds = _wrapped(gray, US_IMAGE_STORAGE, "US", "HEAD", description, patient_id, None)
    ds.ImageType, ds.PatientOrientation = ["DERIVED", "SECONDARY"], None  # a converted image; no known orientation
    region = pydicom.Dataset()
    region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags = 1, 1, 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = gray.shape[1] - 1, gray.shape[0] - 1
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = _CM
    region.PhysicalDeltaX = region.PhysicalDeltaY = float(pixel_mm) / 10
    ds.SequenceOfUltrasoundRegions = [region]
    return encoded(ds)


def radiograph_dicom(gray: np.ndarray, description: str, patient_id: str = "ANON", study_uid: str | None = None,
                     **attributes) -> pydicom.Dataset:
    """A frontal chest CR (PA view) of `gray`, as a dataset (callers add or change `attributes`, then encode
    with `encoded`)."""
    ds = _wrapped(gray, CR_IMAGE_STORAGE, "CR", "CHEST", description, patient_id, study_uid)
    ds.ViewPosition, ds.PatientOrientation, ds.ImageType = "PA", ["L", "F"], ["DERIVED", "SECONDARY"]
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds
