"""The generated docs, so they cannot go stale: docs/cli.md from the argument parsers, docs/settings.md from
engine.config.SETTINGS (every RADLENS_* variable, its default from the code, its meaning).

Regenerate both: `.venv/bin/python -m tests.gen_docs`; tests/test_docs.py fails when a file differs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
PROGRAMS = (
    ("engine.__main__", "get_args_parser", "python -m engine"),
    ("engine.jobs.training", "get_args_parser", "python -m engine.train.run"),
    ("engine.jobs.synthesis", "gan_parser", "python -m engine.train.gan"),
    ("engine.train.evaluate", "get_args_parser", "python -m engine.train.evaluate"),
)
INTRO = """# Command line

Generated from the argument parsers (`python -m tests.gen_docs`); `make test` checks it is
current. Run them with `.venv/bin/python` after `make run` (or `make test`) has created the environment.
Every command that reads files ingests them exactly as the Upload page does (de-identified first); a file
that cannot be read prints one line (or one JSON object with `--json`) with its reason, the others go on,
and the exit code is 1.
"""


def _help(parser: argparse.ArgumentParser) -> str:
    return parser.format_help().rstrip()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps sub-commands here and nowhere public
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def render_cli() -> str:
    os.environ["COLUMNS"] = "110"  # argparse wraps at the terminal width; fix it so the file is stable
    import importlib

    out = [INTRO]
    for module, function, command in PROGRAMS:
        parser = getattr(importlib.import_module(module), function)()
        out += [f"## `{command}`", "", "```text", _help(parser), "```", ""]
        for name, sub in _subparsers(parser).items():
            out += [f"### `{command} {name}`", "", "```text", _help(sub), "```", ""]
    return "\n".join(out)


SETTINGS_INTRO = """# Settings

Every `RADLENS_*` environment variable RadLens reads, generated from `engine/config.py` (`SETTINGS`; defaults
are the configuration dataclasses' own) by `python -m tests.gen_docs`; `make test` checks it is current and that
the code reads no variable missing here. `make` sets `RADLENS_HOME` and `RADLENS_DATA_DIR` for you.

| variable | default | meaning |
|---|---|---|
"""


def render_settings() -> str:
    from engine.config import SETTINGS

    return SETTINGS_INTRO + "".join(f"| `{s.name}` | {s.default_text} | {s.meaning} |\n" for s in SETTINGS)


GENERATED = {"cli.md": render_cli, "settings.md": render_settings}


if __name__ == "__main__":
    for name, render in GENERATED.items():
        (DOCS / name).write_text(render())
        print(f"wrote docs/{name}")
