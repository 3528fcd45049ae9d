"""Installed generators (shipped under weights/generators/, trained ones under RADLENS_HOME/generators/) and
seeded generation. A generator is kept apart from the models of engine.models.installed: it answers no clinical
question, so it never appears as a task's model."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from engine.config import Config
from engine.errors import BadCheckpoint, InvalidOption, JobError, UnknownModel
from engine.models.card import ModelCard
from engine.models.checkpoint import atomic_write, read_card, sha256_of
from engine.models.gan import Generator
from engine.models.installed import SHIPPED_DIR

__all__ = ["LoadedGenerator", "GENERATORS_DIR", "installed_generators", "find_generator", "load_generator",
           "install_generator", "generate", "sample_grid", "MAX_PER_REQUEST"]

GENERATORS_DIR = SHIPPED_DIR / "generators"
MAX_PER_REQUEST = 512  # images one generation request may ask for (per class)


@dataclass(frozen=True)
class LoadedGenerator:
    net: Generator
    card: ModelCard
    path: Path
    sha256: str

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def labels(self) -> list[str]:
        return self.card.labels

    @property
    def size(self) -> int:
        return self.card.model_args["size"]


def _folders(config: Config) -> list[Path]:
    return [GENERATORS_DIR, config.home / "generators"]


def installed_generators(config: Config) -> list[tuple[str, Path]]:
    """(name, weights path) of every readable generator, shipped first."""
    found: dict[str, Path] = {}
    for folder in _folders(config):
        for path in sorted(folder.glob("*.safetensors")):
            try:
                card = read_card(path)
            except BadCheckpoint:
                continue
            if card.task == "generation":
                found.setdefault(card.name, path)
    return list(found.items())


def find_generator(config: Config, name: str | None = None) -> Path:
    """The named generator's weights (the first installed one when no name is given)."""
    installed = installed_generators(config)
    for found, path in installed:
        if name in (None, found):
            return path
    raise UnknownModel(f"No installed generator named {name!r}. Installed: "
                       f"{', '.join(n for n, _ in installed) or 'none'}")


def load_generator(path: Path) -> LoadedGenerator:
    card = read_card(path)
    if card.task != "generation":
        raise BadCheckpoint(f"{Path(path).name} is a {card.task} model, not a generator")
    try:
        state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    except (OSError, SafetensorError) as exc:
        raise BadCheckpoint(f"{Path(path).name}: {exc}") from None
    net = Generator(**card.model_args)
    net.load_state_dict(state)
    return LoadedGenerator(net.eval(), card, Path(path), sha256_of(path))


def install_generator(config: Config, weights: Path) -> str:
    """Copy a finished GAN job's generator (and card) into RADLENS_HOME/generators; a taken name is refused."""
    folder, name = config.home / "generators", read_card(weights).name
    if any(n == name for n, _ in installed_generators(config)):
        raise JobError(f"a generator named {name} is already installed and is kept; these weights stay in "
                       f"{weights.parent}")
    for source in (weights, weights.with_suffix(".json")):
        atomic_write(folder / source.name, lambda tmp, source=source: shutil.copyfile(source, tmp))
    return name


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0].numpy()


@torch.no_grad()
def generate(gen: LoadedGenerator, label: str, n: int, seed: int) -> np.ndarray:
    """(n, size, size) uint8 images of class `label`, unmarked (for training and measurement inside the
    engine; engine.synthetic.mark marks anything shown or written). The same (generator, label, n, seed) always gives
    the same images: latents come from a CPU generator seeded with `seed`."""
    if label not in gen.labels:
        raise InvalidOption(f"{gen.name} generates {', '.join(gen.labels)}; not {label!r}")
    if n < 1:
        raise InvalidOption(f"ask for at least one image (got {n})")
    z = torch.randn(n, gen.net.z_dim, generator=torch.Generator().manual_seed(seed))
    labels = torch.full((n,), gen.labels.index(label), dtype=torch.long)
    out = [gen.net(z[i:i + 128], labels[i:i + 128]) for i in range(0, n, 128)]
    return _to_uint8(torch.cat(out))


@torch.no_grad()
def sample_grid(net: Generator, z: torch.Tensor, labels: torch.Tensor, columns: int = 8) -> np.ndarray:
    """One uint8 image of the generator's output on fixed latents, `columns` per row (training's samples.png)."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    images = _to_uint8(net(z.to(device), labels.to(device)).cpu())
    net.train(was_training)
    rows = -(-len(images) // columns)
    side = images.shape[-1]
    grid = np.zeros((rows * side, columns * side), np.uint8)
    for i, image in enumerate(images):
        grid[(i // columns) * side:(i // columns + 1) * side, (i % columns) * side:(i % columns + 1) * side] = image
    return grid
