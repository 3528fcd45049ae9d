"""Sign-in sessions: a random token held by the browser tab (only its SHA-256 is stored), ended after
`idle_minutes` without an interaction or `max_hours` after sign-in, by signing out, or by an admin.
Sign-ins, sign-outs and expiries are audit rows."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from engine.context import Context, User
from engine.errors import SessionExpired
from engine.store import Store

__all__ = ["Session", "start_session", "check_session", "end_session", "list_sessions", "revoke_session"]

_TOUCH_EVERY_S = 5  # last_seen is written at most this often (one interaction = one page run)


@dataclass(frozen=True)
class Session:
    id: str  # SHA-256 of the token
    user: User
    auth: str
    started_at: str
    last_seen: str
    expires_at: str
    ended_at: str | None = None
    end_reason: str | None = None

    @classmethod
    def from_row(cls, row: dict) -> Session:
        return cls(row["id"], User(row["user_id"], row["display_name"] or row["user_id"], row["role"]), row["auth"],
                   row["started_at"], row["last_seen"], row["expires_at"], row["ended_at"], row["end_reason"])


def _now(now: dt.datetime | None) -> dt.datetime:
    return now or dt.datetime.now(dt.timezone.utc)


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(ctx: Context, user: User, auth: str, now: dt.datetime | None = None) -> str:
    """Open a session for `user` (just authenticated) and log the sign-in; returns the token."""
    moment, token = _now(now), secrets.token_urlsafe(32)
    with ctx.store.write() as db:
        db["sessions"].insert({
            "id": _digest(token), "user_id": user.id, "display_name": user.name, "role": user.role, "auth": auth,
            "started_at": _iso(moment), "last_seen": _iso(moment),
            "expires_at": _iso(moment + dt.timedelta(hours=ctx.config.auth.max_hours)),
        })
        ctx.as_user(user).audit(db, "login", "session", _digest(token)[:12], {"auth": auth})
    return token


def check_session(ctx: Context, token: str | None, now: dt.datetime | None = None, touch: bool = True) -> Session:
    """The live session for `token`, its last interaction moved to now; SessionExpired (with the reason, and
    the session ended and logged) when it is idle too long, too old, signed out or revoked."""
    if not token:
        raise SessionExpired("sign in to continue")
    moment, policy = _now(now), ctx.config.auth
    with ctx.store.write() as db:
        rows = list(db.query("SELECT * FROM sessions WHERE id = ?", [_digest(token)]))
        if not rows:
            raise SessionExpired("sign in to continue")
        session = Session.from_row(rows[0])
        if session.ended_at:
            raise SessionExpired(_ENDED.get(session.end_reason or "", "your session has ended: sign in again"))
        idle = moment - dt.datetime.fromisoformat(session.last_seen)
        reason = ""
        if moment >= dt.datetime.fromisoformat(session.expires_at):
            reason = "session.max_age"
        elif idle > dt.timedelta(minutes=policy.idle_minutes):
            reason = "session.idle"
        if reason:
            _end(ctx.as_user(session.user), db, session.id, reason, moment)
        elif touch and idle.total_seconds() >= _TOUCH_EVERY_S:
            db.execute("UPDATE sessions SET last_seen = ? WHERE id = ?", [_iso(moment), session.id])
    if reason:
        raise SessionExpired(_ENDED[reason].format(idle=policy.idle_minutes, hours=policy.max_hours))
    return session


_ENDED = {
    "session.idle": "you were signed out after {idle:g} minutes without activity: sign in again",
    "session.max_age": "your session reached its {hours:g}-hour limit: sign in again",
    "logout": "you signed out",
    "session.revoke": "an administrator ended your session: sign in again",
    "user.disable": "your account was disabled",
    "user.role": "your role changed: sign in again",
    "user.reset_password": "your password was reset: sign in with the new one",
    "user.change_password": "your password was changed in another session: sign in with the new one",
}


def _end(ctx: Context, db, session_id: str, reason: str, moment: dt.datetime) -> None:
    db.execute("UPDATE sessions SET ended_at = ?, end_reason = ? WHERE id = ? AND ended_at IS NULL",
               [_iso(moment), reason, session_id])
    ctx.audit(db, reason if reason != "session.revoke" else "session.end", "session", session_id[:12])


def end_session(ctx: Context, token: str, reason: str = "logout") -> None:
    """Sign out: the session ends now (logged as the session's own user)."""
    with ctx.store.write() as db:
        rows = list(db.query("SELECT * FROM sessions WHERE id = ? AND ended_at IS NULL", [_digest(token or "")]))
        if rows:
            _end(ctx.as_user(Session.from_row(rows[0]).user), db, rows[0]["id"], reason, _now(None))


def list_sessions(ctx: Context, live_only: bool = True, limit: int = 200) -> list[Session]:
    ctx.require("user.manage")
    where = "WHERE ended_at IS NULL" if live_only else ""
    with ctx.store.read() as db:
        rows = db.query(f"SELECT * FROM sessions {where} ORDER BY started_at DESC LIMIT ?", [limit])
        return [Session.from_row(r) for r in rows]


def revoke_session(ctx: Context, session_id: str) -> None:
    """An admin ends someone's session (by the id the admin page shows)."""
    ctx.require("user.manage")
    with ctx.store.write() as db:
        db.execute("UPDATE sessions SET ended_at = ?, end_reason = 'session.revoke' WHERE id = ? AND ended_at IS NULL",
                   [_iso(_now(None)), session_id])
        ctx.audit(db, "session.revoke", "session", session_id[:12])


def live_session_count(store: Store) -> int:
    with store.read() as db:
        return db.execute("SELECT count(*) FROM sessions WHERE ended_at IS NULL").fetchone()[0]
