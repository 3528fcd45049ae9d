"""Store: idempotent migrations, append-only audit log, WAL, concurrent writers from several processes."""

import multiprocessing
import sqlite3

import pytest

from engine.store import MIGRATIONS, Store


def test_migrations_are_idempotent(store):
    assert store.migrate() == []
    with store.read() as db:
        versions = [r[0] for r in db.execute("SELECT version FROM schema_migrations")]
        assert versions == [m[0] for m in MIGRATIONS]
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = set(db.table_names())
    assert {"cases", "images", "predictions", "reviews", "models", "jobs", "job_metrics", "audit_log"} <= tables


def test_salt_survives_remigration(store):
    salt = store.setting("uid_salt")
    store.migrate()
    assert store.setting("uid_salt") == salt and len(salt) == 64


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


def _writer(path: str, worker: int, n: int) -> None:
    store = Store(path)
    for i in range(n):
        store.log_action(f"worker{worker}", "write", "test", i)


def test_four_processes_writing_at_once_lose_nothing(store):
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_writer, args=(str(store.path), w, 500)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]  # a 'database is locked' would exit non-zero
    with store.read() as db:
        rows = db.execute("SELECT actor, count(*), count(DISTINCT target_id) FROM audit_log GROUP BY actor").fetchall()
    assert sorted(rows) == [(f"worker{w}", 500, 500) for w in range(4)]
