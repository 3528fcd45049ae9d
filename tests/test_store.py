"""Store: idempotent migrations, append-only audit log, WAL, concurrent writers from several processes."""

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from engine.keys import secret_key
from engine.store import MIGRATIONS, Store

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # concurrent writer processes and a database of many rows


def test_migrations_are_idempotent(store):
    assert store.migrate() == []
    with store.read() as db:
        versions = [r[0] for r in db.execute("SELECT version FROM schema_migrations")]
        assert versions == [m[0] for m in MIGRATIONS]
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = set(db.table_names())
    assert {"cases", "images", "predictions", "reviews", "jobs", "job_metrics", "heatmap_audits", "audit_log"} <= tables
    assert not {"models", "explanation_audits"} & tables  # dead table gone; audits live in `jobs`


def test_an_old_database_keeps_its_audits_as_jobs(tmp_path):
    """A store written before migration 6: its explanation audit becomes a heatmap-audit job with its result."""
    from engine.cases.heatmap_audit import get_audit, list_audits

    old = Store(tmp_path / "old.db")
    with old.write() as db:
        db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT, applied_at TEXT)")
        for version, name, apply in MIGRATIONS[:5]:
            apply(db)
            db["schema_migrations"].insert({"version": version, "name": name, "applied_at": "then"})
        db["explanation_audits"].insert({
            "model_name": "cxr-pneumonia-resnet18", "model_version": "1.0.0", "weights_sha256": "ab" * 32,
            "method": "gradcam", "layer": "layer4", "dataset": "cxr_pneumonia", "split": "test", "limit_n": 4,
            "status": "finished", "done": 4, "total": 4, "summary": json.dumps({"n": 4, "border_share": [0.1, 0, 0.2]}),
            "heatmaps": b"", "actor": "ana", "created_at": "2026-11-30T10:00:00", "finished_at": "2026-11-30T10:01:00"})
        db.execute("INSERT INTO audit_log (at, actor, action, target_type, target_id, detail) "
                   "VALUES ('2026-11-30T10:00:00', 'demo-user', 'upload', 'image', '1', '{}')")
    assert old.migrate() == list(range(6, len(MIGRATIONS) + 1))
    # the row from before the chain was sealed once, by the migration that introduced the chain
    assert old.verify_audit().ok and old.verify_audit().rows == 1
    old.log_action("alice", "upload", "image", 2)
    assert old.verify_audit().ok and old.verify_audit().rows == 2
    [listed] = list_audits(old)
    assert listed["status"] == "finished" and listed["border_share"] == 0.1 and listed["done"] == listed["total"] == 4
    row = get_audit(old, listed["id"])
    assert json.loads(row["summary"])["n"] == 4 and row["actor"] == "ana" and row["layer"] == "layer4"
    with old.read() as db:
        assert "model_id" not in db["jobs"].columns_dict
        assert [r[0] for r in db.execute("SELECT kind FROM jobs")] == ["heatmap-audit"]


def test_an_old_salt_is_removed_from_the_database(store):
    with store.write() as db:  # what migrations 1-7 kept next to the data
        db.execute("INSERT INTO settings (key, value) VALUES ('uid_salt', ?)", ["ab" * 32])
        db.execute("DELETE FROM schema_migrations WHERE version = 8")
        db.execute("ALTER TABLE jobs DROP COLUMN pid_started")
    key = secret_key(store.path.parent, "pseudonym")
    assert store.migrate() == [8]
    assert store.setting("uid_salt") is None
    assert secret_key(store.path.parent, "pseudonym") == key  # pseudonyms stay stable across migrations


@pytest.mark.slow
@pytest.mark.parametrize("statement", ["UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"])
def test_audit_log_is_append_only(store, statement):
    store.log_action("alice", "upload", "image", 1)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        with store.write() as db:
            db.execute(statement)
    assert [r["actor"] for r in store.audit_rows()] == ["alice"]


def test_a_failed_transaction_leaves_nothing(store):
    with pytest.raises(RuntimeError):
        with store.write() as db:
            store.audit(db, "alice", "upload")
            raise RuntimeError("boom")
    assert store.audit_rows() == []


_WRITER = """
import sys
from engine.store import Store
store = Store(sys.argv[1])
for i in range(int(sys.argv[3])):
    store.log_action(f"worker{sys.argv[2]}", "write", "test", i)
"""


def test_four_processes_writing_at_once_lose_nothing(store):
    # Plain interpreters, not multiprocessing: a spawned child re-runs the parent's __main__, which after an
    # AppTest run in the same session is a dashboard page.
    workers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(store.path), str(w), "500"], cwd=ROOT,
                                stderr=subprocess.PIPE, text=True) for w in range(4)]
    errors = [w.communicate(timeout=300)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0, 0], errors  # 'database is locked' would exit non-zero
    with store.read() as db:
        rows = db.execute("SELECT actor, count(*), count(DISTINCT target_id) FROM audit_log GROUP BY actor").fetchall()
    assert sorted(rows) == [(f"worker{w}", 500, 500) for w in range(4)]
