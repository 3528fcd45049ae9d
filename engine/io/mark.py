"""The SYNTHETIC mark: every generated image that leaves the engine (shown, exported) carries it in its pixels
(a black box with white text in the top-left corner) and in its metadata (a PNG text chunk). Ingest reads both
and refuses the image: a synthetic image is not a patient and must never become a case.

The pixel mark is drawn at a size fixed by the image's width, so the check redraws it and compares the corner;
it survives lossless copies and mild JPEG, not resizing (the metadata key is the second line of defence)."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, PngImagePlugin

__all__ = ["MARK_TEXT", "METADATA_KEY", "mark", "has_mark", "synthetic_png", "png_says_synthetic"]

MARK_TEXT = "SYNTHETIC"
METADATA_KEY = "RadLens-Synthetic"
_MAX_MEAN_DIFFERENCE = 24.0  # of 255, over the mark's box: JPEG at quality 75 stays under 10


def _box(width: int) -> tuple[int, int, float, int]:
    """(box height, box width, font scale, thickness) of the mark on an image `width` pixels wide."""
    height = max(10, width // 16)
    scale = cv2.getFontScaleFromHeight(cv2.FONT_HERSHEY_SIMPLEX, height - 4, 1)
    text_w = cv2.getTextSize(MARK_TEXT, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]
    return height, min(width, text_w + 4), scale, 1


def _drawn(width: int) -> np.ndarray:
    height, box_w, scale, thickness = _box(width)
    corner = np.zeros((height, box_w), np.uint8)
    cv2.putText(corner, MARK_TEXT, (2, height - 2), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness, cv2.LINE_AA)
    return corner


def mark(gray: np.ndarray) -> np.ndarray:
    """A copy of an (H, W) uint8 image with the mark in its top-left corner."""
    out = np.array(gray, dtype=np.uint8, copy=True)
    corner = _drawn(out.shape[1])
    rows = min(corner.shape[0], out.shape[0])
    out[:rows, :corner.shape[1]] = corner[:rows]
    return out


def has_mark(pixels: np.ndarray) -> bool:
    """Whether an image (gray or colour) carries the mark at its own width."""
    gray = pixels if pixels.ndim == 2 else pixels[..., :3].mean(axis=-1)
    if gray.shape[0] < 10 or gray.shape[1] < 16:
        return False
    corner = _drawn(gray.shape[1])
    if corner.shape[0] > gray.shape[0]:
        return False
    seen = gray[:corner.shape[0], :corner.shape[1]].astype(np.float32)
    return (float(np.abs(seen - corner).mean()) < _MAX_MEAN_DIFFERENCE and float(seen[corner == 0].mean()) < 40
            and float(seen[corner > 128].mean()) > 150)  # the text itself, not just a dark corner


def synthetic_png(gray: np.ndarray, description: str) -> bytes:
    """A marked PNG whose text chunk says what made it (generator, class, seed)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(METADATA_KEY, description)
    buffer = io.BytesIO()
    Image.fromarray(mark(gray)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def png_says_synthetic(data: bytes) -> bool:
    """Whether a PNG carries the synthetic metadata key (in a text chunk)."""
    if not data.startswith(b"\x89PNG"):
        return False
    return METADATA_KEY.encode() in data[:1 << 16]  # text chunks written by synthetic_png come before the pixels
