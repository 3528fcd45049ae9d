"""Reading studies: content sniffing, a reader per format, de-identification, display."""

from __future__ import annotations

from collections.abc import Callable

from engine.config import Limits
from engine.errors import UnsupportedFormat
from engine.io.dicom import read_dicom
from engine.io.display import presets, render
from engine.io.raster import read_raster
from engine.io.sniff import detect_format
from engine.io.study import Rendered, Spacing, Study, Window

__all__ = ["read_study", "render", "presets", "detect_format", "Study", "Rendered", "Spacing", "Window", "READERS"]

READERS: dict[str, Callable[[bytes, Limits], Study]] = {
    "dicom": read_dicom,
    "png": lambda data, limits: read_raster(data, "png", limits),
    "jpeg": lambda data, limits: read_raster(data, "jpeg", limits),
}


def read_study(data: bytes, limits: Limits | None = None) -> Study:
    """Decode one DICOM, PNG or JPEG file (zips are expanded by engine.cases.ingest)."""
    limits = limits or Limits()
    limits.check_upload(len(data))
    fmt = detect_format(data)
    if fmt not in READERS:
        raise UnsupportedFormat(f"a {fmt.upper()} archive holds files; upload it as a batch, not as one image")
    return READERS[fmt](data, limits)
