"""Installed weights: the shipped ones under weights/ and the user's under RADLENS_HOME/models/.

A model is installed when `<name>.safetensors` sits in one of those folders; its card is read from the
file itself. The active model per task is a store setting; without one, the task's shipped model is active.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from engine.config import Config
from engine.context import Context
from engine.errors import BadCheckpoint, InvalidOption, JobError, UnknownModel
from engine.models.card import ModelCard
from engine.models.checkpoint import atomic_write, read_card
from engine.store import Store

__all__ = ["InstalledModel", "SHIPPED_DIR", "install_candidate", "installed_models", "find_model", "active_model",
           "set_active", "promote", "rollback", "rollback_target", "activation_log"]

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "weights"


@dataclass(frozen=True)
class InstalledModel:
    name: str
    path: Path
    card: ModelCard
    shipped: bool

    @property
    def task(self) -> str:
        return self.card.task


def _folders(config: Config) -> list[tuple[Path, bool]]:
    return [(SHIPPED_DIR, True), (config.home / "models", False)]


def install_candidate(config: Config, weights: Path) -> str:
    """Copy a finished job's weights (and card) into RADLENS_HOME/models as a candidate; returns its name.
    An installed model is never replaced: a name already taken (shipped or installed) is refused."""
    models, name = config.home / "models", weights.stem
    if (models / weights.name).exists() or any(m.name == name for m in installed_models(config)):
        raise JobError(f"a model named {name} is already installed and is kept; these weights stay in "
                       f"{weights.parent}")
    for source in (weights, weights.with_suffix(".json")):
        atomic_write(models / source.name, lambda tmp, source=source: shutil.copyfile(source, tmp))
    return name


def installed_models(config: Config, task: str | None = None) -> list[InstalledModel]:
    """Every readable weights file, shipped first; unreadable files are skipped (the Models page lists them)."""
    found: dict[str, InstalledModel] = {}
    for folder, shipped in _folders(config):
        for path in sorted(folder.glob("*.safetensors")):
            try:
                card = read_card(path)
            except BadCheckpoint:
                continue
            if task in (None, card.task) and card.name not in found:
                found[card.name] = InstalledModel(card.name, path, card, shipped)
    return list(found.values())


def find_model(config: Config, name: str) -> InstalledModel:
    for model in installed_models(config):
        if model.name == name:
            return model
    names = ", ".join(m.name for m in installed_models(config)) or "none"
    raise UnknownModel(f"No installed model named {name!r}. Installed: {names}")


def active_model(ctx: Context, task: str = "classification") -> InstalledModel:
    chosen = ctx.store.setting(f"active_model.{task}")
    if chosen:
        try:
            return find_model(ctx.config, chosen)
        except UnknownModel:
            pass  # the chosen file was removed: fall back to the default
    available = installed_models(ctx.config, task)
    if not available:
        raise UnknownModel(f"No {task} model is installed (looked in {SHIPPED_DIR} and "
                           f"{ctx.config.home / 'models'})")
    # The default is the newest shipped version; older shipped versions stay installed for roll back.
    shipped = [m for m in available if m.shipped]
    return max(shipped, key=lambda m: _version(m.card.version)) if shipped else available[0]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else 0 for part in text.split("."))


MAX_REASON = 500


def set_active(ctx: Context, name: str, reason: str, action: str = "model.promote") -> InstalledModel:
    """Make `name` the active model of its task; the audit row records who, why, and the model it replaced
    (for roll back). A reason is required: it is what a later reader of the audit trail needs most."""
    ctx.require("model.promote")
    reason = " ".join((reason or "").split())
    if len(reason) < 10:
        raise InvalidOption("say why (at least 10 characters): the reason is kept in the audit trail with your name")
    model = find_model(ctx.config, name)
    previous = active_model(ctx, model.task)
    with ctx.store.write() as db:
        db["settings"].upsert({"key": f"active_model.{model.task}", "value": model.name}, pk="key")
        ctx.audit(db, action, "model", model.name,
                  {"task": model.task, "version": model.card.version, "previous": previous.name,
                   "previous_version": previous.card.version, "reason": reason[:MAX_REASON]})
    return model


def promote(ctx: Context, name: str, reason: str) -> InstalledModel:
    return set_active(ctx, name, reason, "model.promote")


def rollback_target(ctx: Context, task: str) -> InstalledModel | None:
    """The model that was active before the current one (from the latest promotion or roll back), if installed."""
    with ctx.store.read() as db:
        row = db.execute("SELECT detail FROM audit_log WHERE action IN ('model.promote', 'model.rollback') AND "
                         "json_extract(detail, '$.task') = ? ORDER BY id DESC LIMIT 1", [task]).fetchone()
    previous = json.loads(row[0]).get("previous") if row else None
    try:
        return find_model(ctx.config, previous) if previous else None
    except UnknownModel:
        return None


def rollback(ctx: Context, task: str, reason: str) -> InstalledModel:
    """Re-activate the model that was active before the current one of `task` (audited)."""
    target = rollback_target(ctx, task)
    if target is None:
        raise UnknownModel(f"there is no earlier {task} model to roll back to")
    return set_active(ctx, target.name, reason, "model.rollback")


def activation_log(store: Store, limit: int = 50) -> list[dict]:
    """Who promoted or rolled back which model, and when, newest first."""
    with store.read() as db:
        rows = list(db.query("SELECT at, actor, role, action, target_id AS model, detail FROM audit_log "
                             "WHERE action IN ('model.promote', 'model.rollback', 'model.activate') "
                             "ORDER BY id DESC LIMIT ?", [limit]))
    for row in rows:
        detail = json.loads(row.pop("detail") or "{}")
        row.update(version=detail.get("version"), task=detail.get("task"), replaced=detail.get("previous"),
                   reason=detail.get("reason", ""))
    return rows
