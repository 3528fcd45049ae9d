"""Sign-in and audit-trail costs: Argon2id sign-in (right password, wrong password, unknown user), the session
check every page run makes, sealing an audit row (vs an unsealed insert, same run), and verifying a 100,000-row
trail.

Run: python -m bench.identity   Targets (issue #14): sign-in < 1 s; verify of 100k rows: measured.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import report, summary, timed
from engine.config import Config
from engine.context import Context, User
from engine.errors import LoginFailed
from engine.identity.accounts import add_account, authenticate
from engine.identity.sessions import check_session, start_session
from engine.store import utc_now

PASSWORD = "correct horse battery staple"
N_ROWS = 100_000


def _refused(ctx: Context, name: str, password: str) -> None:
    try:
        authenticate(ctx, name, password, record=False)
    except LoginFailed:
        pass
    with ctx.store.write() as db:  # forget the failure, so the next try is checked, not refused for waiting
        db.execute("UPDATE users SET failed_logins = 0, last_failed_at = NULL")


def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        ctx = Context.open(Config(home=Path(home), data_dir=None))
        add_account(ctx, "alice", PASSWORD, "clinician")
        sign_in = {
            "right_password": summary(timed(lambda: authenticate(ctx, "alice", PASSWORD), 15)),
            "wrong_password": summary(timed(lambda: _refused(ctx, "alice", "wrong password"), 15)),
            "unknown_user": summary(timed(lambda: _refused(ctx, "nobody", PASSWORD), 15)),
        }
        token = start_session(ctx, User("local:alice", "alice", "clinician"), "local")
        session = summary(timed(lambda: check_session(ctx, token), 51))

        def sealed(n: int) -> None:
            with ctx.store.write() as db:
                for i in range(n):
                    ctx.audit(db, "case.view", "case", i)

        with tempfile.TemporaryDirectory() as other:
            base = Context.open(Config(home=Path(other), data_dir=None))
            baseline = [t / 1000 for t in timed(lambda: _plain(base, 1000), 5)]
        append = [t / 1000 for t in timed(lambda: sealed(1000), 5)]
        sealed(N_ROWS - ctx.store.verify_audit().rows)
        rows = ctx.store.verify_audit().rows
        verify = summary(timed(ctx.store.verify_audit, 3))
    append_s, baseline_s = summary(append), summary(baseline)
    report("identity", {
        "sign_in": sign_in, "target_sign_in_ms": 1000, "session_check": session,
        "audit_append_per_row": append_s, "unsealed_insert_per_row": baseline_s,
        "append_ratio": round(append_s["median_ms"] / baseline_s["median_ms"], 1),
        "verify": {"rows": rows, **verify, "rows_per_s": round(rows / (verify["median_ms"] / 1000))},
    })


def _plain(ctx: Context, n: int) -> None:
    with ctx.store.write() as db:
        for i in range(n):
            db["audit_log"].insert({"at": utc_now(), "actor": "x", "action": "case.view", "target_type": "case",
                                    "target_id": str(i), "detail": "{}"})


if __name__ == "__main__":
    main()
