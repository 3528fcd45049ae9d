"""Self-describing, atomic checkpoints.

Shipped/installed models are a `<name>.safetensors` file whose metadata carries the model card (arch,
model args, preprocessing, labels, calibration, thresholds, metrics, format version), plus the same card
as `<name>.json` for humans and the Models page. Training state for resuming (optimizer, scheduler) is a
torch file read back with `weights_only=True`. Every write goes to a temp file in the same folder and is
moved into place with os.replace, so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from engine.errors import BadCheckpoint, short_reason
from engine.models.card import FORMAT_VERSION, ModelCard
from engine.models.preprocess import Preprocessing
from engine.models.registry import create_model

__all__ = ["FORMAT_VERSION", "LoadedModel", "save_model", "load_model", "read_card", "sha256_of",
           "atomic_write", "remove_stale_temps", "save_state", "load_state"]

_EXTRA = "extra."  # prefix of non-parameter tensors stored with the weights (e.g. OOD statistics)


@dataclass
class LoadedModel:
    """A model ready for inference plus everything needed to reproduce and describe its outputs."""

    model: nn.Module
    card: ModelCard
    preprocessing: Preprocessing
    sha256: str
    path: Path
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def labels(self) -> list[str]:
        return self.card.labels


def atomic_write(path: Path, write: Any) -> None:
    """Call write(tmp_path), flush it to disk, then move tmp_path onto path; the temp file is removed on
    failure (a process killed mid-write leaves only a dot-named .tmp file, never a partial `path`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent)  # the rename itself survives a power cut


def _fsync(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the .tmp files a killed writer left in folder; returns them."""
    stale = sorted(Path(folder).glob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_model(path: Path, model: nn.Module, card: ModelCard | dict, extras: dict[str, torch.Tensor] | None = None,
               half: bool = False) -> str:
    """Write weights + card (safetensors and a .json beside it); returns the weights' sha256."""
    card = ModelCard.from_dict(card) if isinstance(card, dict) else card
    card = card.replace(format_version=FORMAT_VERSION, weights_file=None, weights_sha256=None).to_dict()
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if half:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    tensors.update({_EXTRA + k: v.detach().cpu().float().contiguous() for k, v in (extras or {}).items()})
    path = Path(path)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"radlens_card": json.dumps(card)}))
    sha = sha256_of(path)
    text = json.dumps({**card, "weights_file": path.name, "weights_sha256": sha}, indent=2)
    atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(text + "\n"))
    return sha


def read_card(path: Path) -> ModelCard:
    """The card stored inside a .safetensors file (the .json beside it is a copy for people)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            card = json.loads((f.metadata() or {})["radlens_card"])
    except (OSError, SafetensorError, KeyError, ValueError) as exc:
        raise BadCheckpoint(f"{Path(path).name} is not a RadLens weights file ({type(exc).__name__})") from None
    if card.get("format_version") != FORMAT_VERSION:
        raise BadCheckpoint(f"{Path(path).name}: format version {card.get('format_version')} is not {FORMAT_VERSION}")
    return ModelCard.from_dict(card)


def load_model(path: Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the architecture named in the card and load the weights (fp16 files come back as fp32)."""
    path = Path(path)
    card = read_card(path)
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise BadCheckpoint(f"{path.name}: {exc}") from None
    extras = {k[len(_EXTRA):]: v.to(device) for k, v in tensors.items() if k.startswith(_EXTRA)}
    state = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items() if not k.startswith(_EXTRA)}
    model = create_model(card.arch, **card.model_args)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise BadCheckpoint(f"{path.name}: weights do not fit {card.arch} ({str(exc).splitlines()[0]})") from None
    model.eval().to(device)
    return LoadedModel(model, card, Preprocessing.from_dict(card.preprocessing), sha256_of(path), path, extras)


def save_state(path: Path, state: dict) -> None:
    """Training state for resume: tensors and plain Python values only, so weights_only loading works.
    Serialised in memory first, so a full disk surfaces as OSError(ENOSPC) from a plain write."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(buffer.getbuffer()))


def load_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:  # torch reports a truncated zip as RuntimeError
        raise BadCheckpoint(f"{Path(path).name} is not a complete training checkpoint ({short_reason(exc)})") from None
