"""The context of one request or process: the configuration, the store and the acting user, opened once
and passed to every engine action instead of a (config, store) pair.

Every action says which permission it needs (`ctx.require("model.promote")`), so the permission is
checked in the engine, not only hidden in the UI. The matrix below is the one place roles are defined;
docs/security.md prints it and tests/test_identity.py checks every (role, permission) pair.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from engine.config import Config
from engine.errors import PermissionDenied
from engine.store import Store, open_store

__all__ = ["PERMISSIONS", "ROLES", "ACCOUNT_ROLES", "UNAUTHENTICATED", "User", "Context"]

# What an action may need.
PERMISSIONS = {
    "case.read": "open the worklist and view de-identified cases",
    "case.upload": "upload files into the store",
    "case.analyse": "run a model on a stored case and log the result",
    "case.review": "record a clinical verdict on a model's result",
    "case.export": "download or export a case's results (PDF report, DICOM SR, secondary capture, SEG, PNG, CSV)",
    "case.raw_output": "see a model's raw output on a case it abstained on (outside its scope), for research",
    "pacs.query": "search a PACS (the results name patients and are never stored)",
    "pacs.retrieve": "retrieve studies from a PACS into the store (de-identified on arrival)",
    "pacs.configure": "add, change or remove PACS nodes and the routing of arriving studies",
    "pacs.send": "send a case's results (SR, secondary capture, SEG) to the PACS its study came from",
    "batch.run": "run a model over a folder, zip or manifest of images on the server (a batch job) and read its "
                 "results",
    "explain.audit": "compare explanation methods and start dataset-level heatmap audits",
    "job.submit": "start a training job",
    "job.manage": "cancel or resume a training or audit job",
    "synthetic.generate": "generate synthetic images, see their memorisation checks and export them (research)",
    "model.compare": "see model cards and compare models on a held-out split",
    "model.promote": "promote or roll back the active model of a task",
    "user.manage": "add users, change roles, disable accounts, reset passwords, end sessions",
    "audit.read": "read and verify the audit trail",
}
_ALL = frozenset(PERMISSIONS)
ROLES: dict[str, frozenset[str]] = {
    # reads and analyses cases, and is the only role whose verdicts become reviews (training labels)
    "clinician": frozenset({"case.read", "case.upload", "case.analyse", "case.review", "case.export",
                            "pacs.query", "pacs.retrieve", "pacs.send", "batch.run"}),
    # works on de-identified data and models, never writes a clinical verdict or changes the active model
    "researcher": frozenset({"case.read", "case.analyse", "case.export", "case.raw_output", "explain.audit",
                             "job.submit", "batch.run", "synthetic.generate",
                             "job.manage", "model.compare"}),
    # runs the installation: people, models in service, the audit trail; reads no cases
    "admin": frozenset({"user.manage", "audit.read", "model.compare", "model.promote", "job.manage",
                        "pacs.query", "pacs.configure", "pacs.send"}),
    # not for accounts: the CLI and background jobs on the server (shell access is full access anyway)
    "system": _ALL,
    # not for accounts: RADLENS_AUTH=none on a loopback-only server; every row says who it was not
    "unauthenticated": _ALL,
}
ACCOUNT_ROLES = ("clinician", "researcher", "admin")  # the roles a person's account can hold


@dataclass(frozen=True)
class User:
    id: str  # what the audit log records: local:alice, sub@issuer, cli:root
    name: str = ""  # display name
    role: str = "system"

    def may(self, permission: str) -> bool:
        return permission in ROLES.get(self.role, frozenset())

    @property
    def label(self) -> str:
        return f"{self.name or self.id} ({self.role})"


UNAUTHENTICATED = User("unauthenticated (local)", "unauthenticated (local)", "unauthenticated")


@dataclass(frozen=True)
class Context:
    config: Config
    store: Store
    user: User

    @classmethod
    def open(cls, config: Config, user: str | None = None) -> Context:
        """The context for this configuration, its store migrated (idempotent), acting as the system user
        `user` (default: the configuration's: the CLI's login or a job's submitter)."""
        name = user or config.user
        return cls(config, open_store(config), User(name, name, "system"))

    @property
    def actor(self) -> str:
        """The id written into audit rows and `actor` columns."""
        return self.user.id

    def as_user(self, user: User | str) -> Context:
        if isinstance(user, str):
            user = User(user, user, self.user.role)
        return dataclasses.replace(self, user=user)

    def require(self, permission: str) -> None:
        """Raise PermissionDenied unless the acting user holds `permission`."""
        if permission not in PERMISSIONS:
            raise ValueError(f"unknown permission {permission!r}")
        if not self.user.may(permission):
            raise PermissionDenied(f"{self.user.label} may not {PERMISSIONS[permission]}; "
                                   "ask an administrator for the role that allows it")

    def audit(self, db, action: str, target_type: str = "", target_id: Any = "", detail: dict | None = None) -> None:
        """Append one audit row naming this user, inside the caller's write transaction."""
        self.store.audit(db, self.user.id, action, target_type, target_id, detail,
                         role=self.user.role, actor_name=self.user.name)

    def log(self, action: str, target_type: str = "", target_id: Any = "", detail: dict | None = None) -> None:
        """Append one audit row in its own transaction (reads worth recording: views, downloads, sign-ins)."""
        with self.store.write() as db:
            self.audit(db, action, target_type, target_id, detail)
