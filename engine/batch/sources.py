"""What a batch run reads: a folder (recursively), a zip, or a manifest (CSV or Parquet with a `path` column,
relative paths from the manifest's folder), listed in one fixed order so that a shard (a range of indices)
names the same files when the run resumes, on any node that sees the same path.

Paths stay out of the store: a run records its source, the number of items and a fingerprint of the listing
and of each item's size and modification time (a zip member's CRC); a result row knows its item by index.
The listing is recomputed from the source when a user asks for the results with their file names (the source
is theirs), and a changed source (a file added, removed, renamed or replaced) is refused on resume.

A signed-in user's run reads only under the batch folders: the source, and every item resolved (a symlink
inside an allowed folder that points outside is refused), at listing and again when the item is read. A
manifest naming a file twice lists it once; a run holds at most RADLENS_BATCH_MAX_ITEMS items.
"""

from __future__ import annotations

import csv
import hashlib
import io
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from engine.config import Limits
from engine.errors import BatchSourceError, EngineError, UnreadableStudy
from engine.io.archive import member_names, read_member
from engine.io.sniff import is_zip

__all__ = ["Source", "open_source", "read_item", "SOURCE_KINDS", "MANIFEST_COLUMN", "DEFAULT_MAX_ITEMS"]

MANIFEST_COLUMN = "path"
MAX_MANIFEST_BYTES = 512 * 2**20
DEFAULT_MAX_ITEMS = 1_000_000


@dataclass(frozen=True)
class Source:
    kind: str  # a SOURCE_KINDS key
    location: Path  # the folder, zip or manifest
    names: tuple[str, ...]  # each item as the reader finds it, in the run's order

    def __len__(self) -> int:
        return len(self.names)

    @property
    def names_fingerprint(self) -> str:
        """Changes when an item is added, removed, renamed or reordered (what runs started before content
        stamps recorded)."""
        return hashlib.sha256("\n".join(self.names).encode()).hexdigest()

    @property
    def fingerprint(self) -> str:
        """Changes when an item is added, removed, renamed, reordered or replaced (its size or modification
        time; a zip member's CRC)."""
        digest = hashlib.sha256()
        for name, stamp in zip(self.names, self._stamps()):
            digest.update(f"{name}\0{stamp}\n".encode())
        return digest.hexdigest()

    def _stamps(self):
        if self.kind == "zip":
            with zipfile.ZipFile(self.location) as archive:
                infos = {i.filename: i for i in archive.infolist()}
            for name in self.names:
                info = infos.get(name)
                yield f"{info.CRC}:{info.file_size}" if info else "missing"
            return
        for name in self.names:
            try:
                stat = self._file(name).stat()
                yield f"{stat.st_size}:{stat.st_mtime_ns}"
            except OSError:
                yield "missing"

    def path_of(self, name: str) -> str:
        """The item as the user knows it (for their own listing of results; never stored)."""
        return f"{self.location}!/{name}" if self.kind == "zip" else str(self._file(name))

    def _file(self, name: str) -> Path:
        base = self.location if self.kind == "folder" else self.location.parent
        return base / name


def _list_folder(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _list_zip(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return member_names(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise BatchSourceError(f"{path.name} is not a readable zip ({error})") from None


def _list_manifest(path: Path) -> list[str]:
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BatchSourceError(f"the manifest is over {MAX_MANIFEST_BYTES // 2**20} MiB; split it")
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if MANIFEST_COLUMN not in table.column_names:
            raise BatchSourceError(f"the manifest has no '{MANIFEST_COLUMN}' column (columns: "
                                   f"{', '.join(table.column_names[:10])})")
        paths = [str(p) for p in table.column(MANIFEST_COLUMN).to_pylist() if p]
    else:
        rows = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig", errors="replace")))
        if MANIFEST_COLUMN not in (rows.fieldnames or []):
            raise BatchSourceError(f"the manifest has no '{MANIFEST_COLUMN}' column; its first line names the "
                                   f"columns (found: {', '.join((rows.fieldnames or [])[:10]) or 'none'})")
        paths = [row[MANIFEST_COLUMN] for row in rows if row.get(MANIFEST_COLUMN)]
    return list(dict.fromkeys(paths))  # a file named twice is analysed once


SOURCE_KINDS = {"folder": _list_folder, "zip": _list_zip, "manifest": _list_manifest}


def _kind(path: Path) -> str:
    if path.is_dir():
        return "folder"
    if path.suffix.lower() in (".csv", ".parquet"):
        return "manifest"
    with open(path, "rb") as handle:
        if is_zip(handle.read(8)):
            return "zip"
    raise BatchSourceError(f"{path.name}: a batch source is a folder, a zip, or a manifest (.csv or .parquet with "
                           f"a '{MANIFEST_COLUMN}' column)")


def open_source(path: Path | str, roots: tuple[Path, ...] | None = None,
                max_items: int = DEFAULT_MAX_ITEMS) -> Source:
    """List a source. With `roots` (a signed-in user's run), the source and every file it lists, resolved
    (symlinks followed), must lie under one of them."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise BatchSourceError(f"{path} does not exist (give a folder, a zip or a manifest on the server)")
    _check_under(path, roots)
    kind = _kind(path)
    names = SOURCE_KINDS[kind](path)
    if not names:
        raise BatchSourceError(f"{path.name} holds no files to analyse")
    if len(names) > max_items:
        raise BatchSourceError(f"{len(names):,} files: a run holds at most {max_items:,} "
                               "(RADLENS_BATCH_MAX_ITEMS); split the source")
    source = Source(kind, path, tuple(names))
    if roots is not None and kind != "zip":
        outside = [n for n in names if not _under(source._file(n).resolve(), roots)]
        if outside:
            raise BatchSourceError(f"{len(outside):,} file(s) of the source lie outside the folders batch runs may "
                                   "read, or are links to such files (RADLENS_BATCH_ROOTS)")
    return source


def _under(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _check_under(path: Path, roots: tuple[Path, ...] | None) -> None:
    if roots is not None and not _under(path, roots):
        raise BatchSourceError(f"batch runs may read only under: {', '.join(map(str, roots)) or 'nothing'} "
                               "(RADLENS_BATCH_ROOTS)")


@lru_cache(maxsize=4)
def _open_zip(path: Path) -> zipfile.ZipFile:
    return zipfile.ZipFile(path)  # kept open for the worker's next item of the same archive


def read_item(kind: str, location: Path, name: str, limits: Limits, roots: tuple[str, ...] | None = None) -> bytes:
    """One item's bytes, under the upload limits; an EngineError (a one-line reason) when it cannot be read.
    With `roots`, a file that resolves outside them now (replaced by a link since the listing) is refused."""
    try:
        if kind == "zip":
            return read_member(_open_zip(Path(location)), name, limits)
        path = (Path(location) if kind == "folder" else Path(location).parent) / name
        if roots is not None and not _under(path.resolve(), tuple(map(Path, roots))):
            raise BatchSourceError("the file lies outside the folders batch runs may read, or links there")
        limits.check_upload(path.stat().st_size)
        return path.read_bytes()
    except EngineError:
        raise
    except (OSError, zipfile.BadZipFile) as error:
        raise UnreadableStudy(f"cannot read the file ({getattr(error, 'strerror', None) or error})") from None
