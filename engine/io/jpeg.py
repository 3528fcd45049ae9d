"""Lossless de-identification of a JPEG: drop its metadata segments, keep the compressed image as is.

Re-encoding would lose quality and, as PNG, double the file and the decode time (40 ms against 18 ms
for a 2k x 1.6k film here). EXIF (APP1), ICC/other APPn and COM segments can carry names, dates and
device serials, so only what decoding needs is kept: JFIF/JFXX APP0, Adobe APP14 (colour transform
flag), tables, frame/scan headers and the entropy-coded data.
"""

from __future__ import annotations

__all__ = ["strip_jpeg_metadata"]

_APP0, _APP14, _SOS, _EOI, _COM = 0xE0, 0xEE, 0xDA, 0xD9, 0xFE
_KEEP_APP = {_APP0: (b"JFIF\x00", b"JFXX\x00"), _APP14: (b"Adobe",)}


def _keep(marker: int, payload: bytes) -> bool:
    if marker == _COM:
        return False
    if 0xE0 <= marker <= 0xEF:
        return payload.startswith(_KEEP_APP.get(marker, (b"\x00\x00impossible",)))
    return True


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
        if _keep(marker, data[i + 4:end]):
            out.append(data[i:end])
        i = end
        if marker == _SOS:
            j = _entropy_end(data, i)
            if j < 0:
                return None
            out.append(data[i:j])
            i = j
    return None
