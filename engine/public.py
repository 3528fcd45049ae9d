"""A package's public face without importing its modules up front (PEP 562): the dashboard and the pages write
`from engine.cases import list_worklist`, and engine/cases/worklist.py is imported when that name is first asked
for. Nothing heavy is imported by a package's `__init__` (the decoder sandbox imports engine.cases.ingest alone,
without torch), and inside the engine modules keep importing each other's modules directly."""

from __future__ import annotations

import importlib
from collections.abc import Callable

__all__ = ["public_face"]


def public_face(package: str, modules: dict[str, tuple[str, ...]]) -> tuple[Callable, Callable]:
    """(`__getattr__`, `__dir__`) for `package`, whose public names live in its submodules: {module: names}."""
    where = {name: f"{package}.{module}" for module, names in modules.items() for name in names}

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(where[name]), name)

    def __dir__() -> list[str]:
        return sorted(where)

    return __getattr__, __dir__
