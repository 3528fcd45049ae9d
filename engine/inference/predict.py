"""Batched prediction over arrays of images (evaluation and training): logits plus the pooled
features the OOD gate is fitted on. Device-agnostic (AMP + channels_last on CUDA)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from engine.models.ood import pooled
from engine.models.preprocess import Preprocessing

__all__ = ["autocast", "on_device", "model_on_device", "predict", "PRECISIONS"]

PRECISIONS = ("auto", "bf16")


def on_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch moved to the device: 2-D images channels_last (faster convolutions), volumes as they are."""
    return x.to(device, memory_format=torch.channels_last) if x.dim() == 4 else x.to(device)


def model_on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """A model moved to the device: channels_last unless it holds 3-D convolutions (which have no such format)."""
    volumetric = any(p.dim() == 5 for p in model.parameters())
    return model.to(device) if volumetric else model.to(device, memory_format=torch.channels_last)


def autocast(device: torch.device, precision: str = "auto"):
    """Mixed precision: "auto" is fp16 on CUDA and none (fp32) on CPU; "bf16" is bfloat16 on either (training
    only: evaluation and inference stay fp32 on CPU, so a card's numbers do not depend on the CPU's bf16
    support)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else contextlib.nullcontext()


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, prep: Preprocessing, feature_layer: nn.Module,
            device: torch.device, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and pooled feature-layer activations (for the OOD gate) of un-augmented images."""
    model.eval()
    captured: list[torch.Tensor] = []
    handle = feature_layer.register_forward_hook(lambda m, i, o: captured.append(pooled(o).cpu()))
    logits = []
    try:
        for start in range(0, len(images), batch_size):
            x = on_device(prep.normalize(images[start:start + batch_size]), device)
            with autocast(device):
                logits.append(model(x).float().cpu())
    finally:
        handle.remove()
    return torch.cat(logits), torch.cat(captured)
