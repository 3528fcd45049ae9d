"""Installed weights: the shipped ones under weights/ and the user's under RADLENS_HOME/models/.

A model is installed when `<name>.safetensors` sits in one of those folders; its card is read from the
file itself. The active model per task is a store setting; without one, the shipped model is active.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.config import Config
from engine.errors import BadCheckpoint, UnknownModel
from engine.models.checkpoint import read_card
from engine.store import Store

__all__ = ["InstalledModel", "SHIPPED_DIR", "installed_models", "find_model", "active_model", "set_active"]

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "weights"
DEFAULT = {"classification": "cxr-pneumonia-resnet18", "segmentation": "hc18-unet"}


@dataclass(frozen=True)
class InstalledModel:
    name: str
    path: Path
    card: dict
    shipped: bool

    @property
    def task(self) -> str:
        return self.card["task"]


def _folders(config: Config) -> list[tuple[Path, bool]]:
    return [(SHIPPED_DIR, True), (config.home / "models", False)]


def installed_models(config: Config, task: str | None = None) -> list[InstalledModel]:
    """Every readable weights file, shipped first; unreadable files are skipped (the Models page lists them)."""
    found: dict[str, InstalledModel] = {}
    for folder, shipped in _folders(config):
        for path in sorted(folder.glob("*.safetensors")):
            try:
                card = read_card(path)
            except BadCheckpoint:
                continue
            if task in (None, card["task"]) and card["name"] not in found:
                found[card["name"]] = InstalledModel(card["name"], path, card, shipped)
    return list(found.values())


def find_model(config: Config, name: str) -> InstalledModel:
    for model in installed_models(config):
        if model.name == name:
            return model
    names = ", ".join(m.name for m in installed_models(config)) or "none"
    raise UnknownModel(f"No installed model named {name!r}. Installed: {names}")


def active_model(config: Config, store: Store, task: str = "classification") -> InstalledModel:
    chosen = store.setting(f"active_model.{task}")
    if chosen:
        try:
            return find_model(config, chosen)
        except UnknownModel:
            pass  # the chosen file was removed: fall back to the default
    available = installed_models(config, task)
    for model in available:
        if model.name == DEFAULT.get(task):
            return model
    if not available:
        raise UnknownModel(f"No {task} model is installed (looked in {SHIPPED_DIR} and {config.home / 'models'})")
    return available[0]


def set_active(config: Config, store: Store, name: str) -> InstalledModel:
    model = find_model(config, name)
    with store.write() as db:
        db["settings"].upsert({"key": f"active_model.{model.task}", "value": model.name}, pk="key")
        Store.audit(db, config.user, "model.activate", "model", model.name, {"version": model.card["version"]})
    return model
