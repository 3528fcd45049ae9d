"""Reading and verifying the audit trail (admins only): filters for the Admin page and the CLI."""

from __future__ import annotations

import time

from engine.audit import ChainReport
from engine.context import Context

__all__ = ["read_audit_log", "verify_audit_log", "audit_actions"]


def read_audit_log(ctx: Context, actor: str = "", action: str = "", since: str = "", limit: int = 500) -> list[dict]:
    """Newest first; `actor` and `action` match a prefix (e.g. 'local:', 'login'), `since` an ISO date."""
    ctx.require("audit.read")
    where, params = ["1 = 1"], []
    for column, value in (("actor", actor), ("action", action)):
        if value:
            where.append(f"{column} LIKE ? ESCAPE '\\'")
            params.append(value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
    if since:
        where.append("at >= ?")
        params.append(since)
    with ctx.store.read() as db:
        return list(db.query(f"SELECT id, at, actor, actor_name, role, action, target_type, target_id, detail "
                             f"FROM audit_log WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?", [*params, limit]))


def audit_actions(ctx: Context) -> list[str]:
    ctx.require("audit.read")
    with ctx.store.read() as db:
        return [r[0] for r in db.execute("SELECT DISTINCT action FROM audit_log ORDER BY action")]


def verify_audit_log(ctx: Context, record: bool = True) -> tuple[ChainReport, float]:
    """The chain's verification and how long it took (seconds); the check itself is recorded unless asked not
    to (the Admin page verifies on every visit and would fill the trail with its own checks)."""
    ctx.require("audit.read")
    started = time.perf_counter()
    report = ctx.store.verify_audit()
    seconds = time.perf_counter() - started
    if record:
        ctx.log("audit.verify", "audit_log", "", {"ok": report.ok, "rows": report.rows, "problem": report.problem})
    return report, seconds
