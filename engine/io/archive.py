"""Safe zip expansion: nothing is extracted to disk; members are read into memory under limits."""

from __future__ import annotations

import io
import posixpath
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

from engine.config import Limits
from engine.errors import EngineError, UnreadableStudy, UnsafeArchive, short_reason

__all__ = ["Member", "iter_zip", "member_names", "read_member"]

_SKIP_PREFIXES = ("__MACOSX/",)
_SKIP_NAMES = {"DICOMDIR", "Thumbs.db", ".DS_Store"}
_CHUNK = 1 << 20
_RATIO_FROM = 16 << 20


@dataclass(frozen=True)
class Member:
    """One file of an archive: its bytes, or the error that refused it."""

    name: str
    data: bytes | None
    error: EngineError | None = None


def iter_zip(data: bytes, limits: Limits) -> Iterator[Member]:
    """Yield each file member. Unsafe members come back with an error; the rest still load."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = [archive.getinfo(name) for name in member_names(archive)]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as exc:
        raise UnreadableStudy(f"not a readable zip archive ({short_reason(exc)})") from None
    if len(infos) > limits.max_zip_members:
        raise UnsafeArchive(f"zip holds {len(infos):,} files; the limit is {limits.max_zip_members:,}")
    declared = sum(i.file_size for i in infos)
    if declared > limits.max_zip_total_bytes:
        raise UnsafeArchive(f"zip would expand to {declared / 2**20:,.0f} MiB; "
                            f"the limit is {limits.max_zip_total_mb:,} MiB")
    budget = limits.max_zip_total_bytes
    for info in infos:
        name = info.filename
        try:
            _check_name(name)
            member = _read(archive, info, limits, budget)
        except EngineError as err:
            yield Member(name, None, err)
            continue
        budget -= len(member)
        yield Member(name, member)


def member_names(archive: zipfile.ZipFile) -> list[str]:
    """The file members worth reading, in the archive's order (no folders, no OS clutter)."""
    return [i.filename for i in archive.infolist() if not i.is_dir() and not _skipped(i.filename)]


def read_member(archive: zipfile.ZipFile, name: str, limits: Limits) -> bytes:
    """One member under the same checks as an upload's (safe name, size, compression ratio)."""
    _check_name(name)
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise UnreadableStudy("the zip no longer holds this member") from None
    return _read(archive, info, limits, limits.max_upload_bytes)


def _skipped(name: str) -> bool:
    base = posixpath.basename(name)
    return name.startswith(_SKIP_PREFIXES) or base in _SKIP_NAMES or base.startswith(".")


def _check_name(name: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive("unsafe path in zip (absolute or '..'); member refused")
    if name.lower().endswith(".zip"):
        raise UnsafeArchive("nested zip archives are not expanded; upload the inner zip on its own")


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: Limits, budget: int) -> bytes:
    # Declared sizes can lie: read in chunks and stop at the first limit actually crossed. Small
    # members may compress very well (blank masks), so the ratio only counts past _RATIO_FROM bytes.
    cap = min(limits.max_upload_bytes, budget)
    out = bytearray()
    try:
        with archive.open(info) as stream:
            while chunk := stream.read(_CHUNK):
                out += chunk
                ratio = len(out) / max(info.compress_size, 1)
                if len(out) > cap or (len(out) > _RATIO_FROM and ratio > limits.max_zip_ratio):
                    raise UnsafeArchive(
                        f"member expands past {len(out) / 2**20:,.0f} MiB at {ratio:,.0f}:1: "
                        "refused as a possible zip bomb"
                    )
    except EngineError:
        raise
    except Exception as exc:  # zlib.error, BadZipFile (CRC), NotImplementedError (method), RuntimeError (encrypted)
        raise UnreadableStudy(f"zip member could not be read ({short_reason(exc)})") from None
    return bytes(out)
