"""The SYNTHETIC mark: every generated image that leaves the engine (shown, exported) carries it in its pixels
(a black box with white text in the top-left corner) and in its metadata (a PNG text chunk). Ingest reads both
and refuses the image: a synthetic image is not a patient and must never become a case.

The pixel mark is drawn at a size fixed by the image's width, so the check redraws it and compares the corner;
it survives lossless copies and mild JPEG, not resizing (the metadata key is the second line of defence).

Both are easy to remove (crop the corner, paint over it, re-save), so every generated image also leaves a
likeness print (engine.synthetic.prints): its centre (the mark's corners left out) at 48 x 48, zero mean, unit
norm. An upload whose print correlates with a generated one at LIKENESS_REFUSE or more, flipped or rotated,
in either polarity, is refused. Measured (`python -m bench.laundering`, docs/synthetic.md): flips, rotations,
inversion, resizing, a 1-pixel crop, painting over the mark, 16-bit, JPEG and noise all stay above 0.99;
1,883 real chest films stay at or below 0.915. A crop of 3 % or more of the border is not caught."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, PngImagePlugin

__all__ = ["MARK_TEXT", "METADATA_KEY", "mark", "has_mark", "synthetic_png", "png_says_synthetic", "thumbnail",
           "likeness", "LIKENESS_REFUSE"]

MARK_TEXT = "SYNTHETIC"
METADATA_KEY = "RadLens-Synthetic"
_MAX_MEAN_DIFFERENCE = 24.0  # of 255, over the mark's box: JPEG at quality 75 stays under 10
_THUMB, _MARGIN = 64, 8  # the print: the 64 x 64 thumbnail's centre (a corner mark is 4 rows of it)
LIKENESS_REFUSE = 0.97  # correlation with a generated image's print at which an upload is refused


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


def thumbnail(pixels: np.ndarray) -> np.ndarray:
    """Any image (gray or colour, any depth) as a 64 x 64 float32 thumbnail: what a likeness print is made of."""
    gray = pixels.astype(np.float32) if pixels.ndim == 2 else pixels[..., :3].astype(np.float32).mean(axis=-1)
    return cv2.resize(gray, (_THUMB, _THUMB), interpolation=cv2.INTER_AREA)


def likeness(thumb: np.ndarray) -> np.ndarray:
    """(8, 2304) float32: the prints of the thumbnail as it is, flipped and rotated (the eight ways to lay a square
    down); the first is the upright one."""
    prints = []
    turned = [thumb, thumb[:, ::-1], thumb[::-1], thumb[::-1, ::-1]]
    for flipped in turned + [t.T for t in turned]:
        centre = np.ascontiguousarray(flipped[_MARGIN:-_MARGIN, _MARGIN:-_MARGIN], dtype=np.float32).ravel()
        centre = centre - centre.mean()
        norm = float(np.linalg.norm(centre))
        prints.append(centre / norm if norm > 1e-6 else centre)
    return np.stack(prints)
