"""Ingest: bytes in -> de-identified file on disk + rows in the store, or a one-line error.

Each file is decoded, validated and de-identified fully in memory first; only then is anything
written, and the file write and the rows commit together (the file is removed if the rows fail).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from engine.config import Config, Limits
from engine.context import Context
from engine.deid.fields import fields_of
from engine.deid.link import capture, seal
from engine.deid.profile import deidentify
from engine.errors import (
    DiskFull,
    EngineError,
    StudyConflict,
    SyntheticImage,
    TooLarge,
    UnreadableStudy,
    is_disk_full,
    short_reason,
)
from engine.io import read_study, render
from engine.io.archive import iter_zip
from engine.io.jpeg import strip_encapsulated_jpeg_metadata, strip_jpeg_metadata
from engine.io.sandbox import sandbox_for
from engine.io.sniff import is_zip
from engine.io.study import Study, Window
from engine.io.volume import is_array_volume
from engine.keys import secret_key
from engine.store import utc_now
from engine.synthetic.mark import has_mark, png_says_synthetic, thumbnail
from engine.synthetic.prints import is_synthetic
from engine.writers.wrap import volume_as_dicom

__all__ = ["IngestResult", "Prepared", "prepare", "prepare_here", "render_untrusted", "ingest_files", "ingest_paths",
           "remove_orphan_files"]

log = logging.getLogger("radlens.ingest")


@dataclass(frozen=True)
class IngestResult:
    """The outcome for one file (one zip member counts as one file)."""

    file: str
    status: str  # ok, duplicate or error
    case_id: int | None = None
    image_id: int | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "error"


@dataclass(frozen=True, eq=False)
class Prepared:
    """A decoded, de-identified study ready to be written (what crosses back from the sandbox: the file to
    store and its fields, not the decoded pixels)."""

    stored_bytes: bytes
    extension: str
    fields: dict
    study_key: str
    sha256: str
    link: bytes = b""  # the sealed original-study link (engine.deid.link), for studies that came from a PACS
    patient_key: str = ""  # the patient's pseudonym (DICOM only): a study UID never joins two patients' images
    thumbnail: bytes = b""  # 64 x 64 float32 of the first frame: checked against generated images' prints


def _sandbox(limits: Limits):
    return sandbox_for(limits.decode_memory_mb * 2**20, limits.decode_seconds, preload=(__name__,))


def prepare(data: bytes, key: bytes, config: Config, link: bool = False) -> Prepared:
    """Decode + validate + de-identify, in the decoder sandbox (a child process with a memory cap and a
    time limit); with `link`, also seal the original-study link. Raises an EngineError; writes nothing."""
    return Prepared(**_sandbox(config.limits).call(_prepare_plain, data, key, asdict(config.limits), link))


def render_untrusted(data: bytes, config: Config, frame: int = 0, window: Window | None = None) -> dict:
    """Decode and render a file in the decoder sandbox: {"image": uint8 array, "steps", "frames", "spacing"}."""
    window_args = [window.center, window.width] if window else None
    return _sandbox(config.limits).call(_render_plain, data, asdict(config.limits), frame, window_args)


# What the sandbox runs: plain data in and out (engine.io.wire).
def _prepare_plain(data: bytes, key: bytes, limits: dict, link: bool) -> dict:
    return asdict(prepare_here(data, key, Limits(**limits), link))


def _render_plain(data: bytes, limits: dict, frame: int, window: list | None) -> dict:
    study = read_study(data, Limits(**limits))
    rendered = render(study, frame, Window(*window) if window else None)
    return {"image": rendered.image, "steps": list(rendered.steps), "frames": study.n_frames,
            "spacing": study.spacing.describe()}


def prepare_here(data: bytes, key: bytes, limits: Limits, link: bool = False) -> Prepared:
    """prepare() in this process: only for code already running inside the sandbox, and for tests. A NumPy
    or NIfTI volume is stored as a multi-frame DICOM of its voxels (engine.io.volume)."""
    if is_array_volume(data):
        data = volume_as_dicom(data, limits)
    study = read_study(data, limits)
    _refuse_synthetic(data, study)
    if study.dataset is not None:
        stored, fields, key_uid, patient = _deidentified_dicom(study, key)
        extension = "dcm"
    else:
        stored, extension = _raster_bytes(data, study)
        fields, key_uid, patient = fields_of(study, None), "", ""
    sha = hashlib.sha256(stored).hexdigest()
    sealed = seal(key, sha, capture(study.dataset)) if link and study.dataset is not None else b""
    return Prepared(stored, extension, fields, f"study:{key_uid}" if key_uid else f"image:{sha}", sha, sealed,
                    patient, thumbnail(study.frames[0]).tobytes())


def _refuse_synthetic(data: bytes, study: Study) -> None:
    first = study.frames[0]
    if png_says_synthetic(data) or (first.dtype == np.uint8 and has_mark(first)):
        raise SyntheticImage("a synthetic image (it carries the RadLens SYNTHETIC mark): generated images are "
                             "never ingested as cases")


def _deidentified_dicom(study: Study, key: bytes) -> tuple[bytes, dict, str, str]:
    try:
        deid = deidentify(study.dataset, key)
        strip_encapsulated_jpeg_metadata(deid)
        buffer = io.BytesIO()
        deid.save_as(buffer, enforce_file_format=True)
        return (buffer.getvalue(), fields_of(study, deid), str(deid.get("StudyInstanceUID", "")),
                str(deid.get("PatientID", "")))
    except Exception as exc:  # malformed header values only surface when pydicom converts them here
        raise UnreadableStudy(f"DICOM header could not be de-identified ({short_reason(exc)})") from None


def _raster_bytes(data: bytes, study: Study) -> tuple[bytes, str]:
    """A JPEG keeps its compressed image with the metadata segments removed, if it decodes to exactly the
    pixels read (an EXIF rotation, for one, would not); anything else is re-encoded as PNG."""
    if study.source_format == "jpeg":
        stripped = strip_jpeg_metadata(data)
        if stripped is not None:
            try:
                same = np.array_equal(read_study(stripped).frames[0], study.frames[0])
            except EngineError:
                same = False
            if same:
                return stripped, "jpg"
    return _png_bytes(study.frames[0]), "png"


def _png_bytes(pixels: np.ndarray) -> bytes:
    # Re-encoding drops every text/EXIF chunk the upload carried (they can hold names and dates).
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def ingest_files(
    items: Iterable[tuple[str, bytes]],
    ctx: Context,
    source: str = "upload",
    progress: Callable[[int, str], None] | None = None,
    origin_node: str = "",
) -> list[IngestResult]:
    """Ingest (name, bytes) pairs; zips are expanded. One result per file; failures never stop the batch.
    `progress(done, name)` is called after each file; the batch is logged once. `origin_node`: the PACS node
    the files came from; their original-study link is kept (sealed) so results can be sent back there."""
    ctx.require("case.upload")
    key = secret_key(ctx.config.home, "pseudonym")
    results: list[IngestResult] = []
    batch_bytes, limit = 0, ctx.config.limits.max_batch_mb * 2**20
    for name, data in items:
        batch_bytes += len(data)
        if batch_bytes > limit:
            results.append(IngestResult(name, "error", error=_message(TooLarge(
                f"this batch is over {ctx.config.limits.max_batch_mb:,} MiB at this file (RADLENS_MAX_BATCH_MB); "
                "upload it in another batch"))))
            if progress:
                progress(len(results), name)
            continue
        for member_name, member, error in _expand(name, data, ctx.config):
            result = (IngestResult(member_name, "error", error=_message(error)) if error
                      else _ingest_one(member_name, member, key, ctx, source, origin_node))
            results.append(result)
            if progress:
                progress(len(results), member_name)
    _log_batch(ctx, results, source)
    return results


def ingest_paths(paths: Iterable[Path], ctx: Context,
                 source: str = "cli") -> Iterator[IngestResult]:
    """Files, zips or folders (recursively) from disk, yielded as they land."""
    for path in _walk(paths):
        try:
            data = path.read_bytes()
        except OSError as exc:
            yield IngestResult(str(path), "error", error=f"cannot read file ({exc.strerror})")
            continue
        yield from ingest_files([(str(path), data)], ctx, source)


def _walk(paths: Iterable[Path]) -> Iterator[Path]:
    for path in map(Path, paths):
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        else:
            yield path


def _expand(name: str, data: bytes, config: Config) -> Iterator[tuple[str, bytes | None, EngineError | None]]:
    try:
        config.limits.check_upload(len(data))
        if is_zip(data):
            for member in iter_zip(data, config.limits):
                yield f"{name}/{member.name}", member.data, member.error
            return
    except EngineError as error:
        yield name, None, error
        return
    yield name, data, None


def _ingest_one(name: str, data: bytes, key: bytes, ctx: Context, source: str, origin_node: str) -> IngestResult:
    try:
        prepared = prepare(data, key, ctx.config, link=bool(origin_node))
        if prepared.thumbnail and is_synthetic(ctx.store, np.frombuffer(prepared.thumbnail, np.float32)):
            raise SyntheticImage("an image RadLens generated (it matches a synthetic image, even without its "
                                 "mark): generated images are never ingested as cases")
        case_id, image_id, duplicate = _write(prepared, ctx, source, origin_node)
    except EngineError as error:
        return IngestResult(name, "error", error=_message(error))
    return IngestResult(name, "duplicate" if duplicate else "ok", case_id, image_id)


def _write(prepared: Prepared, ctx: Context, source: str, origin_node: str = "") -> tuple[int, int, bool]:
    """The file and its rows land together: a file whose rows did not commit (an error, a failed COMMIT) is
    removed; one left by a crash in between is swept by remove_orphan_files."""
    target: Path | None = None
    try:
        with ctx.store.write() as db:
            row = db.execute("SELECT case_id, id FROM images WHERE sha256 = ?", [prepared.sha256]).fetchone()
            if row:
                if prepared.link:  # first uploaded, now also retrieved from a PACS: results may go back there
                    db.execute("INSERT OR IGNORE INTO study_links (image_id, node, sealed) VALUES (?, ?, ?)",
                               [row[1], origin_node, prepared.link])
                ctx.audit(db, "upload.duplicate", "image", row[1], {"case_id": row[0], "source": source})
                return row[0], row[1], True
            relative = Path("files") / uuid.uuid4().hex[:2] / f"{uuid.uuid4().hex}.{prepared.extension}"
            target = ctx.config.home / relative
            try:
                _write_atomic(target, prepared.stored_bytes)
            except OSError as error:
                if not is_disk_full(error):
                    raise
                raise DiskFull(f"the disk holding {ctx.config.home} is full; free space and upload this file "
                               "again") from None
            case_id = _upsert_case(db, prepared, source)
            image_id = db["images"].insert(
                {**prepared.fields, "case_id": case_id, "sha256": prepared.sha256, "path": str(relative),
                 "created_at": utc_now()}
            ).last_pk
            if prepared.link:
                db["study_links"].insert({"image_id": image_id, "node": origin_node, "sealed": prepared.link})
            ctx.audit(db, "upload", "image", image_id,
                      {"case_id": case_id, "source": source, "format": prepared.fields["source_format"]})
    except BaseException:
        if target is not None:
            target.unlink(missing_ok=True)
        raise
    return case_id, image_id, False


def remove_orphan_files(ctx: Context, older_than_s: float = 3600.0) -> list[Path]:
    """Stored files no image row points at (a crash between the file write and the commit) and
    temporary files left mid-write, older than `older_than_s` (so an upload in flight is never touched)."""
    folder = ctx.config.home / "files"
    if not folder.is_dir():
        return []
    with ctx.store.read() as db:
        known = {row[0] for row in db.execute("SELECT path FROM images")}
    cutoff = time.time() - older_than_s
    removed = []
    for path in folder.rglob("*"):
        relative = str(path.relative_to(ctx.config.home))
        if path.is_file() and relative not in known and path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _upsert_case(db, prepared: Prepared, source: str) -> int:
    row = db.execute("SELECT id, patient_key FROM cases WHERE study_key = ?", [prepared.study_key]).fetchone()
    if row:
        if row[1] and prepared.patient_key and row[1] != prepared.patient_key:
            raise StudyConflict("this study UID is already in RadLens for another patient: refused (a sender reusing "
                                "a known study UID, or a PACS error; check the sender)")
        db.execute("UPDATE cases SET image_count = image_count + 1, patient_key = coalesce(patient_key, ?) "
                   "WHERE id = ?", [prepared.patient_key or None, row[0]])
        return row[0]
    f = prepared.fields
    return db["cases"].insert({
        "study_key": prepared.study_key, "source": source, "received_at": utc_now(), "image_count": 1,
        "patient_key": prepared.patient_key or None,
        **{k: f[k] for k in ("modality", "body_part", "view_position", "laterality", "study_description",
                             "series_description", "study_date", "burned_in_risk")},
    }).last_pk


def _write_atomic(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself survives a power loss
        finally:
            os.close(folder)
    finally:
        tmp.unlink(missing_ok=True)


def _message(error: EngineError) -> str:
    return f"{type(error).__name__}: {error}"


def _log_batch(ctx: Context, results: list[IngestResult], source: str) -> None:
    # Counts and error classes only: file names and messages can carry identifiers.
    errors = sorted({r.error.split(":", 1)[0] for r in results if not r.ok})
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "duplicate", "error")}
    log.info("ingest source=%s ok=%d duplicate=%d error=%d kinds=%s", source, *counts.values(), ",".join(errors))
    if counts["error"]:
        ctx.log("upload.failed", "batch", "", {"count": counts["error"], "kinds": errors})
