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


def _task_keyed(tree: ast.AST, names: set[str]) -> list[tuple[int, str]]:
    """Dict literals keyed by a task's name, and comparisons with a task's name (`task == "..."`, `in (...)`)."""
    found = []
    faces = {id(arg) for node in ast.walk(tree) if isinstance(node, ast.Call)  # keyed by module names
             and getattr(node.func, "id", "") == "public_face" for arg in node.args}
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict) and id(node) not in faces:
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            found += [(node.lineno, f"a table keyed by {k!r}") for k in sorted(keys & names)]
        elif isinstance(node, ast.Compare):
            constants = [c for c in [node.left, *node.comparators] for c in
                         ([c] if isinstance(c, ast.Constant) else getattr(c, "elts", []))]
            found += [(node.lineno, f"a comparison with {c.value!r}") for c in constants
                      if isinstance(c, ast.Constant) and c.value in names]
    return found


def test_no_table_keyed_by_task_name_outside_the_tasks():
    """What differs per task lives in engine/tasks (its Task and its Analysis): a table keyed by task name
    elsewhere is a place a new task silently misses (routing once had no sequence entry)."""
    from engine.tasks import task_names

    names = set(task_names())
    # A name that is not a lookup by task: the CLI's `sequence` command (python -m engine sequence).
    allowed = {"engine/__main__.py: a table keyed by 'sequence'"}
    offenders = [f"{path.relative_to(ROOT)}:{line}: {what}"
                 for folder in ("engine", "dashboard", "pages")
                 for path in sorted((ROOT / folder).rglob("*.py")) if "engine/tasks" not in path.as_posix()
                 for line, what in _task_keyed(ast.parse(path.read_text()), names)
                 if f"{path.relative_to(ROOT)}: {what}" not in allowed]
    assert offenders == []


def test_the_task_keyed_table_check_can_fail():
    tree = ast.parse('VIEWS = {"segmentation": draw}\nif task == "sequence": pass\nok = {"mask": draw}')
    assert [what for _, what in _task_keyed(tree, {"segmentation", "sequence"})] == [
        "a table keyed by 'segmentation'", "a comparison with 'sequence'"]


FACES = ("engine.cases", "engine.pacs", "engine.models", "engine.inference", "engine.identity", "engine.synthetic",
         "engine.jobs", "engine.batch", "engine.tasks", "engine.data", "engine.io")


def test_the_dashboard_and_pages_import_packages_not_their_modules():
    """A page reads like `from engine.cases import list_worklist`: a package's modules can move without it."""
    offenders = []
    for path in sorted([*(ROOT / "dashboard").glob("*.py"), *(ROOT / "pages").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(tuple(f + "." for f in FACES)):
                offenders.append(f"{path.relative_to(ROOT)}: from {node.module}")
    assert offenders == []


def test_every_name_a_package_shows_resolves_and_no_module_hides_one():
    """Once a submodule is imported it is an attribute of its package: a public name equal to a module's name
    (engine.pacs.routing, the function and the module) would become the module."""
    import importlib
    import pkgutil

    for name in FACES:
        package = importlib.import_module(name)
        modules = {m.name for m in pkgutil.iter_modules(package.__path__)}
        for public in dir(package):
            assert public not in modules, f"{name}.{public} is also a module's name"
            assert getattr(package, public) is not None, f"{name}.{public}"
