"""One epoch of training and batched evaluation, device-agnostic (AMP + channels_last on CUDA)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from engine.data.loaders import ImageSet, MaskSet
from engine.errors import TrainingDiverged
from engine.inference.predict import autocast, on_device
from engine.models.preprocess import Preprocessing

__all__ = ["train_one_epoch", "warmup_cosine"]


def warmup_cosine(optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_one_epoch(model: nn.Module, data: ImageSet | MaskSet, prep: Preprocessing, loss_fn: nn.Module, optimizer,
                    scheduler, scaler, augment, batch_size: int, generator: torch.Generator,
                    device: torch.device, shard: tuple[int, int] = (0, 1),
                    on_step: Callable[[int, int, float, int], None] | None = None, precision: str = "auto") -> float:
    """Mean training loss of one pass over this process's shard (rank, world size) of a shuffled order.
    Every rank draws the same permutation from its identically seeded generator and takes every world-th
    image, as DistributedSampler does. on_step(step, steps, loss, images) is called after each step."""
    model.train()
    order = torch.randperm(len(data), generator=generator)
    # Equal shards, so every rank takes the same number of steps (DDP's all-reduce needs that).
    order = order[:len(order) - len(order) % shard[1]][shard[0]::shard[1]]
    steps = -(-len(order) // batch_size)
    total, seen = 0.0, 0
    for step, start in enumerate(range(0, len(order), batch_size)):
        idx = order[start:start + batch_size]
        if len(idx) < 2:  # BatchNorm cannot train on a batch of one
            continue
        x, y = data.batch(idx, augment)
        x, y = on_device(prep.normalize(x), device), y.to(device)
        with autocast(device, precision):
            loss = loss_fn(model(x).float(), y)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"the training loss became {loss.item()} at step {step + 1} of {steps}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total += loss.item() * len(idx)
        seen += len(idx)
        if on_step:
            on_step(step + 1, steps, loss.item(), len(idx))
    return total / max(seen, 1)


