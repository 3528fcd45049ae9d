"""Shape rules: the engine never imports streamlit; the README documents every page and command."""

import ast
from pathlib import Path

from dashboard.registry import PAGES
from engine.__main__ import COMMANDS

ROOT = Path(__file__).resolve().parent.parent


def test_engine_never_imports_streamlit():
    offenders = []
    for path in (ROOT / "engine").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "streamlit"]
    assert offenders == []


def test_readme_names_every_page_command_and_the_disclaimer():
    readme = (ROOT / "README.md").read_text()
    assert "For research use only. Not for use in diagnostic procedures." in readme
    assert "make run" in readme and "make test" in readme
    for page in PAGES:
        assert f"**{page.title}**" in readme, page.title
    for command in COMMANDS:
        assert f"python -m engine {command}" in readme, command


def test_pages_stay_thin():
    for page in PAGES:
        assert len(page.path.read_text().splitlines()) <= 60, page.script


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
