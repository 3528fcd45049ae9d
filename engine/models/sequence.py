"""Networks over image sequences (the slices of a volume, the frames of a cine loop): input (N, 1, D, H, W).

`SliceRNN` is the recurrent network: a small 2-D CNN encodes each slice, a bidirectional GRU reads the
slice features in order, and attention pooling weighs the slices into one vector. The attention weights
pass through the `attention` module (an identity), so one forward hook reads each slice's contribution
from the same pass that gives the prediction; the pooled vector passes through `features`, where the OOD
gate's hook reads it. `SliceMean` is the 2.5-D baseline: the same encoder, slices mean-pooled, no order.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SliceEncoder", "SliceRNN", "SliceMean"]


def _stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                         nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SliceEncoder(nn.Module):
    """(N, 1, D, H, W) -> (N, D, width * 8): four conv stages (the last three halve the slice), global pooling."""

    def __init__(self, width: int = 16):
        super().__init__()
        channels = [width, width * 2, width * 4, width * 8]
        self.stages = nn.Sequential(_stage(1, channels[0], 1),
                                    *(_stage(a, b, 2) for a, b in zip(channels, channels[1:])))
        self.out_features = channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, d, h, w = x.shape
        slices = x.transpose(1, 2).reshape(n * d, 1, h, w)
        return self.stages(slices).mean(dim=(2, 3)).reshape(n, d, -1)


class SliceRNN(nn.Module):
    def __init__(self, num_classes: int = 2, width: int = 16, hidden: int = 64, dropout: float = 0.3):
        super().__init__()
        self.encoder = SliceEncoder(width)
        self.rnn = nn.GRU(self.encoder.out_features, hidden, batch_first=True, bidirectional=True)
        self.score = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.attention = nn.Identity()  # (N, D) slice weights summing to 1: the per-slice contribution
        self.features = nn.Identity()  # (N, 2 * hidden) pooled sequence: what the OOD gate measures
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states, _ = self.rnn(self.encoder(x))
        weights = self.attention(torch.softmax(self.score(states).squeeze(-1).float(), dim=1).to(states.dtype))
        return self.head(self.features((weights.unsqueeze(-1) * states).sum(dim=1)))


class SliceMean(nn.Module):
    def __init__(self, num_classes: int = 2, width: int = 16, dropout: float = 0.3):
        super().__init__()
        self.encoder = SliceEncoder(width)
        self.features = nn.Identity()
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.encoder.out_features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.encoder(x).mean(dim=1)))
