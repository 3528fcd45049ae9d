"""Reading and decoding: content sniffing, a reader per format (DICOM incl. multi-frame and series, PNG/JPEG,
volumes), codec bounds, the decoder sandbox every untrusted file is decoded in, and the display pipeline. What
is written (de-identified copies, result objects) lives in engine.deid and engine.writers."""

from __future__ import annotations

from collections.abc import Callable

from engine.config import Limits
from engine.errors import UnsupportedFormat
from engine.io.dicom import read_dicom
from engine.io.display import presets, render
from engine.io.raster import read_raster
from engine.io.sniff import detect_format
from engine.io.study import Rendered, Spacing, Study, Window
from engine.public import public_face

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

# The public face the dashboard and the pages import from (engine.public: each module loads when first asked).
__getattr__, __dir__ = public_face(__name__, {
    "study": ("Rendered", "Spacing", "Study", "Window"),
    "volume": ("Volume",),
})
