"""The docs a newcomer reads are checked: the README is a front door that names every page, command, shipped
model, dataset, explanation method and setting; docs/cli.md is what the parsers say; docs/architecture.md
answers "where do I change X"."""

import re
from pathlib import Path

from dashboard.registry import PAGES
from engine.__main__ import COMMANDS
from engine.data.loaders import DATASETS
from engine.inference.cam import METHODS
from engine.models.installed import SHIPPED_DIR
from tests.gen_docs import GENERATED

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_is_a_front_door_of_at_most_150_lines():
    assert len(README.splitlines()) <= 150
    assert "For research use only. Not for use in diagnostic procedures." in README
    assert "make run" in README and "make test" in README


def test_readme_names_every_page_and_command():
    for page in PAGES:
        assert f"**{page.title}**" in README, page.title
    for command in COMMANDS:
        assert f"python -m engine {command}" in README, command


def test_readme_names_every_shipped_model_dataset_and_explanation_method():
    for weights in SHIPPED_DIR.glob("*.safetensors"):
        assert f"`{weights.stem}`" in README, weights.stem
    for name in DATASETS:
        assert f"`{name}`" in README, name
    for method in METHODS.values():
        assert method.title in README, method.title


def test_every_setting_the_code_reads_is_in_the_settings_registry():
    from engine.config import SETTINGS

    used = set()
    for path in [*ROOT.glob("engine/**/*.py"), *ROOT.glob("dashboard/**/*.py"), ROOT / "Makefile"]:
        used |= set(re.findall(r"RADLENS_[A-Z_]+", path.read_text()))
    assert used, "the scan found no setting at all"
    assert used <= {s.name for s in SETTINGS}, sorted(used - {s.name for s in SETTINGS})
    assert "`docs/settings.md`" in README


def test_generated_docs_are_current():
    for name, render in GENERATED.items():
        assert (ROOT / "docs" / name).read_text() == render(), \
            f"docs/{name} is stale: run `.venv/bin/python -m tests.gen_docs`"


def test_every_doc_the_readme_points_to_exists():
    for doc in re.findall(r"`(docs/[a-z_]+\.md)`", README):
        assert (ROOT / doc).is_file(), doc


def test_architecture_doc_answers_where_to_change_things():
    text = (ROOT / "docs" / "architecture.md").read_text()
    for question in ("add a CAM method", "add a task", "add a PACS transport", "change a de-identification rule",
                     "add a page", "change what the worklist shows", "add a DICOM check", "add a dataset"):
        row = next((line for line in text.splitlines() if line.startswith(f"| {question} |")), None)
        assert row, question
        for path in re.findall(r"`((?:engine|dashboard|pages)/[\w/]+(?:\.py|/))`", row):
            assert (ROOT / path).exists(), f"{question}: {path} does not exist"


def test_security_doc_prints_the_permission_matrix_the_engine_enforces():
    from engine.context import ACCOUNT_ROLES, PERMISSIONS, ROLES

    text = (ROOT / "docs" / "security.md").read_text()
    rows = re.findall(r"^\| `([a-z]+\.[a-z_]+)` \| (.+?) \| (.*) \|$", text, re.MULTILINE)
    assert [name for name, _, _ in rows] == list(PERMISSIONS)
    for name, allows, cells in rows:
        marks = [c.strip() for c in cells.split("|")]
        assert allows == PERMISSIONS[name]
        assert {r for r, m in zip(ACCOUNT_ROLES, marks) if m == "yes"} == {r for r in ACCOUNT_ROLES if name in ROLES[r]}
