"""Shape rules: the engine never imports streamlit, pages stay thin, CI runs the README's test command (the
README itself: tests/test_docs.py; the layers: tests/test_layers.py)."""

import ast
from pathlib import Path

from dashboard.registry import PAGES

ROOT = Path(__file__).resolve().parent.parent


def test_engine_never_imports_streamlit():
    offenders = []
    for path in (ROOT / "engine").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "streamlit"]
    assert offenders == []


def test_pages_stay_thin():
    for page in PAGES:
        assert len(page.path.read_text().splitlines()) <= 60, page.script


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
