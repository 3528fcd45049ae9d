"""Hostile files built on the fly: small uploads whose headers promise far more than they hold."""

from __future__ import annotations

import io
import struct
import zlib

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

__all__ = ["deflate_bomb", "lying_frame_header", "MARKERS_SOF"]

MARKERS_SOF = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7)


def deflate_bomb(inflated_bytes: int, rows: int = 64, cols: int = 64) -> bytes:
    """A Deflated Explicit VR Little Endian secondary capture whose pixel data element inflates to
    `inflated_bytes` of zeros (about 1/1000 of that on disk)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "OT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_file_meta_info(head, meta)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    inflated_bytes += inflated_bytes % 2
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, inflated_bytes)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [b"\0" * 128, b"DICM", head.getvalue(), deflater.compress(body.getvalue() + pixel_header)]
    zeros = bytes(1 << 20)
    left = inflated_bytes
    while left:
        parts.append(deflater.compress(zeros[:min(left, len(zeros))]))
        left -= min(left, len(zeros))
    parts.append(deflater.flush())
    return b"".join(parts)


def lying_frame_header(data: bytes, rows: int = 60000, cols: int = 60000) -> bytes | None:
    """The DICOM with its first compressed frame's own header claiming rows x cols pixels (JPEG SOFn,
    JPEG-LS SOF55, JPEG 2000 SIZ) while the DICOM header is unchanged; None when no such header is found."""
    ds = pydicom.dcmread(io.BytesIO(data))
    if not ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return None
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)))
    frame = bytearray(frames[0])
    at = frame.find(b"\xff\x4f\xff\x51")
    if 0 <= at < 1 << 16:  # JPEG 2000 SIZ: Xsiz, Ysiz (offsets stay 0)
        frame[at + 8:at + 16] = struct.pack(">II", cols, rows)
    else:
        sof = next((i for i in range(2, len(frame) - 9) if frame[i] == 0xFF and frame[i + 1] in MARKERS_SOF), None)
        if sof is None:
            return None
        frame[sof + 5:sof + 9] = struct.pack(">HH", min(rows, 65535), min(cols, 65535))
    ds.PixelData = encapsulate([bytes(frame), *frames[1:]])
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()
