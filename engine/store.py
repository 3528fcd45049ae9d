"""The case store: one SQLite database (sqlite-utils) under RADLENS_HOME.

A connection per operation; WAL; busy_timeout; writes in BEGIN IMMEDIATE transactions so two
writers queue instead of failing half-way. Schema changes are numbered, idempotent migrations.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from engine.audit import GENESIS, ChainReport, seal, seal_head, verify_chain
from engine.config import Config
from engine.errors import DiskFull
from engine.keys import private_dir, secret_key

__all__ = ["Store", "utc_now", "MIGRATIONS"]

_BUSY_TIMEOUT_MS = 30_000


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _m001_initial(db: Database) -> None:
    db["settings"].create({"key": str, "value": str}, pk="key")
    db["cases"].create(
        {
            "id": int, "study_key": str, "source": str, "modality": str, "body_part": str,
            "view_position": str, "laterality": str, "study_description": str, "series_description": str,
            "study_date": str, "received_at": str, "image_count": int, "burned_in_risk": int,
        },
        pk="id", not_null={"study_key", "received_at"},
    )
    db["cases"].create_index(["study_key"], unique=True)
    for column in ("received_at", "modality", "body_part", "study_date"):
        db["cases"].create_index([column])
    db["cases"].enable_fts(["modality", "body_part", "study_description", "series_description"], create_triggers=True)
    db["images"].create(
        {
            "id": int, "case_id": int, "sha256": str, "path": str, "source_format": str, "modality": str,
            "body_part": str, "view_position": str, "laterality": str, "rows": int, "cols": int,
            "frames": int, "photometric": str, "bits_allocated": int, "bits_stored": int,
            "spacing_row_mm": float, "spacing_col_mm": float, "spacing_source": str,
            "manufacturer_model": str, "study_description": str, "series_description": str,
            "study_date": str, "transfer_syntax": str, "burned_in_risk": int, "created_at": str,
        },
        pk="id", foreign_keys=[("case_id", "cases", "id")], not_null={"case_id", "sha256", "path"},
    )
    db["images"].create_index(["sha256"], unique=True)
    db["images"].create_index(["case_id"])
    db["predictions"].create(
        {
            "id": int, "case_id": int, "image_id": int, "model_name": str, "model_version": str,
            "weights_sha256": str, "label": str, "probability": float, "probabilities": str,
            "uncertainty": float, "ood_score": float, "latency_ms": float, "created_at": str,
        },
        pk="id", foreign_keys=[("case_id", "cases", "id"), ("image_id", "images", "id")],
    )
    db["predictions"].create_index(["case_id"])
    db["reviews"].create(
        {
            "id": int, "case_id": int, "image_id": int, "prediction_id": int, "reviewer": str,
            "verdict": str, "label": str, "comment": str, "created_at": str,
        },
        pk="id", foreign_keys=[("case_id", "cases", "id")],
    )
    db["reviews"].create_index(["case_id"])
    db["models"].create(
        {
            "id": int, "name": str, "version": str, "task": str, "arch": str, "path": str,
            "sha256": str, "card": str, "active": int, "created_at": str,
        },
        pk="id",
    )
    db["jobs"].create(
        {
            "id": int, "kind": str, "config": str, "status": str, "pid": int, "created_at": str,
            "started_at": str, "finished_at": str, "error": str, "model_id": int,
        },
        pk="id",
    )
    db["job_metrics"].create(
        {"id": int, "job_id": int, "epoch": int, "step": int, "name": str, "value": float, "created_at": str},
        pk="id", foreign_keys=[("job_id", "jobs", "id")],
    )
    db["audit_log"].create(
        {"id": int, "at": str, "actor": str, "action": str, "target_type": str, "target_id": str, "detail": str},
        pk="id", not_null={"at", "actor", "action"},
    )
    for verb in ("UPDATE", "DELETE"):
        db.execute(
            f"CREATE TRIGGER audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
            "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
        )


def _m002_prediction_provenance(db: Database) -> None:
    """What a researcher needs to reproduce a prediction, and the review's link to one."""
    for column, kind in (("image_sha256", str), ("task", str), ("probability_raw", float),
                         ("probabilities_raw", str), ("threshold", float), ("uncertainty_method", str),
                         ("ood_threshold", float), ("ood_flag", int), ("preprocessing", str),
                         ("cam_method", str), ("device", str), ("actor", str), ("result", str)):
        db["predictions"].add_column(column, kind)
    db["predictions"].create_index(["model_name", "model_version"])


def _m003_explanations(db: Database) -> None:
    """Cached explanation maps with their faithfulness, and dataset-level explanation audits."""
    db["explanations"].create(
        {
            "id": int, "image_sha256": str, "weights_sha256": str, "model_name": str, "model_version": str,
            "method": str, "target": str, "layer": str, "cam": bytes, "runtime_ms": float, "faithfulness": str,
            "created_at": str,
        },
        pk="id",
    )
    db["explanations"].create_index(["image_sha256", "weights_sha256", "method", "target", "layer"], unique=True)
    db["explanation_audits"].create(
        {
            "id": int, "model_name": str, "model_version": str, "weights_sha256": str, "method": str, "layer": str,
            "dataset": str, "split": str, "limit_n": int, "status": str, "done": int, "total": int, "pid": int,
            "error": str, "summary": str, "heatmaps": bytes, "actor": str, "created_at": str, "finished_at": str,
        },
        pk="id",
    )


def _m004_segmentations(db: Database) -> None:
    """Every segmentation with its mask, measurements, provenance and agreement with a ground truth."""
    db["segmentations"].create(
        {
            "id": int, "case_id": int, "image_id": int, "image_sha256": str, "model_name": str,
            "model_version": str, "weights_sha256": str, "mask_png": bytes, "mask_pixels": int,
            "circumference": float, "area": float, "unit": str, "ellipse": str, "bbox": str, "spacing_mm": float,
            "spacing_source": str, "dice": float, "iou": float, "hd95": float, "truth_source": str,
            "preprocessing": str, "device": str, "latency_ms": float, "actor": str, "created_at": str,
        },
        pk="id", foreign_keys=[("case_id", "cases", "id"), ("image_id", "images", "id")],
    )
    db["segmentations"].create_index(["case_id"])


def _m005_training_jobs(db: Database) -> None:
    """What a background training job needs beyond the initial table: its task, device and queue, the
    live progress the page polls, the review ids it trains on and the model it produced."""
    for column, kind in (("task", str), ("device", str), ("output", str), ("model_name", str), ("actor", str),
                         ("progress", str), ("review_ids", str), ("resumes", int), ("updated_at", str)):
        db["jobs"].add_column(column, kind)
    db["jobs"].create_index(["status"])
    db["job_metrics"].create_index(["job_id", "name"])


def _m006_one_job_machinery(db: Database) -> None:
    """Heatmap audits become jobs of kind 'audit' in `jobs` (one status vocabulary, one liveness rule); their
    results move to `heatmap_audits`. The never-used `models` table and `jobs.model_id` go."""
    db["heatmap_audits"].create(
        {"job_id": int, "weights_sha256": str, "layer": str, "summary": str, "heatmaps": bytes},
        pk="job_id", foreign_keys=[("job_id", "jobs", "id")],
    )
    db["jobs"].create_index(["kind", "status"])
    for row in list(db.query("SELECT * FROM explanation_audits ORDER BY id")):
        request = {"model_name": row["model_name"], "model_version": row["model_version"], "method": row["method"],
                   "layer": row["layer"] or "", "dataset": row["dataset"], "split": row["split"],
                   "limit": row["limit_n"]}
        job_id = db["jobs"].insert({
            "kind": "audit", "status": row["status"], "device": "cpu", "task": "classification",
            "actor": row["actor"] or "", "config": json.dumps(request), "pid": row["pid"], "error": row["error"],
            "progress": json.dumps({"done": row["done"] or 0, "total": row["total"] or 0}), "review_ids": "[]",
            "created_at": row["created_at"], "started_at": row["created_at"], "finished_at": row["finished_at"],
            "updated_at": row["finished_at"] or row["created_at"], "resumes": 0}).last_pk
        if row["summary"]:
            db["heatmap_audits"].insert({"job_id": job_id, "weights_sha256": row["weights_sha256"],
                                         "layer": row["layer"], "summary": row["summary"], "heatmaps": row["heatmaps"]})
    db.execute("DROP TABLE explanation_audits")
    db.execute("DROP TABLE models")
    db.execute("ALTER TABLE jobs DROP COLUMN model_id")


def _m007_identity(db: Database) -> None:
    """Accounts, sign-in sessions, and an audit trail that says who (id, display name, role) and is sealed as a
    hash chain. Rows from before are sealed in order by Store.migrate (it holds the key)."""
    db["users"].create(
        {
            "id": int, "username": str, "display_name": str, "role": str, "password_hash": str, "disabled": int,
            "failed_logins": int, "last_failed_at": str, "locked_until": str, "must_change": int,
            "created_at": str, "created_by": str, "password_changed_at": str, "last_login_at": str,
        },
        pk="id", not_null={"username", "role", "created_at"},
    )
    db["users"].create_index(["username"], unique=True)
    db["sessions"].create(
        {
            "id": str, "user_id": str, "display_name": str, "role": str, "auth": str, "started_at": str,
            "last_seen": str, "expires_at": str, "ended_at": str, "end_reason": str,
        },
        pk="id", not_null={"user_id", "role", "started_at"},
    )
    db["sessions"].create_index(["ended_at"])
    for column in ("actor_name", "role", "prev_hash", "hash"):
        db["audit_log"].add_column(column, str)
    db["audit_log"].create_index(["actor"])
    db["audit_log"].create_index(["action"])
    db["reviews"].add_column("actor", str)
    db.execute("DROP TRIGGER audit_log_no_update")
    # A row may be written once more only to seal it (pre-chain rows, sealed by Store.migrate in the transaction
    # that applies this migration); a sealed row never changes.
    db.execute("CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log WHEN OLD.hash IS NOT NULL "
               "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END")


def _m008_hardening(db: Database) -> None:
    # Pseudonyms are now keyed by engine.keys' "pseudonym" key; a salt next to the data it protects let
    # anyone holding the database test guessed MRNs against it. Studies ingested before keep their cases;
    # a re-upload of one of them opens a new case.
    db.execute("DELETE FROM settings WHERE key = 'uid_salt'")
    # A job's process is its pid and its start time: a pid reused after a crash or reboot is someone else.
    db["jobs"].add_column("pid_started", float)


def _m009_abstention(db: Database) -> None:
    """A result is 'analysed' or 'not_analysed' (outside the model's scope, with the reason). Predictions
    logged before, on images the OOD gate flagged, were never valid results: they become abstentions."""
    for table in ("predictions", "segmentations"):
        db[table].add_column("status", str, not_null_default="analysed")
        db[table].add_column("status_reason", str, not_null_default="")
    db.execute("UPDATE predictions SET status = 'not_analysed', status_reason = 'the image is unlike the training "
               "images: OOD score ' || printf('%.1f', ood_score) || ' > ' || printf('%.1f', ood_threshold) || "
               "' (logged before abstention)' WHERE ood_flag = 1")


def _m010_pacs(db: Database) -> None:
    """PACS nodes (addresses only: their credentials live outside the database, engine.pacs.nodes) and the
    studies that arrived from a PACS (pulled or pushed), waiting for their quiet period before routing."""
    db["pacs_nodes"].create({"name": str, "dicomweb_url": str, "ae_title": str, "host": str, "port": int,
                             "updated_at": str}, pk="name", not_null={"name"})
    db["arrivals"].create({"id": int, "case_id": int, "origin": str, "instances": int, "first_at": str,
                           "last_at": str, "last_seen": float, "routed_at": str, "job_id": int},
                          pk="id", foreign_keys=[("case_id", "cases")])
    db["arrivals"].create_index(["case_id"], unique=True)
    db["arrivals"].create_index(["routed_at"])


def _m011_study_links(db: Database) -> None:
    """Sealed links from an image that came from a PACS to its original study (engine.deid.link): ciphertext
    only, so results can be sent back to that study."""
    db["study_links"].create({"image_id": int, "node": str, "sealed": bytes}, pk="image_id",
                             foreign_keys=[("image_id", "images")])


def _m012_batch(db: Database) -> None:
    """Batch runs (jobs of kind 'batch'): their fixed shards, the results keyed by (input hash, weights hash) so
    a retried shard or a re-run never adds a row twice, and a reason row per item that could not be read."""
    db["batch_shards"].create({"job_id": int, "shard": int, "start": int, "stop": int, "status": str,
                               "analysed": int, "not_analysed": int, "failed": int, "new_rows": int,
                               "labels": str, "seconds": float, "worker": str, "loaded_at": str, "cases_at": str},
                              pk=("job_id", "shard"), foreign_keys=[("job_id", "jobs")])
    db["batch_results"].create({
        "id": int, "job_id": int, "item": int, "input_sha256": str, "weights_sha256": str, "task": str,
        "model_name": str, "model_version": str, "status": str, "status_reason": str, "modality": str,
        "body_part": str, "rows": int, "cols": int, "label": str, "probability": float, "probabilities": str,
        "probabilities_raw": str, "threshold": float, "uncertainty": float, "uncertainty_method": str,
        "ood_score": float, "ood_threshold": float, "ood_flag": int, "cam_method": str, "mask_pixels": int,
        "circumference": float, "area": float, "unit": str, "spacing_mm": float, "spacing_source": str,
        "overlay_png": bytes, "latency_ms": float, "device": str, "case_id": int, "image_id": int, "created_at": str,
    }, pk="id", foreign_keys=[("job_id", "jobs")])
    db["batch_results"].create_index(["input_sha256", "weights_sha256"], unique=True)
    db["batch_results"].create_index(["job_id"])
    db["batch_failures"].create({"job_id": int, "item": int, "reason": str, "created_at": str},
                                pk=("job_id", "item"), foreign_keys=[("job_id", "jobs")])


def _m013_audit_sealed_at_write(db: Database) -> None:
    """Rows are sealed only when written (Store.migrate sealed any unsealed row at every start, so a row
    inserted behind the application's back was sealed by the next process); the head gets a keyed seal
    (Store.migrate adds it to the head that stands at this upgrade)."""
    db.execute("DROP TRIGGER audit_log_no_update")
    db.execute("CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
               "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END")


def _m014_case_patient(db: Database) -> None:
    """A case's patient pseudonym: an instance naming a known study UID joins that case only for the same
    patient (a sender reusing a study UID would otherwise add its image to someone else's case). And what an
    administrator allows a node to receive: re-identified results over plain HTTP, results of other nodes'
    studies; and whether DIMSE with it runs over DICOM TLS."""
    db["cases"].add_column("patient_key", str)
    db["pacs_nodes"].add_column("allow_plain_http", int, not_null_default=0)
    db["pacs_nodes"].add_column("accepts_other_studies", int, not_null_default=0)
    db["pacs_nodes"].add_column("tls", int, not_null_default=0)


def _m015_synthetic_prints(db: Database) -> None:
    """Likeness prints of every generated image (engine.synthetic.prints): ingest refuses an upload that looks
    like one, however its mark was removed."""
    db["synthetic_prints"].create({"id": int, "generator": str, "label": str, "seed": int, "idx": int,
                                   "print": bytes, "created_at": str}, pk="id")


def _m016_batch_sequence_result(db: Database) -> None:
    """Batch results of a sequence model carry their per-slice contribution (as the predictions row does)."""
    db["batch_results"].add_column("result", str)


def _m017_heatmap_audit_kind(db: Database) -> None:
    """The heatmap audit's job kind is 'heatmap-audit' (beside the audit trail, 'audit' alone confused)."""
    db.execute("UPDATE jobs SET kind = 'heatmap-audit' WHERE kind = 'audit'")


MIGRATIONS: tuple[tuple[int, str, Callable[[Database], None]], ...] = (
    (1, "initial schema", _m001_initial),
    (2, "prediction provenance", _m002_prediction_provenance),
    (3, "explanations and explanation audits", _m003_explanations),
    (4, "segmentations", _m004_segmentations),
    (5, "training jobs", _m005_training_jobs),
    (6, "one job machinery", _m006_one_job_machinery),
    (7, "identity and a sealed audit trail", _m007_identity),
    (8, "pseudonym key outside the database; jobs known by pid and start time", _m008_hardening),
    (9, "results are analysed or not analysed (outside the model's scope)", _m009_abstention),
    (10, "PACS nodes and arrivals", _m010_pacs),
    (11, "sealed links to original studies", _m011_study_links),
    (12, "batch runs: shards, results, reason rows", _m012_batch),
    (13, "audit rows sealed when written, never later; a keyed head", _m013_audit_sealed_at_write),
    (14, "a case's patient pseudonym; what a node may receive", _m014_case_patient),
    (15, "likeness prints of generated images", _m015_synthetic_prints),
    (16, "batch results of sequence models", _m016_batch_sequence_result),
    (17, "the heatmap audit's job kind is heatmap-audit", _m017_heatmap_audit_kind),
)
_AUDIT_HEAD = "audit_head"


class Store:
    """Handle on the database file. Cheap to create; holds no open connection."""

    def __init__(self, path: Path, audit_key: bytes | None = None):
        self.path = Path(path)
        self._audit_key = audit_key

    @property
    def audit_key(self) -> bytes:
        """The key sealing the audit chain: outside the database (engine.keys), beside it under RADLENS_HOME."""
        if self._audit_key is None:
            self._audit_key = secret_key(self.path.parent, "audit")
        return self._audit_key

    def _connect(self) -> Database:
        conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")
        return Database(conn)

    @contextmanager
    def read(self) -> Iterator[Database]:
        db = self._connect()
        try:
            yield db
        finally:
            db.close()

    @contextmanager
    def write(self) -> Iterator[Database]:
        """A BEGIN IMMEDIATE transaction: committed on success, rolled back on any exception."""
        db = self._connect()
        try:
            db.conn.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.conn.execute("COMMIT")
            except BaseException as error:
                if db.conn.in_transaction:  # SQLite may have rolled back already (a full disk does)
                    try:
                        db.conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # the original error is the one worth reporting
                if _is_database_full(error):
                    raise DiskFull(f"the disk holding {self.path.parent} is full (the database could not grow); "
                                   "free space and try again") from None
                raise
        finally:
            db.close()

    def _use_wal(self) -> None:
        """Switch to WAL. Processes opening a new database together (torchrun's ranks) race for the exclusive
        lock the switch needs, and SQLite reports 'locked' at once instead of waiting: retry for a while."""
        deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                with self.read() as db:
                    db.conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def migrate(self) -> list[int]:
        """Apply pending migrations; returns the versions applied (none on a second call)."""
        private_dir(self.path.parent)
        self._use_wal()
        applied = []
        with self.write() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                       "(version INTEGER PRIMARY KEY, name TEXT, applied_at TEXT)")
            done = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
            for version, name, apply in MIGRATIONS:
                if version not in done:
                    if version == 13:
                        self._key_head(db)  # the head as it stands at this upgrade is trusted once
                    apply(db)
                    if version == 7:  # the chain starts here: rows from before it are sealed now, and never later
                        self._seal_unsealed(db)
                    db["schema_migrations"].insert({"version": version, "name": name, "applied_at": utc_now()})
                    applied.append(version)
        for suffix in ("", "-wal", "-shm"):  # the database is for this user's eyes only
            if Path(f"{self.path}{suffix}").exists():
                Path(f"{self.path}{suffix}").chmod(0o600)
        return applied

    def _seal_unsealed(self, db: Database) -> None:
        """Seal rows written before the chain existed, in id order (only while migration 7 is applied)."""
        rows = list(db.query("SELECT * FROM audit_log WHERE hash IS NULL ORDER BY id"))
        if not rows:
            return
        prev = self._head(db)
        prev_hash = prev["hash"] if prev else GENESIS
        for row in rows:
            row.update(role=row.get("role") or "unrecorded", actor_name=row.get("actor_name") or row["actor"])
            digest = seal(self.audit_key, prev_hash, row)
            db.execute("UPDATE audit_log SET prev_hash = ?, hash = ?, role = ?, actor_name = ? WHERE id = ?",
                       [prev_hash, digest, row["role"], row["actor_name"], row["id"]])
            prev_hash = digest
        self._set_head(db, rows[-1]["id"], prev_hash)

    @staticmethod
    def _head(db: Database) -> dict | None:
        row = db.execute("SELECT value FROM settings WHERE key = ?", [_AUDIT_HEAD]).fetchone()
        return json.loads(row[0]) if row else None

    def _key_head(self, db: Database) -> None:
        if head := self._head(db):
            self._set_head(db, head["id"], head["hash"])

    def _set_head(self, db: Database, row_id: int, digest: str) -> None:
        head = {"id": row_id, "hash": digest, "mac": seal_head(self.audit_key, row_id, digest)}
        db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", [_AUDIT_HEAD, json.dumps(head)])

    def row(self, table: str, row_id: int) -> dict | None:
        """One row of `table` by primary key, or None."""
        with self.read() as db:
            rows = list(db.query(f"SELECT * FROM [{table}] WHERE id = ?", [row_id]))
        return rows[0] if rows else None

    def setting(self, key: str) -> str | None:
        with self.read() as db:
            row = db.execute("SELECT value FROM settings WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def audit(self, db: Database, actor: str, action: str, target_type: str = "", target_id: Any = "",
              detail: dict | None = None, *, role: str = "system", actor_name: str = "") -> None:
        """Append one sealed audit row inside the caller's write transaction (BEGIN IMMEDIATE holds the write
        lock, so no other writer can take the same id or chain from the same head)."""
        last = db.execute("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1").fetchone()
        row = {"id": (last[0] + 1) if last else 1, "at": utc_now(), "actor": actor, "actor_name": actor_name or actor,
               "role": role, "action": action, "target_type": target_type, "target_id": str(target_id),
               "detail": json.dumps(detail or {}, sort_keys=True)}
        row["prev_hash"] = last[1] if last else GENESIS
        row["hash"] = seal(self.audit_key, row["prev_hash"], row)
        db["audit_log"].insert(row)
        self._set_head(db, row["id"], row["hash"])

    def log_action(self, actor: str, action: str, target_type: str = "", target_id: Any = "",
                   detail: dict | None = None, *, role: str = "system") -> None:
        with self.write() as db:
            self.audit(db, actor, action, target_type, target_id, detail, role=role)

    def verify_audit(self) -> ChainReport:
        """Recompute the whole chain (streamed in id order) against the seals and the head."""
        with self.read() as db:
            rows = db.query("SELECT * FROM audit_log ORDER BY id")
            return verify_chain(self.audit_key, rows, self._head(db))

    def audit_rows(self, limit: int = 100) -> list[dict]:
        with self.read() as db:
            return list(db.query("SELECT * FROM audit_log ORDER BY id DESC LIMIT ?", [limit]))
def _is_database_full(error: BaseException) -> bool:
    return isinstance(error, sqlite3.OperationalError) and "database or disk is full" in str(error)


def open_store(config: Config) -> Store:
    """The store for this config, migrated (idempotent). Whatever this process writes from now on is
    readable by its user only (files 0600, folders 0700)."""
    os.umask(0o077)
    store = Store(config.db_path)
    store.migrate()
    return store
