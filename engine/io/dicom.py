"""DICOM reader: validate the header before decoding, then decode through pydicom.pixels."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pydicom
import pydicom.config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID, ImplicitVRLittleEndian

from engine.config import Limits
from engine.errors import (
    EngineError,
    NotAnImage,
    TooLarge,
    TruncatedPixelData,
    UnreadableStudy,
    UnsupportedTransferSyntax,
    short_reason,
)
from engine.io.bounds import check_frame_headers, check_inflated_size
from engine.io.study import UNKNOWN_SPACING, Spacing, Study, Window

# Malformed-but-readable values are common in the wild; problems that matter surface as errors below.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

__all__ = ["read_dicom", "parse_dicom", "voi_dataset", "dicom_spacing"]

# Elements the display pipeline reads (pydicom's apply_voi_lut / apply_windowing look at these).
_VOI_KEYWORDS = (
    "PhotometricInterpretation",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "WindowCenterWidthExplanation",
    "VOILUTFunction",
    "VOILUTSequence",
)
_US_CM = 3  # PhysicalUnitsXDirection code for centimetres (PS3.3 C.8.5.5.1.15)


def parse_dicom(data: bytes, limits: Limits | None = None) -> Dataset:
    """Parse a DICOM header and pixel data element (not yet decoded). Raises UnreadableStudy, or TooLarge
    for a deflated dataset that would inflate past the upload limit."""
    check_inflated_size(data, (limits or Limits()).max_upload_bytes)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=data[128:132] != b"DICM")
    except Exception as exc:  # pydicom raises many types for a malformed stream
        raise UnreadableStudy(f"not a readable DICOM file ({short_reason(exc)})") from None
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def read_dicom(data: bytes, limits: Limits) -> Study:
    """Decode a DICOM Part 10 (or preamble-less) file into a Study."""
    ds = parse_dicom(data, limits)
    try:
        return _decode(ds, limits)
    except (EngineError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # codecs fail with arbitrary types; Rust ones panic (a BaseException)
        raise UnreadableStudy(f"DICOM pixel data could not be decoded ({short_reason(exc)})") from None


def _decode(ds: Dataset, limits: Limits) -> Study:
    _check_header(ds, limits)
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    arr = ds.pixel_array
    n_frames = _n_frames(ds)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    arr = arr.astype(arr.dtype.newbyteorder("="), copy=False)  # big-endian files -> native order
    arr = arr.reshape((n_frames, int(ds.Rows), int(ds.Columns)) + ((3,) if samples == 3 else ()))
    steps: list[str] = []
    voi_bits = int(ds.BitsStored) if "BitsStored" in ds else 8 * arr.dtype.itemsize
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        steps.append("Palette colour LUT -> RGB")
        photometric = "RGB"
        voi_bits = 16 if arr.dtype.itemsize > 1 else 8
    elif samples == 3:
        if photometric.startswith("YBR"):
            steps.append(f"{photometric} -> RGB")
        photometric = "RGB"
    elif photometric in ("MONOCHROME1", "MONOCHROME2"):
        arr, step = _modality_lut(arr, ds)
        steps += [step] if step else []
    else:
        raise UnreadableStudy(f"unsupported photometric interpretation '{photometric}'")
    voi = voi_dataset(ds)
    voi.PhotometricInterpretation, voi.BitsStored = photometric, voi_bits
    return Study(
        source_format="dicom",
        frames=arr,
        photometric=photometric,
        read_steps=tuple(steps),
        voi=voi,
        windows=_windows(ds),
        spacing=dicom_spacing(ds),
        dataset=ds,
        burned_in_risk=_burned_in_risk(ds),
    )


def _check_header(ds: Dataset, limits: Limits) -> None:
    if "PixelData" not in ds:
        kind = UID(ds.get("SOPClassUID", "")).name or "unknown object"
        raise NotAnImage(f"DICOM holds no image pixel data ({kind})")
    for keyword in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation"):
        if keyword not in ds or ds[keyword].value in (None, ""):
            raise UnreadableStudy(f"DICOM image is missing the required element {keyword}")
    rows, cols, frames = int(ds.Rows), int(ds.Columns), _n_frames(ds)
    if rows <= 0 or cols <= 0 or frames <= 0:
        raise UnreadableStudy(f"DICOM image has an empty size ({rows} x {cols}, {frames} frames)")
    if frames > limits.max_frames:
        raise TooLarge(f"{frames} frames exceeds the limit of {limits.max_frames} (RADLENS_MAX_FRAMES)")
    if rows * cols * frames > limits.max_pixels:
        raise TooLarge(
            f"{rows} x {cols} x {frames} pixels exceeds the limit of {limits.max_pixels:,} (RADLENS_MAX_PIXELS)"
        )
    tsyntax = UID(ds.file_meta.TransferSyntaxUID)
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise UnsupportedTransferSyntax(f"transfer syntax '{tsyntax.name or tsyntax}' is not supported") from None
    if not decoder.is_available:
        raise UnsupportedTransferSyntax(f"no decoder installed for '{tsyntax.name}'")
    if tsyntax.is_encapsulated:
        check_frame_headers(ds, rows, cols, frames)
    else:
        expected = get_expected_length(ds, unit="bytes")
        if len(ds.PixelData) < expected:
            raise TruncatedPixelData(
                f"pixel data is truncated: header promises {expected:,} bytes, file has {len(ds.PixelData):,}"
            )


def _n_frames(ds: Dataset) -> int:
    value = ds.get("NumberOfFrames", 1)
    return int(value) if value not in (None, "") else 1


def _modality_lut(arr: np.ndarray, ds: Dataset) -> tuple[np.ndarray, str]:
    if "ModalityLUTSequence" in ds:
        return apply_modality_lut(arr, ds), "Modality LUT sequence"
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    if slope == 1 and intercept == 0:
        return arr, ""
    return apply_modality_lut(arr, ds), f"Modality LUT: rescale x{slope:g} {intercept:+g}"


def voi_dataset(ds: Dataset) -> Dataset:
    """A small dataset holding only what the VOI stage reads, as copies: changing it (the photometric
    interpretation and bit depth after colour conversion) must never change the source header."""
    voi = Dataset()
    for keyword in _VOI_KEYWORDS:
        if keyword in ds:
            elem = ds[keyword]
            voi[elem.tag] = DataElement(elem.tag, elem.VR, copy.deepcopy(elem.value))
    return voi


def _windows(ds: Dataset) -> tuple[Window, ...]:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return ()
    centers, widths = _as_list(ds.WindowCenter), _as_list(ds.WindowWidth)
    names = _as_list(ds.get("WindowCenterWidthExplanation", []))
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    windows = []
    for i, (center, width) in enumerate(zip(centers, widths)):
        c, w = float(center), float(width)
        if math.isfinite(c) and math.isfinite(w) and w >= 1:
            windows.append(Window(c, w, function, str(names[i]) if i < len(names) else f"File window {i + 1}"))
    return tuple(windows)


def _as_list(value) -> list:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]


def dicom_spacing(ds: Dataset) -> Spacing:
    """Pixel spacing in mm: PixelSpacing, ImagerPixelSpacing, functional groups, US regions; else unknown."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        spacing = _positive_pair(ds.get(keyword))
        if spacing:
            return Spacing(spacing[0], spacing[1], keyword)
    for group in ds.get("SharedFunctionalGroupsSequence", []) or []:  # enhanced multi-frame objects
        for measures in group.get("PixelMeasuresSequence", []) or []:
            spacing = _positive_pair(measures.get("PixelSpacing"))
            if spacing:
                return Spacing(spacing[0], spacing[1], "PixelMeasuresSequence")
    for region in ds.get("SequenceOfUltrasoundRegions", []) or []:
        if region.get("PhysicalUnitsXDirection") == _US_CM and region.get("PhysicalUnitsYDirection") == _US_CM:
            pair = _positive_pair([abs(float(region.get("PhysicalDeltaY", 0))) * 10,
                                   abs(float(region.get("PhysicalDeltaX", 0))) * 10])
            if pair:
                return Spacing(pair[0], pair[1], "UltrasoundRegions")
    return UNKNOWN_SPACING


def _positive_pair(value) -> tuple[float, float] | None:
    try:
        row, col = (float(v) for v in _as_list(value)[:2])
    except (TypeError, ValueError):
        return None
    ok = all(math.isfinite(v) and v > 0 for v in (row, col))
    return (row, col) if ok else None


def _burned_in_risk(ds: Dataset) -> bool:
    return str(ds.get("BurnedInAnnotation", "")).upper() == "YES" or str(ds.get("Modality", "")) in ("US", "SC")

