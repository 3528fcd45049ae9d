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

from engine.config import Limits
from engine.io.volume import read_volume

__all__ = ["ultrasound_dicom", "radiograph_dicom", "volume_dicom", "volume_as_dicom",
           "encoded", "US_IMAGE_STORAGE", "CR_IMAGE_STORAGE",
           "MF_GRAYSCALE_BYTE_SC"]

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


MF_GRAYSCALE_BYTE_SC = "1.2.840.10008.5.1.4.1.1.7.2"
_SLICE_LOCATION_VECTOR, _PAGE_NUMBER_VECTOR = 0x00182005, 0x00182001


def volume_dicom(volume: np.ndarray, spacing_mm: tuple[float, float, float] | None, description: str,
                 body_part: str = "", patient_id: str = "ANON") -> bytes:
    """A (slices, rows, cols) uint8 volume as a Multi-frame Grayscale Byte Secondary Capture Image: one frame
    per slice, in order. With `spacing_mm` (slice, row, col) the slice positions go in the Slice Location
    Vector and the in-plane size in Pixel Spacing; without, the frames are only numbered (Page Number Vector)."""
    volume = np.ascontiguousarray(volume, dtype=np.uint8)
    ds = _wrapped(volume[0], MF_GRAYSCALE_BYTE_SC, "OT", body_part, description, patient_id, None)
    ds.ImageType, ds.ConversionType, ds.BurnedInAnnotation = ["DERIVED", "SECONDARY"], "WSD", "NO"
    ds.PresentationLUTShape, ds.PatientOrientation = "IDENTITY", None
    ds.NumberOfFrames = len(volume)
    if spacing_mm:
        ds.FrameIncrementPointer = _SLICE_LOCATION_VECTOR
        ds.SliceLocationVector = [round(i * spacing_mm[0], 4) for i in range(len(volume))]
        ds.PixelSpacing = [round(spacing_mm[1], 6), round(spacing_mm[2], 6)]
    else:
        ds.FrameIncrementPointer = _PAGE_NUMBER_VECTOR
        ds.PageNumberVector = list(range(1, len(volume) + 1))
    ds.Laterality = ""  # type 2C: present and empty while the side (or the body part) is not known
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.WindowCenter, ds.WindowWidth = 127.5, 256  # the full byte range: a 0/255 mask shows as black and white
    ds.PixelData = volume.tobytes()
    return encoded(ds)


def volume_as_dicom(data: bytes, limits: Limits | None = None) -> bytes:
    """An array or NIfTI volume re-written as a multi-frame DICOM (what ingest stores): the voxels and the voxel
    size only, so nothing else the file carried (NIfTI's free-text fields) can reach the store."""
    volume = read_volume(data, limits)
    return volume_dicom(volume.voxels, volume.spacing_mm, f"Volume ({volume.source_format.upper()} upload)")
