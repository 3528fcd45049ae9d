"""Wrap an 8-bit grayscale ultrasound image as a DICOM US Image, with its pixel size in a Sequence of
Ultrasound Regions (where scanners put it). Used to give the demo and the tests a real DICOM path for
images that come as PNG (HC18): the pixels and their physical size are the dataset's, unchanged."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

__all__ = ["ultrasound_dicom", "US_IMAGE_STORAGE"]

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
_CM = 3  # PhysicalUnitsX/YDirection code for centimetres


def ultrasound_dicom(gray: np.ndarray, pixel_mm: float, description: str, patient_id: str = "ANON") -> bytes:
    gray = np.ascontiguousarray(gray, dtype=np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = US_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = US_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "", patient_id, "", ""
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = "", "", "", ""
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, 1
    ds.Modality, ds.BodyPartExamined = "US", "HEAD"
    ds.ImageType, ds.PatientOrientation = ["DERIVED", "SECONDARY"], None  # a converted image; no known orientation
    ds.StudyDescription = ds.SeriesDescription = description
    ds.Manufacturer = "RadLens (wrapped image)"
    ds.Rows, ds.Columns = gray.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    region = pydicom.Dataset()
    region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags = 1, 1, 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = gray.shape[1] - 1, gray.shape[0] - 1
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = _CM
    region.PhysicalDeltaX = region.PhysicalDeltaY = float(pixel_mm) / 10
    ds.SequenceOfUltrasoundRegions = [region]
    ds.PixelData = gray.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
