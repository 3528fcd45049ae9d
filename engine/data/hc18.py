"""HC18 dataset matching: a case is recognised as an HC18 image by the hash of its decoded pixels, which
gives its pixel size and its ground-truth mask (the stored PNG is re-encoded, so the file hash would not
match)."""

from __future__ import annotations

import csv
import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.config import Config

__all__ = ["MANIFEST_SPACING", "DatasetMatch", "pixel_key", "dataset_match", "manifest_match"]


MANIFEST_SPACING = "hc18 manifest"


@dataclass(frozen=True)
class DatasetMatch:
    """A dataset image with the same pixels as a case: its pixel size and ground-truth mask file."""

    dataset: str
    image: str  # path inside the dataset folder
    split: str
    pixel_mm: float
    mask_path: Path
    reference_hc_mm: float

    def truth(self) -> np.ndarray:
        return cv2.imread(str(self.mask_path), cv2.IMREAD_GRAYSCALE) > 127


def pixel_key(pixels: np.ndarray) -> str:
    """The hash of decoded pixels with their shape and type (not of the file, whose encoding varies)."""
    pixels = np.ascontiguousarray(pixels)
    return hashlib.sha256(f"{pixels.shape}{pixels.dtype}".encode() + pixels.tobytes()).hexdigest()


@functools.lru_cache(maxsize=4)
def _hc18_index(folder: Path) -> dict[str, DatasetMatch]:
    """pixel hash -> match, over every image of the hc18 manifest (about 1 s for its 999 PNGs)."""
    index = {}
    with open(folder / "manifest.csv", newline="") as f:
        for row in csv.DictReader(f):
            pixels = cv2.imread(str(folder / row["image"]), cv2.IMREAD_UNCHANGED)
            if pixels is not None:
                index[pixel_key(pixels)] = DatasetMatch(
                    "hc18", row["image"], row["split"], float(row["pixel_size_mm"]), folder / row["mask"],
                    float(row["head_circumference_mm"]))
    return index


def dataset_match(config: Config, pixels: np.ndarray) -> DatasetMatch | None:
    folder = config.data_dir / "hc18" if config.data_dir else None
    if folder is None or not (folder / "manifest.csv").is_file():
        return None
    return _hc18_index(folder).get(pixel_key(pixels))


def manifest_match(path: Path) -> DatasetMatch | None:
    """The row of a `manifest.csv` in the file's folder or one above it that lists the file (CLI input)."""
    path = Path(path).resolve()
    folders = [f for f in (path.parent, path.parent.parent) if (f / "manifest.csv").is_file() and _is_hc18(f)]
    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if folders else None
    if pixels is None:
        return None
    return next((m for m in (_hc18_index(f).get(pixel_key(pixels)) for f in folders) if m), None)


def _is_hc18(folder: Path) -> bool:
    with open(folder / "manifest.csv", newline="") as f:
        return {"image", "mask", "pixel_size_mm"} <= set(next(csv.reader(f), []))
