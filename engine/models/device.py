"""The one place that chooses where a model runs: CUDA when torch sees a GPU, else the CPU. Every model
loader, job and batch worker asks here, so the same code uses a GPU when there is one."""

from __future__ import annotations

from engine.errors import EngineError

__all__ = ["choose_device", "visible_gpus", "DEVICES"]

DEVICES = ("auto", "cpu", "cuda")


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def choose_device(requested: str = "auto") -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; "cpu" and "cuda" as asked (cuda without a visible GPU
    is refused, with what to choose instead)."""
    if requested == "auto":
        return "cuda" if visible_gpus() else "cpu"
    if requested == "cuda" and not visible_gpus():
        raise EngineError("device cuda was chosen but no GPU is visible to torch; choose cpu or auto")
    if requested not in DEVICES:
        raise EngineError(f"Unknown device {requested!r}. Use {', '.join(DEVICES)}")
    return requested
