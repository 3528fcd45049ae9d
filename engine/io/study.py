"""What a reader returns: the modality-native pixels plus everything needed to display them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

__all__ = ["Window", "Spacing", "Study", "Rendered", "UNKNOWN_SPACING"]


@dataclass(frozen=True)
class Window:
    """A VOI window in modality units (e.g. HU for CT)."""

    center: float
    width: float
    function: str = "LINEAR"  # LINEAR, LINEAR_EXACT or SIGMOID (PS3.3 C.11.2.1.3)
    name: str = ""

    @property
    def label(self) -> str:
        core = f"C {self.center:g} / W {self.width:g}"
        return f"{self.name} ({core})" if self.name else core


@dataclass(frozen=True)
class Spacing:
    """Physical size of one pixel. `known` is False when the file gives none (measure in pixels)."""

    row_mm: float | None
    col_mm: float | None
    source: str  # PixelSpacing, ImagerPixelSpacing, PixelMeasuresSequence, UltrasoundRegions or unknown

    @property
    def known(self) -> bool:
        return self.row_mm is not None and self.col_mm is not None

    def describe(self) -> str:
        if not self.known:
            return "unknown: measurements are in pixels"
        return f"{self.row_mm:.4g} x {self.col_mm:.4g} mm ({self.source})"


UNKNOWN_SPACING = Spacing(None, None, "unknown")


@dataclass(frozen=True, eq=False)
class Study:
    """One decoded image file (one or more frames).

    `frames` holds modality-native values for the models: (n, rows, cols) after the Modality LUT for
    grayscale (HU for CT), or (n, rows, cols, 3) RGB for colour. Display is a separate step
    (engine.io.display.render), never baked into these values.
    """

    source_format: str  # dicom, png or jpeg
    frames: np.ndarray
    photometric: str  # MONOCHROME1, MONOCHROME2 or RGB (after any colour conversion)
    read_steps: tuple[str, ...]  # steps applied while reading (Modality LUT, YBR->RGB, palette)
    voi: Dataset  # the VOI/LUT elements the display needs (windows, VOI LUT sequence, bit depth)
    windows: tuple[Window, ...]  # the file's own windows, in file order
    spacing: Spacing = UNKNOWN_SPACING
    dataset: Dataset | None = None  # the parsed DICOM (header + undecoded pixel data element)
    burned_in_risk: bool = False  # may carry burned-in text (BurnedInAnnotation YES, US, SC, photos)

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def is_color(self) -> bool:
        return self.frames.ndim == 4

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])


@dataclass(frozen=True, eq=False)
class Rendered:
    """An 8-bit display image and the exact steps that produced it."""

    image: np.ndarray  # uint8, (rows, cols) or (rows, cols, 3)
    steps: tuple[str, ...]
    window: Window | None  # the window applied, None for colour images or VOI LUT sequences
