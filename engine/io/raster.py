"""PNG (8/16-bit) and JPEG reader. Pillow's decompression-bomb check becomes a TooLarge error."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps
from pydicom.dataset import Dataset

from engine.config import Limits
from engine.errors import TooLarge, UnreadableStudy, short_reason
from engine.io.study import Study

__all__ = ["read_raster"]

# Pillow mode -> (mode to convert to, bits stored). 16-bit grayscale stays 16-bit.
_MODES = {
    "1": ("L", 8),
    "L": ("L", 8),
    "LA": ("L", 8),
    "P": ("RGB", 8),
    "PA": ("RGB", 8),
    "RGB": ("RGB", 8),
    "RGBA": ("RGB", 8),
    "CMYK": ("RGB", 8),
    "YCbCr": ("RGB", 8),
    "I;16": ("I;16", 16),
    "I;16B": ("I;16", 16),
    "I;16L": ("I;16", 16),
    "I": ("I", 16),
}


def read_raster(data: bytes, fmt: str, limits: Limits) -> Study:
    """Decode a PNG or JPEG into a Study (one frame)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > limits.max_pixels:
                raise TooLarge(
                    f"{width} x {height} pixels exceeds the limit of {limits.max_pixels:,} (RADLENS_MAX_PIXELS)"
                )
            image.load()
            image = ImageOps.exif_transpose(image)
    except (TooLarge, MemoryError):  # out of memory is the decoder cap (the sandbox says so), not a broken file
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TooLarge(f"image is a decompression bomb (over {limits.max_pixels:,} pixels)") from None
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError... for broken streams
        raise UnreadableStudy(f"not a readable {fmt.upper()} image ({short_reason(exc)})") from None
    if image.mode not in _MODES:
        raise UnreadableStudy(f"unsupported {fmt.upper()} pixel mode '{image.mode}'")
    mode, bits = _MODES[image.mode]
    arr = np.asarray(image.convert(mode) if image.mode != mode else image)
    steps = [f"{fmt.upper()} {image.mode}"]
    if arr.ndim == 3 and _channels_equal(arr):
        arr, steps = arr[..., 0], steps + ["equal RGB channels -> grayscale"]
    if mode == "I":
        arr, bits = _fit_16bit(arr)
    photometric = "RGB" if arr.ndim == 3 else "MONOCHROME2"
    return Study(
        source_format=fmt,
        frames=np.ascontiguousarray(arr)[None, ...],
        photometric=photometric,
        read_steps=tuple(steps),
        voi=_voi(photometric, bits),
        windows=(),
        burned_in_risk=True,  # exported images often carry burned-in markers and text
    )


def _channels_equal(arr: np.ndarray) -> bool:
    return bool(np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]))


def _fit_16bit(arr: np.ndarray) -> tuple[np.ndarray, int]:
    if arr.min() < 0 or arr.max() > 65535:
        raise UnreadableStudy("32-bit PNG values outside the 16-bit range are not supported")
    return arr.astype(np.uint16), 16


def _voi(photometric: str, bits: int) -> Dataset:
    voi = Dataset()
    voi.PhotometricInterpretation = photometric
    voi.BitsStored = bits
    voi.PixelRepresentation = 0
    return voi

