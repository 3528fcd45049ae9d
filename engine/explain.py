"""Grad-CAM family explanations (pytorch-grad-cam) and the single-pass CAM used at inference.

The usual pattern runs one forward for the prediction, then grad-cam runs a second forward and a backward
through every parameter. Here the class score and the CAM come from ONE forward: a hook turns the target
layer's output into a leaf tensor that requires grad, and the model's parameters do not, so autograd
records only the head (pooling + classifier) and the backward runs through nothing else. The map equals
grad-cam's standard GradCAM (tests/test_explain.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import cv2
import numpy as np
import torch
from pytorch_grad_cam import (AblationCAM, EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM,
                              XGradCAM)
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from engine.errors import EngineError

__all__ = ["CAM_METHODS", "COLORMAPS", "single_pass_cam", "standard_cam", "overlay", "fit_within",
           "head_only_backward", "DISPLAY_MAX_SIDE"]

# grad-cam's own classes by name; methods that need no gradient or many forwards are listed for the
# Explainability page but the single pass only makes sense for gradient methods.
CAM_METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM, "xgradcam": XGradCAM,
    "layercam": LayerCAM, "eigencam": EigenCAM, "scorecam": ScoreCAM, "ablationcam": AblationCAM,
}
DISPLAY_MAX_SIDE = 1280  # overlays on screen: a 2k film is shown at most this large
SINGLE_PASS = ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam")

COLORMAPS = {"jet": cv2.COLORMAP_JET, "inferno": cv2.COLORMAP_INFERNO, "viridis": cv2.COLORMAP_VIRIDIS,
             "turbo": cv2.COLORMAP_TURBO}


@contextmanager
def head_only_backward(layer: nn.Module) -> Iterator[None]:
    """While active, `layer`'s output is a fresh leaf requiring grad: gradients stop there.

    Must be registered BEFORE the CAM object's own hooks so that grad-cam records the leaf.
    """
    # The clone makes the returned tensor a non-leaf, so heads that apply in-place ops (DenseNet's ReLU)
    # still work; autograd stops at the detached leaf just behind it.
    handle = layer.register_forward_hook(lambda module, inputs, output: output.detach().requires_grad_().clone())
    try:
        yield
    finally:
        handle.remove()


class _Target:
    """A grad-cam target that picks its class from the logits themselves (e.g. at a calibrated threshold)."""

    def __init__(self, choose: Callable[[torch.Tensor], int]):
        self.choose = choose
        self.chosen: int | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        self.chosen = self.choose(logits.detach())
        return logits[self.chosen]


def single_pass_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor,
                    choose: Callable[[torch.Tensor], int] = lambda z: int(z.argmax()),
                    method: str = "gradcam") -> tuple[torch.Tensor, np.ndarray, list[int], torch.Tensor]:
    """One forward: (logits (N, K), CAM (N, H, W) in [0, 1], chosen class per image, layer activations).

    The model's parameters must not require grad (Classifier freezes them); `choose` maps one image's
    logits to the class whose evidence the CAM shows.
    """
    if method not in SINGLE_PASS:
        raise EngineError(f"{method} cannot run in a single pass; use one of {', '.join(SINGLE_PASS)}")
    targets = [_Target(choose) for _ in range(len(x))]
    with torch.enable_grad(), head_only_backward(layer), CAM_METHODS[method](model=model, target_layers=[layer]) as cam:
        maps = cam(input_tensor=x, targets=targets)
        logits = cam.outputs.detach()
        activations = cam.activations_and_grads.activations[0]
    return logits, maps, [t.chosen for t in targets], activations


def standard_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: int,
                 method: str = "gradcam") -> tuple[torch.Tensor, np.ndarray]:
    """The typical pattern (the baseline): a plain forward for the prediction, then grad-cam's own forward
    and full backward. The model's parameters must require grad."""
    with torch.no_grad():
        logits = model(x)
    with CAM_METHODS[method](model=model, target_layers=[layer]) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(target)] * len(x))
    return logits, maps


def overlay(gray: np.ndarray, cam: np.ndarray, alpha: float = 0.4, colormap: str = "jet",
            max_side: int | None = None) -> np.ndarray:
    """An RGB uint8 image: the CAM (any size, values in [0, 1]) resized onto the gray image. Each pixel's
    blend weight is alpha x its CAM value, so regions without evidence keep the radiograph unchanged
    instead of being tinted by the colormap's low end. `max_side` first shrinks the image (area
    interpolation) to what a screen shows; the CAM's own resolution is 1/32 of the model input anyway."""
    if colormap not in COLORMAPS:
        raise EngineError(f"Unknown colormap {colormap!r}. Available: {', '.join(COLORMAPS)}")
    gray = fit_within(gray, max_side) if max_side else gray
    h, w = gray.shape[:2]
    heat = cv2.resize(cam.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    np.clip(heat, 0.0, 1.0, out=heat)
    colour = cv2.cvtColor(cv2.applyColorMap(cv2.convertScaleAbs(heat, alpha=255), COLORMAPS[colormap]),
                          cv2.COLOR_BGR2RGB)
    weight = heat * np.float32(alpha)
    return cv2.blendLinear(colour, cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB), weight, 1.0 - weight)


def fit_within(image: np.ndarray, max_side: int) -> np.ndarray:
    """The image shrunk (area interpolation, aspect kept) so its longer side is at most max_side."""
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return image
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
