"""The preprocessing stored with a model, applied identically in training, evaluation and inference.

Input is what the viewer shows: the rendered 8-bit grayscale image (DICOM windowed and MONOCHROME1
inverted; colour images converted to luminance). It is resized to size x size (or size wide x height
high, for a model trained on images of one aspect, such as the HC18 ultrasounds at 400 x 270) with
OpenCV's area interpolation on the uint8 image (aspect not kept: chest films vary from 1.0 to 1.6 in
aspect and cropping would cut off lung bases or apices), scaled to [0, 1] and standardised with the training set's
mean and standard deviation. Area interpolation is the antialiased downscale. It costs 6.9 ms from a
2k film on 2 cores, where torch's antialiased bilinear takes 2.8 ms: it was chosen on a measurement
taken while a training run shared the CPU. Changing it means retraining, since it is part of the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch

from engine.errors import BadCheckpoint
from engine.io import render
from engine.io.display import to_gray_uint8
from engine.io.study import Study

__all__ = ["Preprocessing", "to_gray_uint8", "model_view"]  # to_gray_uint8 lives in engine.io.display


@dataclass(frozen=True)
class Preprocessing:
    size: int = 224  # input width in pixels (and height, unless `height` is set)
    mean: float = 0.5  # of the [0, 1] training images, after resizing
    std: float = 0.25
    resize: str = "cv2-area"  # interpolation; the only one implemented, recorded for the card
    height: int | None = None  # input height in pixels; None: square
    depth: int | None = None  # slices (frames) of a sequence model's input; None: one 2-D image

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the model's input (of each slice, for a sequence model)."""
        return (self.height or self.size, self.size)

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("height", "depth"):
            if data[key] is None:  # square 2-D: the card reads as it always has
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessing":
        prep = cls(**{k: data[k] for k in ("size", "mean", "std", "resize")}, height=data.get("height"),
                   depth=data.get("depth"))
        if prep.resize != cls.resize:
            raise BadCheckpoint(f"preprocessing resize {prep.resize!r} is not implemented (only {cls.resize!r})")
        return prep

    def summary(self) -> str:
        slices = f"{self.depth} slices of " if self.depth else ""
        return f"gray {slices}{self.size}x{self.shape[0]} {self.resize}, (x/255 - {self.mean:.4f}) / {self.std:.4f}"

    def resize_uint8(self, gray: np.ndarray) -> torch.Tensor:
        """(H, W) uint8 -> (1, rows, cols) float in [0, 1]: the part shared with training's cache. A sequence
        model's (D, H, W) volume -> (1, depth, rows, cols): each slice resized in-plane, then the slice axis."""
        if self.depth:
            return self._resize_volume(gray)
        small = cv2.resize(np.ascontiguousarray(gray), self.shape[::-1], interpolation=cv2.INTER_AREA)
        return torch.from_numpy(small).to(torch.float32).div_(255.0)[None]

    def _resize_volume(self, volume: np.ndarray) -> torch.Tensor:
        if volume.ndim != 3:
            raise ValueError(f"a sequence model needs a (slices, rows, cols) volume, got shape {volume.shape}")
        rows, cols = self.shape
        if volume.shape[1:] != (rows, cols):
            volume = np.stack([cv2.resize(np.ascontiguousarray(s), (cols, rows), interpolation=cv2.INTER_AREA)
                               for s in volume])
        if len(volume) != self.depth:  # the slice axis as the rows of a (D, rows * cols) image
            volume = cv2.resize(volume.reshape(len(volume), -1), (rows * cols, self.depth),
                                interpolation=cv2.INTER_AREA).reshape(self.depth, rows, cols)
        return torch.from_numpy(np.ascontiguousarray(volume)).to(torch.float32).div_(255.0)[None]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def __call__(self, gray: np.ndarray) -> torch.Tensor:
        """(H, W) uint8 -> (1, 1, rows, cols) model input."""
        return self.normalize(self.resize_uint8(gray))[None]


def model_view(study: Study) -> np.ndarray:
    """What every model sees of a study, in training and at inference: the first frame as the viewer
    renders it by default (its own window, MONOCHROME1 inverted), as 8-bit luminance."""
    return to_gray_uint8(render(study).image)
