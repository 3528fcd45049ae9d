"""Recognise a file by its content, never by its extension."""

from __future__ import annotations

from engine.errors import UnsupportedFormat

__all__ = ["detect_format", "is_zip", "FORMATS"]

FORMATS = ("dicom", "png", "jpeg", "zip")
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
_ZIP = (b"PK\x03\x04", b"PK\x05\x06")
# A preamble-less DICOM stream starts with a little-endian tag of group 0002 (file meta) or
# 0008 (identifying group, for raw datasets written without meta information); either byte order.
_BARE_DICOM_GROUPS = (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


def detect_format(data: bytes) -> str:
    """Return one of FORMATS or raise UnsupportedFormat with what was found."""
    if not data:
        raise UnsupportedFormat("empty file (0 bytes)")
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(_PNG):
        return "png"
    if data.startswith(_JPEG):
        return "jpeg"
    if is_zip(data):
        return "zip"
    if len(data) >= 8 and data[:2] in _BARE_DICOM_GROUPS and _looks_like_element(data):
        return "dicom"
    raise UnsupportedFormat("not a DICOM, PNG, JPEG or ZIP file (content does not match any of them)")


def _looks_like_element(data: bytes) -> bool:
    # Explicit VR: two upper-case letters after the tag; implicit VR: a plausible 4-byte length.
    vr = data[4:6]
    if vr.isalpha() and vr.isupper():
        return True
    length = int.from_bytes(data[4:8], "little")
    return 0 < length < len(data)


def is_zip(data: bytes) -> bool:
    return data.startswith(_ZIP)
