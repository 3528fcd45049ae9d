"""Output bounds known before decoding: a codec's own header must agree with the DICOM header.

The DICOM header's Rows x Columns x frames is checked against the limits first (engine.io.dicom); a
compressed frame then declares its size again in its own header (JPEG SOF, JPEG-LS SOF55, JPEG 2000
SIZ, the RLE segment table). A frame that claims more than the DICOM header is refused before any
codec allocates for it. A Deflated dataset is inflated with an output cap before pydicom sees it.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable

from pydicom.encaps import generate_frames
from pydicom.uid import UID

from engine.errors import TooLarge, UnreadableStudy

__all__ = ["check_inflated_size", "check_frame_headers", "FRAME_HEADERS"]

DEFLATED = "1.2.840.10008.1.2.1.99"


def check_inflated_size(data: bytes, limit: int) -> None:
    """Raise TooLarge when a Deflated Explicit VR Little Endian file inflates to more than `limit` bytes."""
    import pydicom.filereader

    if len(data) < 132 or data[128:132] != b"DICM":
        return
    stream = io.BytesIO(data)
    stream.seek(132)
    try:
        meta = pydicom.filereader._read_file_meta_info(stream)
    except Exception:  # a broken meta group is reported by the parser itself
        return
    if str(meta.get("TransferSyntaxUID", "")) != DEFLATED:
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    size, rest = 0, memoryview(data)[stream.tell():]
    try:
        for start in range(0, len(rest), 1 << 16):
            size += len(inflater.decompress(rest[start:start + (1 << 16)], limit + 1 - size))
            if size > limit or inflater.unconsumed_tail:
                raise TooLarge(f"the deflated dataset inflates to more than {limit / 2**20:,.0f} MiB "
                               "(RADLENS_MAX_UPLOAD_MB)")
    except zlib.error:
        raise UnreadableStudy("the deflated dataset is not a valid deflate stream") from None


def _jpeg_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) from the first SOFn (ITU T.81) or SOF55 (JPEG-LS) segment."""
    i = 2
    while i + 9 <= len(frame):
        if frame[i] != 0xFF:
            return None
        marker = frame[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7):
            return int.from_bytes(frame[i + 5:i + 7], "big"), int.from_bytes(frame[i + 7:i + 9], "big")
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        i += 2 + int.from_bytes(frame[i + 2:i + 4], "big")
    return None


def _j2k_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) from the SIZ segment of a JPEG 2000 codestream (raw or inside a JP2 file)."""
    at = frame.find(b"\xff\x4f\xff\x51", 0, 1 << 16)
    if at < 0 or at + 24 > len(frame):
        return None
    siz = frame[at + 4:at + 24]
    xsiz, ysiz, xo, yo = (int.from_bytes(siz[k:k + 4], "big") for k in (4, 8, 12, 16))
    return ysiz - yo, xsiz - xo


def _rle_size(frame: bytes) -> tuple[int, int] | None:
    """RLE has no size of its own: check its segment table instead (at most 15 segments, offsets in order,
    inside the frame); returns None, the DICOM header's size then applies."""
    if len(frame) < 64:
        raise UnreadableStudy("an RLE frame is shorter than its 64-byte header")
    count = int.from_bytes(frame[:4], "little")
    offsets = [int.from_bytes(frame[4 + 4 * k:8 + 4 * k], "little") for k in range(count)] if count <= 15 else []
    if not 1 <= count <= 15 or offsets[0] != 64 or offsets != sorted(offsets) or offsets[-1] > len(frame):
        raise UnreadableStudy("an RLE frame's segment table is invalid")
    return None


# Transfer syntax -> reader of a frame's own declared size.
FRAME_HEADERS: dict[str, Callable[[bytes], tuple[int, int] | None]] = {
    **dict.fromkeys(("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                     "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"), _jpeg_size),
    **dict.fromkeys(("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                     "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"), _j2k_size),
    "1.2.840.10008.1.2.5": _rle_size,
}


def check_frame_headers(ds, rows: int, cols: int, frames: int) -> None:
    """Every compressed frame's declared size must fit the DICOM header's Rows x Columns."""
    reader = FRAME_HEADERS.get(str(UID(ds.file_meta.TransferSyntaxUID)))
    if reader is None:
        return
    try:
        encoded = list(generate_frames(ds.PixelData, number_of_frames=frames))
    except Exception as exc:
        raise UnreadableStudy(f"the encapsulated pixel data is malformed ({type(exc).__name__})") from None
    for number, frame in enumerate(encoded, 1):
        size = reader(frame)
        if size is not None and (size[0] > rows or size[1] > cols):
            raise TooLarge(f"frame {number} declares {size[0]} x {size[1]} pixels in its own header, more than "
                           f"the DICOM header's {rows} x {cols}")
