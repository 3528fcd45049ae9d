"""Secret keys kept outside the database: one 256-bit key per purpose, read from the environment
(`RADLENS_<NAME>_KEY`, 64 hex digits) or from `RADLENS_HOME/keys/<name>.key`, created on first use with
mode 0600 in a 0700 folder. Someone who can read the database alone cannot recompute what a key signs."""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path

from engine.errors import KeyUnavailable

__all__ = ["secret_key", "private_dir"]


def _create_once(path: Path, text: str) -> None:
    """Write `text` to `path` unless it exists, so that concurrent first users all read one complete key:
    the file is written in full under a private name, then hard-linked into place (atomic; the loser drops
    its copy)."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(temp)


def private_dir(folder: Path) -> Path:
    """`folder`, created if needed and readable by this user only (0700)."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder


def secret_key(home: Path, name: str, env: Mapping[str, str] | None = None) -> bytes:
    env = os.environ if env is None else env
    variable = f"RADLENS_{name.upper()}_KEY"
    if env.get(variable):
        try:
            key = bytes.fromhex(env[variable])
        except ValueError:
            raise KeyUnavailable(f"{variable} must be 64 hex digits (a 256-bit key)") from None
        if len(key) < 32:
            raise KeyUnavailable(f"{variable} must be 64 hex digits (a 256-bit key); it has {len(key) * 2}")
        return key
    path = private_dir(Path(home) / "keys") / f"{name}.key"
    if not path.exists():
        _create_once(path, secrets.token_hex(32))
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise KeyUnavailable(f"the {name} key file {path} is unreadable or damaged: {exc}") from None
    if len(key) < 32:
        raise KeyUnavailable(f"the {name} key file {path} is damaged (shorter than 256 bits)")
    return key
