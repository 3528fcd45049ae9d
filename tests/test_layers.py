"""The layers of docs/architecture.md, checked on the source: each module imports only from its own package
or from a lower layer, and the named boundaries hold (pure compute never touches the store or cases; the
dashboard and the use cases never import the training program)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. A package may import itself and anything on a lower line, never a higher one.
LAYERS = (
    ("engine",),  # the package's own __init__ (a docstring)
    ("engine.errors",),
    ("engine.config",),
    ("engine.keys", "engine.audit"),
    ("engine.store", "engine.io", "engine.metrics"),
    ("engine.deid", "engine.writers"),
    ("engine.context",),
    ("engine.models", "engine.identity"),
    ("engine.inference",),
    ("engine.draw", "engine.data", "engine.stored"),
    ("engine.tasks",),
    ("engine.jobs",),
    ("engine.synthetic",),
    ("engine.cases",),
    ("engine.pacs",),
    ("engine.batch",),
    ("engine.train",),
    ("engine.__main__",),
    ("dashboard",),
    ("pages",),
)
FORBIDDEN = {
    "engine.inference": ("engine.store", "engine.cases", "engine.jobs"),
    "engine.cases": ("engine.train",),
    "engine.pacs": ("engine.train",),
    "engine.batch": ("engine.train",),
    "dashboard": ("engine.train",),
    "pages": ("engine.train",),
}


def _package(module: str) -> str:
    """The layer entry a dotted module belongs to ('engine.cases.worklist' -> 'engine.cases')."""
    matches = [name for layer in LAYERS for name in layer if module == name or module.startswith(name + ".")]
    return max(matches, key=len, default="")


RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return [name for name in found if name.split(".")[0] in ("engine", "dashboard", "pages")]


SOURCES = sorted(p for folder in ("engine", "dashboard", "pages") for p in (ROOT / folder).rglob("*.py"))


def test_every_engine_module_sits_in_a_named_layer():
    loose = [_module_name(p) for p in SOURCES if not _package(_module_name(p))]
    assert loose == [], "add these modules' package to LAYERS (and docs/architecture.md)"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_only_go_down(path):
    own = _package(_module_name(path))
    upward, forbidden = [], []
    for name in _imports(path):
        target = _package(name)
        if not target or target == own:
            continue
        if RANK[target] > RANK[own]:
            upward.append(name)
        if any(target == f or name.startswith(f + ".") for f in FORBIDDEN.get(own, ())):
            forbidden.append(name)
    assert upward == [], f"{own} imports a higher layer"
    assert forbidden == [], f"{own} must not import these"


def test_the_layer_test_can_fail():
    """A known-bad import is caught: the rules are not vacuous."""
    assert RANK[_package("engine.train.run")] > RANK[_package("engine.cases.reviews")]
    assert "engine.store" in FORBIDDEN["engine.inference"]
