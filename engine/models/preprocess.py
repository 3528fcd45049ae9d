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
from engine.io.study import Study

__all__ = ["Preprocessing", "to_gray_uint8", "model_view"]


@dataclass(frozen=True)
class Preprocessing:
    size: int = 224  # input width in pixels (and height, unless `height` is set)
    mean: float = 0.5  # of the [0, 1] training images, after resizing
    std: float = 0.25
    resize: str = "cv2-area"  # interpolation; the only one implemented, recorded for the card
    height: int | None = None  # input height in pixels; None: square

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the model's input."""
        return (self.height or self.size, self.size)

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.height is None:  # square: the card reads as it always has
            del data["height"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessing":
        prep = cls(**{k: data[k] for k in ("size", "mean", "std", "resize")}, height=data.get("height"))
        if prep.resize != cls.resize:
            raise BadCheckpoint(f"preprocessing resize {prep.resize!r} is not implemented (only {cls.resize!r})")
        return prep

    def summary(self) -> str:
        return f"gray {self.size}x{self.shape[0]} {self.resize}, (x/255 - {self.mean:.4f}) / {self.std:.4f}"

    def resize_uint8(self, gray: np.ndarray) -> torch.Tensor:
        """(H, W) uint8 -> (1, rows, cols) float in [0, 1]: the part shared with training's cache."""
        small = cv2.resize(np.ascontiguousarray(gray), self.shape[::-1], interpolation=cv2.INTER_AREA)
        return torch.from_numpy(small).to(torch.float32).div_(255.0)[None]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def __call__(self, gray: np.ndarray) -> torch.Tensor:
        """(H, W) uint8 -> (1, 1, rows, cols) model input."""
        return self.normalize(self.resize_uint8(gray))[None]


def to_gray_uint8(image: np.ndarray) -> np.ndarray:
    """A rendered (H, W) or (H, W, 3) uint8 image as (H, W) luminance (ITU-R BT.601 weights)."""
    if image.ndim == 2:
        return image
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(image[..., :3].astype(np.float32) @ weights + 0.5, 0, 255).astype(np.uint8)


def model_view(study: Study) -> np.ndarray:
    """What every model sees of a study, in training and at inference: the first frame as the viewer
    renders it by default (its own window, MONOCHROME1 inverted), as 8-bit luminance."""
    return to_gray_uint8(render(study).image)
