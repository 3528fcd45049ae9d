"""Grad-CAM family explanations (pytorch-grad-cam): the method registry, the single-pass CAM used at
inference, and batched versions of the two many-forward methods.

The usual pattern runs one forward for the prediction, then grad-cam runs a second forward and a backward
through every parameter. Here the class score and the CAM come from ONE forward: a hook turns the target
layer's output into a leaf tensor that requires grad, and the model's parameters do not, so autograd
records only the layers after it and the backward runs through nothing else. The map equals grad-cam's
standard one (tests/test_explain.py).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    EigenGradCAM,
    FullGrad,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    RandomCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.ablation_layer import AblationLayer
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from engine.errors import UnknownMethod

__all__ = ["Method", "METHODS", "BASELINE", "CAM_METHODS", "Progress", "compute_cam", "target_layers",
           "inference_copy", "single_pass_cam", "standard_cam", "head_only_backward"]

Progress = Callable[[int, int], None]  # (done, total) forwards of a many-forward method


class BatchedScoreCAM(ScoreCAM):
    """grad-cam's ScoreCAM with the masked copies built one batch at a time (not all channels at once), run
    through `inference_model` when set (a BN-folded channels_last copy: same scores, faster on CPU), with
    progress. The weights are the library's: a softmax over channels of the target score of the input
    masked by each upsampled, min-max normalised activation map."""

    batch_size = 32
    inference_model: nn.Module | None = None
    progress: Progress | None = None

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        model = self.inference_model or self.model
        with torch.no_grad():
            maps = F.interpolate(torch.from_numpy(activations).to(self.device), size=input_tensor.shape[-2:],
                                 mode="bilinear", align_corners=True)  # = the library's UpsamplingBilinear2d
            low, high = maps.amin(dim=(2, 3), keepdim=True), maps.amax(dim=(2, 3), keepdim=True)
            maps = (maps - low) / (high - low + 1e-8)
            n, channels = maps.shape[:2]
            weights = []
            for i, target in enumerate(targets):
                scores: list[float] = []
                for start in range(0, channels, self.batch_size):
                    batch = input_tensor[i][None] * maps[i, start:start + self.batch_size, None]
                    scores += [float(target(o)) for o in model(batch.contiguous(memory_format=torch.channels_last))]
                    if self.progress:
                        self.progress(i * channels + len(scores), n * channels)
                weights.append(torch.softmax(torch.tensor(scores), dim=-1))
            return torch.stack(weights).numpy()


class TailAblationCAM(AblationCAM):
    """grad-cam's AblationCAM (its AblationLayer zeroes one channel per copy) where each batch of ablated
    copies runs the layers BEFORE the target once, at batch size 1: a forward hook swaps the target's output
    for the copies, so only the layers after it see the batch. Same scores; for a last-stage target 512 full
    forwards become 512 head evaluations. Falls back to the library's full forwards when the layers after
    the target need the front's batch (a concatenation across the target, as in DenseNet blocks)."""

    progress: Progress | None = None

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        try:
            return self._tail_weights(input_tensor, target_layer, targets, activations)
        except RuntimeError:
            return super().get_cam_weights(input_tensor, target_layer, targets, activations, grads)

    def _tail_weights(self, input_tensor, target_layer, targets, activations):
        ablation = AblationLayer()
        acts = torch.from_numpy(activations).to(self.device)
        n, channels = acts.shape[:2]
        weights = np.zeros((n, channels), np.float32)
        handle = target_layer.register_forward_hook(lambda module, inputs, output: ablation(output))
        try:
            with torch.no_grad():
                for i, target in enumerate(targets):
                    original = float(target(self.outputs[i]))
                    for start in range(0, channels, self.batch_size):
                        ablation.indices = np.arange(start, min(start + self.batch_size, channels))
                        ablation.set_next_batch(i, acts, len(ablation.indices))
                        scores = np.float32([float(target(o)) for o in self.model(input_tensor[i:i + 1])])
                        weights[i, ablation.indices] = (original - scores) / original  # the library's weight
                        if self.progress:
                            self.progress(i * channels + int(ablation.indices[-1]) + 1, n * channels)
        finally:
            handle.remove()
        return weights


@dataclass(frozen=True)
class Method:
    """One explanation method: grad-cam's class and how RadLens runs it."""

    name: str
    title: str
    cam: type[BaseCAM]
    single_pass: bool  # gradient methods: the CAM comes out of the head-only backward
    forwards: str  # cost, shown to the user
    layer_free: bool = False  # FullGrad uses every bias layer, not the chosen one


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("gradcam", "Grad-CAM", GradCAM, True, "1"),
    Method("gradcam++", "Grad-CAM++", GradCAMPlusPlus, True, "1"),
    Method("xgradcam", "XGrad-CAM", XGradCAM, True, "1"),
    Method("hirescam", "HiRes-CAM", HiResCAM, True, "1"),
    Method("layercam", "Layer-CAM", LayerCAM, True, "1"),
    Method("eigencam", "Eigen-CAM", EigenCAM, False, "1, no gradient"),
    Method("eigengradcam", "EigenGrad-CAM", EigenGradCAM, True, "1"),
    Method("fullgrad", "FullGrad", FullGrad, False, "1 + full backward to the input", layer_free=True),
    Method("ablationcam", "Ablation-CAM", TailAblationCAM, False, "1 per channel (after the layer only)"),
    Method("scorecam", "Score-CAM", BatchedScoreCAM, False, "1 per channel"),
    Method("random", "Random (baseline)", RandomCAM, True, "1"),
)}
BASELINE = "random"  # grad-cam's RandomCAM: random channel weights; what "better than chance" is measured against
CAM_METHODS: dict[str, type[BaseCAM]] = {name: m.cam for name, m in METHODS.items()}


def target_layers(model: nn.Module, default: str) -> list[str]:
    """Layers a CAM can use: the architecture's default (its last stage) first, then every conv layer from
    the deepest to the first."""
    convs = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    return [default] + [name for name in reversed(convs) if name != default]


def inference_copy(model: nn.Module) -> nn.Module:
    """A frozen eval copy with BatchNorm folded into the convolutions (torch.fx), channels_last: the same
    outputs to float precision, for the many no-gradient forwards of Score-CAM and the faithfulness
    metrics. Models fx cannot trace are copied unfused."""
    from torch.fx.experimental.optimization import fuse

    try:
        fast = fuse(model.eval())
    except Exception:  # noqa: BLE001 - tracing failures come in many types; the plain copy is always right
        fast = copy.deepcopy(model)
    return fast.to(memory_format=torch.channels_last).eval().requires_grad_(False)


def compute_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, method: str, target: int | Callable, *,
                batch_size: int = 32, progress: Progress | None = None,
                inference_model: nn.Module | None = None) -> np.ndarray:
    """(N, H, W) maps in [0, 1] of `method` for class `target` (or any grad-cam target object, such as
    SemanticSegmentationTarget for a mask), always through grad-cam's `with` form so its hooks are
    released. The model's parameters must not require grad (Classifier freezes them); with a target
    object and a gradient method, wrap the call in `head_only_backward(layer)`."""
    if method not in METHODS:
        raise UnknownMethod(f"Unknown explanation method {method!r}. Available: {', '.join(METHODS)}")
    spec = METHODS[method]
    if spec.single_pass and isinstance(target, int):
        return single_pass_cam(model, layer, x, lambda _: target, method)[1]
    layers = [] if spec.layer_free else [layer]
    gradients = torch.enable_grad() if method == "fullgrad" else nullcontext()
    with gradients, spec.cam(model=model, target_layers=layers) as cam:
        cam.batch_size = batch_size
        cam.progress = progress
        cam.inference_model = inference_model
        chosen = ClassifierOutputTarget(target) if isinstance(target, int) else target
        return cam(input_tensor=x, targets=[chosen] * len(x))


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
    if not METHODS[method].single_pass:
        raise UnknownMethod(f"{method} cannot run in a single pass; use compute_cam for it")
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


