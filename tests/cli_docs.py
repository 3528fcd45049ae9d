"""docs/cli.md, generated from the argument parsers so it cannot go stale.

Regenerate: `.venv/bin/python -m tests.cli_docs > docs/cli.md`; tests/test_docs.py fails when the file differs.
"""

from __future__ import annotations

import argparse
import os

PROGRAMS = (
    ("engine.__main__", "python -m engine"),
    ("engine.jobs.training", "python -m engine.train.run"),
    ("engine.train.evaluate", "python -m engine.train.evaluate"),
)
INTRO = """# Command line

Generated from the argument parsers (`python -m tests.cli_docs > docs/cli.md`); `make test` checks it is
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


def render() -> str:
    os.environ["COLUMNS"] = "110"  # argparse wraps at the terminal width; fix it so the file is stable
    import importlib

    out = [INTRO]
    for module, command in PROGRAMS:
        parser = importlib.import_module(module).get_args_parser()
        out += [f"## `{command}`", "", "```text", _help(parser), "```", ""]
        for name, sub in _subparsers(parser).items():
            out += [f"### `{command} {name}`", "", "```text", _help(sub), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
