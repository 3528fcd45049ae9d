"""Lossless de-identification of a JPEG: drop its metadata segments, keep the compressed image as is.

Re-encoding would lose quality and, as PNG, double the file and the decode time (40 ms against 18 ms
for a 2k x 1.6k film here). EXIF (APP1), ICC/other APPn and COM segments can carry names, dates and
device serials, so only what decoding needs is kept: JFIF/JFXX APP0, Adobe APP14 (colour transform
flag), tables, frame/scan headers and the entropy-coded data. The two kept segments are cut to their
standard lengths (JFIF without its thumbnail), so no padding after their fields can carry text either.
The same applies to the JPEG frames inside an encapsulated DICOM (strip_encapsulated_jpeg_metadata).
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import UID

from engine.errors import UnreadableStudy

__all__ = ["strip_jpeg_metadata", "strip_encapsulated_jpeg_metadata", "JPEG_SYNTAXES"]

_APP0, _APP14, _SOS, _EOI, _COM = 0xE0, 0xEE, 0xDA, 0xD9, 0xFE
# DICOM transfer syntaxes whose frames are JPEG (ITU T.81) streams: baseline, extended, lossless.
JPEG_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                           "1.2.840.10008.1.2.4.70"})


def _standard(marker: int, segment: bytes) -> bytes | None:
    """The segment to keep (cut to its standard length), or None to drop it."""
    payload = segment[4:]
    if marker == _APP0 and payload.startswith(b"JFIF\x00") and len(payload) >= 14:
        return b"\xff\xe0\x00\x10" + payload[:12] + b"\x00\x00"  # version, units, density; no thumbnail
    if marker == _APP14 and payload.startswith(b"Adobe") and len(payload) >= 12:
        return b"\xff\xee\x00\x0e" + payload[:12]  # version, flags, colour transform
    if marker == _COM or 0xE0 <= marker <= 0xEF:
        return None
    return segment


def _entropy_end(data: bytes, start: int) -> int:
    """Index of the first marker after entropy-coded data (0xFF not followed by 0x00 or RSTn)."""
    j = start
    while True:
        j = data.find(b"\xff", j)
        if j < 0 or j + 1 >= len(data):
            return -1
        nxt = data[j + 1]
        if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:
            j += 1
            continue
        return j


def strip_jpeg_metadata(data: bytes) -> bytes | None:
    """The JPEG without metadata segments, or None when the stream cannot be parsed safely."""
    if not data.startswith(b"\xff\xd8"):
        return None
    out = [b"\xff\xd8"]
    i = 2
    while i + 1 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == _EOI:
            out.append(b"\xff\xd9")
            return b"".join(out)
        if i + 4 > len(data):
            return None
        end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if end > len(data):
            return None
        kept = _standard(marker, data[i:end])
        if kept is not None:
            out.append(kept)
        i = end
        if marker == _SOS:
            j = _entropy_end(data, i)
            if j < 0:
                return None
            out.append(data[i:j])
            i = j
    return None


def strip_encapsulated_jpeg_metadata(ds: Dataset) -> None:
    """Remove APPn/COM segments from every JPEG frame of an encapsulated DICOM, in place, when its transfer
    syntax is a JPEG one; the decoded pixels must come out identical, or the file is refused."""
    if UID(ds.file_meta.TransferSyntaxUID) not in JPEG_SYNTAXES or "PixelData" not in ds:
        return
    n = int(ds.get("NumberOfFrames", 1) or 1)
    frames = list(generate_frames(ds.PixelData, number_of_frames=n))
    stripped = [strip_jpeg_metadata(frame) for frame in frames]
    if any(s is None for s in stripped):
        raise UnreadableStudy("a JPEG frame inside the DICOM could not be parsed to remove its metadata")
    if all(len(a) == len(b) for a, b in zip(frames, stripped)):
        return
    before = ds.pixel_array
    ds.PixelData = encapsulate(stripped, has_bot=False)
    ds["PixelData"].is_undefined_length = True
    if not np.array_equal(ds.pixel_array, before):
        raise UnreadableStudy("removing metadata from a JPEG frame inside the DICOM changed its pixels")
