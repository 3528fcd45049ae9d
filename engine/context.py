"""The context of one request or process: the configuration, the store and the acting user, opened once
and passed to every engine action instead of a (config, store) pair.

Every action that writes says which permission it needs (`ctx.require("model.promote")`), so the
permission is checked in the engine, not only hidden in the UI. Until authentication exists every user
holds the `admin` role; the identity issue replaces `User` with an authenticated one and fills `ROLES`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from engine.config import Config
from engine.errors import PermissionDenied
from engine.store import Store, open_store

__all__ = ["PERMISSIONS", "ROLES", "User", "Context"]

# What an action may need, one name per kind of write.
PERMISSIONS = (
    "case.upload",  # ingest files into the store
    "case.analyse",  # run a model on a stored case and log the result
    "case.review",  # record a clinician's verdict
    "case.export",  # export a result (DICOM SEG, PNG) of a case
    "explain.audit",  # start a dataset-level heatmap audit
    "job.submit",  # queue a training job
    "job.manage",  # cancel or resume a job
    "model.promote",  # change the active model of a task (promote, roll back)
)
ROLES: dict[str, frozenset[str]] = {"admin": frozenset(PERMISSIONS)}


@dataclass(frozen=True)
class User:
    name: str  # what the audit log records
    role: str = "admin"

    def may(self, permission: str) -> bool:
        return permission in ROLES.get(self.role, frozenset())


@dataclass(frozen=True)
class Context:
    config: Config
    store: Store
    user: User

    @classmethod
    def open(cls, config: Config, user: str | None = None) -> Context:
        """The context for this configuration, its store migrated (idempotent), acting as `user` (default:
        the configuration's)."""
        return cls(config, open_store(config), User(user or config.user))

    @property
    def actor(self) -> str:
        """The name written into audit rows and `actor` columns."""
        return self.user.name

    def as_user(self, name: str) -> Context:
        return dataclasses.replace(self, user=dataclasses.replace(self.user, name=name))

    def require(self, permission: str) -> None:
        """Raise PermissionDenied unless the acting user holds `permission`."""
        if permission not in PERMISSIONS:
            raise ValueError(f"unknown permission {permission!r}")
        if not self.user.may(permission):
            raise PermissionDenied(f"{self.user.name} ({self.user.role}) may not {permission.replace('.', ' ')}; "
                                   "ask an administrator for the role that allows it")
