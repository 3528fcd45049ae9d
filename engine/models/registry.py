"""Architecture registry: `@register_model` builders over torchvision, one place to add a network.

Every builder is called with `weights=None` (nothing is ever downloaded) and returns a network that
takes ONE grayscale channel: the first convolution is rebuilt with in_channels=1 rather than repeating
the gray image three times, because radiographs carry one channel and the 3-channel copy would triple the
first layer's work for no information. When ImageNet weights are found in the local torch cache, the RGB
filters are summed into the single channel (the same map a gray image repeated 3x would see).

Segmentation models return (N, num_classes, H, W) logits at the input's size; torchvision's, which
return a dict, are wrapped to return its "out" tensor so every caller (training, inference, Grad-CAM)
sees one kind of output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from engine.errors import UnknownModel, WeightsUnavailable

__all__ = ["OutTensor", "ModelSpec", "architectures", "register_model", "create_model", "list_models", "get_spec",
           "cam_layer", "imagenet_path"]


@dataclass(frozen=True)
class ModelSpec:
    """How to build one architecture and where its Grad-CAM target layer sits."""

    name: str
    task: str  # classification or segmentation
    build: Callable[..., nn.Module]  # (num_classes, pretrained) -> module with 1 input channel
    cam_layer: str  # dotted path of the module whose output Grad-CAM uses
    description: str


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, task: str, cam_layer: str, description: str):
    """Decorator adding a builder to the registry under `name`."""

    def wrap(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(name, task, build, cam_layer, description)
        return build

    return wrap


def list_models(task: str | None = None) -> list[str]:
    return sorted(n for n, s in _REGISTRY.items() if task is None or s.task == task)


def architectures() -> list[dict]:
    """One row per registered architecture, for the Models page."""
    return [{"Architecture": s.name, "Task": s.task, "Grad-CAM layer": s.cam_layer, "Description": s.description}
            for s in sorted(_REGISTRY.values(), key=lambda s: (s.task, s.name))]


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModel(f"Unknown model {name!r}. Available: {', '.join(list_models())}") from None


def create_model(name: str, num_classes: int = 2, pretrained: bool = False) -> nn.Module:
    """Build a registered architecture for 1-channel input; `pretrained` reads ImageNet weights locally."""
    return get_spec(name).build(num_classes=num_classes, pretrained=pretrained)


def cam_layer(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(get_spec(name).cam_layer)


def imagenet_path(arch: str) -> Path:
    """Where torchvision would cache the ImageNet weights of `arch` (never downloaded here)."""
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _load_imagenet(model: nn.Module, arch: str) -> None:
    path = imagenet_path(arch)
    if not path.is_file():
        raise WeightsUnavailable(
            f"ImageNet weights for {arch} are not in the local torch cache ({path}); "
            "copy them there or train from scratch (pretrained off)"
        )
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def _gray_conv(conv: nn.Conv2d) -> nn.Conv2d:
    gray = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     conv.dilation, conv.groups, conv.bias is not None)
    with torch.no_grad():
        gray.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            gray.bias.copy_(conv.bias)
    return gray


def _torchvision(arch: str, first_conv: str, head: str) -> Callable[..., nn.Module]:
    """A builder: torchvision `arch`, first conv made 1-channel, classifier head sized to num_classes."""

    def build(num_classes: int = 2, pretrained: bool = False) -> nn.Module:
        model = torchvision.models.get_model(arch, weights=None)
        if pretrained:
            _load_imagenet(model, arch)
        model.set_submodule(first_conv, _gray_conv(model.get_submodule(first_conv)))
        old = model.get_submodule(head)
        model.set_submodule(head, nn.Linear(old.in_features, num_classes))
        return model

    return build


# name -> (first conv, classifier head, Grad-CAM layer, description)
_CLASSIFIERS = {
    "resnet18": ("conv1", "fc", "layer4", "ResNet-18, 11 M parameters: the fast default on a CPU"),
    "resnet50": ("conv1", "fc", "layer4", "ResNet-50, 24 M parameters"),
    "densenet121": ("features.conv0", "classifier", "features", "DenseNet-121, 7 M parameters (CheXNet's network)"),
    "efficientnet_b0": ("features.0.0", "classifier.1", "features", "EfficientNet-B0, 4 M parameters"),
    "convnext_tiny": ("features.0.0", "classifier.2", "features", "ConvNeXt-Tiny, 28 M parameters"),
}
for _name, (_conv, _head, _layer, _text) in _CLASSIFIERS.items():
    register_model(_name, "classification", _layer, _text)(_torchvision(_name, _conv, _head))


class OutTensor(nn.Module):
    """A torchvision segmentation model returning only its "out" logits (not the dict)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def _no_pretrained(arch: str, pretrained: bool) -> None:
    if pretrained:
        raise WeightsUnavailable(f"{arch} has no ImageNet weights here; train it from scratch (pretrained off)")


# MONAI's residual U-Net: strided convolutions down, transposed up, two residual units per level. The
# first convolution already halves the image, which made it 5x faster to train on a CPU than BasicUNet
# (two full-resolution convolutions) at a similar size (44 vs 215 s per HC18 epoch at 256 px, 2 threads).
# Its CAM layer is the decoder at 1/4 size: the 1/2-size one carries the transposed convolution's
# stripe pattern into Grad-CAM, the 1/8 one is too coarse for a head (looked at on HC18 test images).
@register_model("unet", "segmentation", "model.1.submodule.1.submodule.2",
                "MONAI residual U-Net, 16-256 channels, 1.6 M parameters: the fast default on a CPU")
def _unet(num_classes: int = 2, pretrained: bool = False) -> nn.Module:
    from monai.networks.nets import UNet  # MONAI's networks only, never its engines

    _no_pretrained("unet", pretrained)
    return UNet(spatial_dims=2, in_channels=1, out_channels=num_classes, channels=(16, 32, 64, 128, 256),
                strides=(2, 2, 2, 2), num_res_units=2)


@register_model("lraspp_mobilenet_v3_large", "segmentation", "net.backbone.16",
                "torchvision LR-ASPP on MobileNetV3-Large, 3.2 M parameters")
def _lraspp(num_classes: int = 2, pretrained: bool = False) -> nn.Module:
    _no_pretrained("lraspp_mobilenet_v3_large", pretrained)
    net = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                    num_classes=num_classes)
    net.backbone.set_submodule("0.0", _gray_conv(net.backbone.get_submodule("0.0")))
    return OutTensor(net)


# Sequence models (engine/models/sequence.py): input (N, 1, D, H, W), slices along D. Their "CAM layer" is
# the module whose output the OOD gate pools: the pooled sequence vector, or the 3-D ResNet's last stage.
@register_model("slice_rnn", "sequence", "features",
                "Slice CNN + bidirectional GRU + attention pooling, 0.38 M parameters: the attention weights are "
                "each slice's contribution")
def _slice_rnn(num_classes: int = 2, pretrained: bool = False) -> nn.Module:
    from engine.models.sequence import SliceRNN

    _no_pretrained("slice_rnn", pretrained)
    return SliceRNN(num_classes)


@register_model("slice_mean", "sequence", "features",
                "2.5-D baseline: the same slice CNN, slices mean-pooled (no order), 0.29 M parameters")
def _slice_mean(num_classes: int = 2, pretrained: bool = False) -> nn.Module:
    from engine.models.sequence import SliceMean

    _no_pretrained("slice_mean", pretrained)
    return SliceMean(num_classes)


@register_model("resnet3d", "sequence", "layer4", "3-D baseline: MONAI 3-D ResNet-10 at half width, 3.6 M parameters")
def _resnet3d(num_classes: int = 2, pretrained: bool = False) -> nn.Module:
    from monai.networks.nets import resnet10

    _no_pretrained("resnet3d", pretrained)
    return resnet10(spatial_dims=3, n_input_channels=1, num_classes=num_classes, widen_factor=0.5)
