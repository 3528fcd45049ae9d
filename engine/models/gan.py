"""A class-conditional GAN small enough to train on a laptop CPU: the generative model of the product brief.

Generator: z and a class embedding -> 4 x 4 -> (nearest upsample + 3x3 conv + BatchNorm + ReLU) per doubling ->
tanh image in [-1, 1]. Upsample + conv rather than transposed convolutions, which print a checkerboard on
smooth anatomy. Discriminator: spectrally normalised strided convolutions with a projection head (the class
embedding's inner product with the features, Miyato & Koyama 2018), trained with the hinge loss. DiffAugment
(Zhao et al. 2020) applies the same differentiable translation / cutout / brightness / contrast to real and
generated images before the discriminator, so a few hundred images per class do not let it memorise them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = ["Generator", "Discriminator", "diff_augment", "GAN_ARCH"]

GAN_ARCH = "dcgan-sn-projection"


class Generator(nn.Module):
    def __init__(self, z_dim: int = 128, classes: int = 2, width: int = 32, size: int = 64):
        super().__init__()
        doublings = int(math.log2(size // 4))
        if 4 * 2 ** doublings != size:
            raise ValueError(f"the generator's size must be 4 x a power of two, got {size}")
        self.z_dim, self.classes, self.size = z_dim, classes, size
        top = width * 2 ** (doublings - 1)
        self.embed = nn.Embedding(classes, z_dim)
        self.project = nn.Sequential(nn.Linear(2 * z_dim, top * 16), nn.BatchNorm1d(top * 16), nn.ReLU(True))
        self.top = top
        blocks, channels = [], top
        for _ in range(doublings):
            out = max(channels // 2, width // 2)
            blocks += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels, out, 3, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(True)]
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.to_image = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.project(torch.cat([z, self.embed(labels)], 1)).view(len(z), self.top, 4, 4)
        return torch.tanh(self.to_image(self.blocks(h)))


class Discriminator(nn.Module):
    """Spectrally normalised strided 4x4 convolutions down to 4 x 4, the minibatch standard deviation as one more
    channel (Karras et al. 2018: a collapsed batch has none; DiffAugment's per-image jitter gives it some back, so
    this alone did not stop collapse and the training program adds a mode-seeking term), and a projection head."""

    def __init__(self, classes: int = 2, width: int = 32, size: int = 64):
        super().__init__()
        layers, channels, out, side = [], 1, width, size
        while side > 4:
            layers += [spectral_norm(nn.Conv2d(channels, out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2, True)]
            channels, out, side = out, out * 2, side // 2
        self.features = nn.Sequential(*layers)
        self.head = spectral_norm(nn.Linear((channels + 1) * 16, 1))
        self.embed = spectral_norm(nn.Embedding(classes, (channels + 1) * 16))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        spread = h.float().std(dim=0).mean().to(h.dtype).expand(len(h), 1, *h.shape[2:])
        h = torch.cat([h, spread], 1).flatten(1)
        return self.head(h).squeeze(1) + (self.embed(labels) * h).sum(1)


def diff_augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Brightness, contrast, translation (up to 1/8 of the side) and cutout (a square of half the side), drawn
    per image; differentiable in x. Grayscale, so no saturation; no flips (a mirrored chest changes meaning)."""
    n, device = len(x), x.device

    def draw(*shape):
        return torch.rand(*shape, generator=generator).to(device)

    x = x + (draw(n, 1, 1, 1) - 0.5)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (draw(n, 1, 1, 1) + 0.5) + mean
    side = x.shape[-1]
    shift = side // 8
    dx, dy = ((draw(2, n) * (2 * shift + 1)).long() - shift).unbind(0)
    grid_y, grid_x = torch.meshgrid(torch.arange(side, device=device), torch.arange(side, device=device),
                                    indexing="ij")
    ys = (grid_y[None] + dy[:, None, None].to(device)).clamp(-1, side)  # -1 and side index the zero padding
    xs = (grid_x[None] + dx[:, None, None].to(device)).clamp(-1, side)
    padded = F.pad(x, (1, 1, 1, 1))
    batch = torch.arange(n, device=device)[:, None, None]
    x = padded[batch, 0, ys + 1, xs + 1][:, None]
    cy, cx = (draw(2, n, 1, 1) * side).long().unbind(0)  # the cut-out square's centre
    inside = ((grid_y[None] - cy).abs() < side // 4) & ((grid_x[None] - cx).abs() < side // 4)
    return x * (~inside)[:, None].to(x.dtype)
