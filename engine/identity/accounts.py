"""Local accounts: Argon2id password hashes (argon2-cffi), a minimum length, a growing wait after each failed
sign-in and a temporary lock after several in a row, admin reset, and a one-time token for the first admin.

Nothing here ever stores, logs or returns a password. Every refused sign-in (unknown name, wrong password,
too soon after a failure, locked, disabled) gets the same message and costs the same one password check, so
neither the answer nor its timing tells whether an account exists or whether the password was right.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from engine.context import ACCOUNT_ROLES, Context, User
from engine.errors import AccountLocked, InvalidOption, LoginFailed, UnknownUser, WeakPassword
from engine.store import Store, utc_now

__all__ = ["Account", "list_accounts", "get_account", "add_account", "set_role", "set_disabled", "reset_password",
           "change_password", "authenticate", "issue_setup_token", "create_first_admin", "has_accounts",
           "check_password_policy", "USERNAME"]

_HASHER = PasswordHasher()  # Argon2id, argon2-cffi's defaults (RFC 9106 low-memory profile)
_DUMMY_HASH = _HASHER.hash(secrets.token_hex(16))  # verified against for unknown users: same time either way
USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,31}$")
_SETUP = "setup_token"
REFUSED = ("wrong user name or password, or the account is waiting after failed sign-ins, locked or disabled: "
           "try again in a minute, or ask an administrator")
_SETUP_HOURS = 24


@dataclass(frozen=True)
class Account:
    id: int
    username: str
    display_name: str
    role: str
    disabled: bool
    locked_until: str | None
    failed_logins: int
    created_at: str
    last_login_at: str | None

    @property
    def user(self) -> User:
        return User(f"local:{self.username}", self.display_name or self.username, self.role)

    @classmethod
    def from_row(cls, row: dict) -> Account:
        return cls(row["id"], row["username"], row["display_name"] or "", row["role"], bool(row["disabled"]),
                   row["locked_until"], row["failed_logins"] or 0, row["created_at"], row["last_login_at"])


def _now(now: dt.datetime | None) -> dt.datetime:
    return now or dt.datetime.now(dt.timezone.utc)


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


# The words that the lists of leaked passwords are made of, once digits and symbols are taken off (what is left
# of "Password2026!" is "password"): a long password built on one of them is guessed first.
_COMMON_WORDS = frozenset("""
password passwort passw0rd qwerty qwertz azerty asdfgh zxcvbn qwertyuiop asdfghjkl iloveyou letmein welcome
admin administrator root changeme default secret master monkey dragon sunshine princess football baseball
trustno shadow superman batman starwars whatever freedom hello login abc abcdef abcdefgh abcdefghijkl
radlens hospital radiology clinic doctor nurse patient pacs dicom orthanc summer winter spring autumn
""".split())
_RUNS = "abcdefghijklmnopqrstuvwxyz 0123456789 qwertyuiop asdfghjkl zxcvbnm 1qaz2wsx3edc4rfv 1q2w3e4r5t6y7u8i9o0p"


def _predictable(password: str) -> str:
    """Why the password is guessed early (repeated, a run of keys, a common word dressed up), or ''."""
    lowered = password.lower()
    if len(set(lowered)) <= 3:
        return "it uses three or fewer different characters"
    for size in range(1, len(lowered) // 2 + 1):
        if (lowered[:size] * (len(lowered) // size + 1))[:len(lowered)] == lowered:
            return f"it repeats {lowered[:size]!r}"
    if any(lowered in run or lowered in run[::-1] for run in _RUNS.split()):
        return "it is a run of keys or letters"
    letters = "".join(c for c in lowered if c.isalpha())
    dressed = "".join(c for c in lowered.strip(_DRESSING).translate(_LEET) if c.isalpha())  # "P@ssw0rd" too
    if not letters or _made_of_common_pieces(letters) or _made_of_common_pieces(dressed):
        return "it is made of common words or runs of keys, with digits or symbols around them"
    return ""


_LEET = str.maketrans("@4310$5!7", "aaeiossit")
_DRESSING = "0123456789!@#$%^&*()-_=+.,;:?~ "


def _made_of_common_pieces(core: str) -> bool:
    """Whether `core` splits into common words and runs of two or more keys (dynamic programming)."""
    runs = [r for run in _RUNS.split() for r in (run, run[::-1])]
    done = [True] + [False] * len(core)
    for end in range(1, len(core) + 1):
        done[end] = any(done[start] and (core[start:end] in _COMMON_WORDS or
                                         (end - start >= 2 and any(core[start:end] in r for r in runs)))
                        for start in range(end))
    return done[-1]


def check_password_policy(ctx_or_min: Context | int, username: str, password: str) -> None:
    minimum = ctx_or_min if isinstance(ctx_or_min, int) else ctx_or_min.config.auth.min_password
    if len(password) < minimum:
        raise WeakPassword(f"the password needs at least {minimum} characters (it has {len(password)}); "
                           "a few unrelated words make a long one that is easy to remember")
    if username and username.lower() in password.lower():
        raise WeakPassword("the password must not contain the user name")
    if reason := _predictable(password):
        raise WeakPassword(f"this password is among the first an attacker tries ({reason}); a few unrelated "
                           "words make a long one that is easy to remember")


def _check_username(username: str) -> str:
    if not USERNAME.match(username or ""):
        raise InvalidOption("a user name is 2-32 characters: lower-case letters, digits, '.', '_' or '-', "
                            "starting with a letter or digit")
    return username


def _check_role(role: str) -> str:
    if role not in ACCOUNT_ROLES:
        raise InvalidOption(f"unknown role {role!r}: use one of {', '.join(ACCOUNT_ROLES)}")
    return role


def has_accounts(store: Store) -> bool:
    with store.read() as db:
        return bool(db.execute("SELECT 1 FROM users LIMIT 1").fetchone())


def list_accounts(ctx: Context) -> list[Account]:
    ctx.require("user.manage")
    with ctx.store.read() as db:
        return [Account.from_row(r) for r in db.query("SELECT * FROM users ORDER BY username")]


def get_account(store: Store, username: str) -> Account:
    with store.read() as db:
        rows = list(db.query("SELECT * FROM users WHERE username = ?", [username]))
    if not rows:
        raise UnknownUser(f"no account is called {username!r}; `python -m engine users list` shows them")
    return Account.from_row(rows[0])


def _insert(ctx: Context, db, username: str, password: str, role: str, display_name: str) -> Account:
    if db.execute("SELECT 1 FROM users WHERE username = ?", [username]).fetchone():
        raise InvalidOption(f"an account called {username!r} already exists")
    db["users"].insert({
        "username": username, "display_name": display_name.strip()[:80] or username, "role": role,
        "password_hash": _HASHER.hash(password), "disabled": 0, "failed_logins": 0, "must_change": 0,
        "created_at": utc_now(), "created_by": ctx.actor, "password_changed_at": utc_now(),
    })
    ctx.audit(db, "user.add", "user", f"local:{username}", {"role": role})
    return Account.from_row(next(db.query("SELECT * FROM users WHERE username = ?", [username])))


def add_account(ctx: Context, username: str, password: str, role: str, display_name: str = "") -> Account:
    ctx.require("user.manage")
    _check_username(username)
    _check_role(role)
    check_password_policy(ctx, username, password)
    with ctx.store.write() as db:
        return _insert(ctx, db, username, password, role, display_name)


def _update(ctx: Context, username: str, action: str, values: dict, detail: dict | None = None) -> Account:
    ctx.require("user.manage")
    with ctx.store.write() as db:
        if not db.execute("SELECT 1 FROM users WHERE username = ?", [username]).fetchone():
            raise UnknownUser(f"no account is called {username!r}")
        db.execute(f"UPDATE users SET {', '.join(f'{k} = ?' for k in values)} WHERE username = ?",
                   [*values.values(), username])
        ctx.audit(db, action, "user", f"local:{username}", detail)
        if values.get("disabled") or "role" in values or "password_hash" in values:
            # a changed account is signed out everywhere; its next sign-in gets the new role
            db.execute("UPDATE sessions SET ended_at = ?, end_reason = ? WHERE user_id = ? AND ended_at IS NULL",
                       [utc_now(), action, f"local:{username}"])
    return get_account(ctx.store, username)


def set_role(ctx: Context, username: str, role: str) -> Account:
    _check_role(role)
    if username == ctx.user.id.removeprefix("local:") and role != "admin":
        raise InvalidOption("you cannot take the admin role from yourself; another admin can")
    return _update(ctx, username, "user.role", {"role": role}, {"role": role})


def set_disabled(ctx: Context, username: str, disabled: bool) -> Account:
    if disabled and username == ctx.user.id.removeprefix("local:"):
        raise InvalidOption("you cannot disable your own account")
    values = {"disabled": int(disabled)} | ({} if disabled else {"failed_logins": 0, "locked_until": None})
    return _update(ctx, username, "user.disable" if disabled else "user.enable", values)


def reset_password(ctx: Context, username: str, password: str) -> Account:
    """An admin sets a new password (to hand over in person); the account is unlocked and signed out."""
    check_password_policy(ctx, username, password)
    return _update(ctx, username, "user.reset_password",
                   {"password_hash": _HASHER.hash(password), "failed_logins": 0, "locked_until": None,
                    "password_changed_at": utc_now()})


def change_password(ctx: Context, username: str, old: str, new: str, keep_session: str = "") -> None:
    """The signed-in user changes their own password (the old one is checked first). Every other session of
    the account ends (a password changed because it leaked must sign the other holder out); the session
    whose token is `keep_session` (the one changing it) stays."""
    authenticate(ctx, username, old, record=False)
    check_password_policy(ctx, username, new)
    kept = hashlib.sha256(keep_session.encode()).hexdigest() if keep_session else ""
    with ctx.store.write() as db:
        db.execute("UPDATE users SET password_hash = ?, password_changed_at = ? WHERE username = ?",
                   [_HASHER.hash(new), utc_now(), username])
        ended = db.execute("UPDATE sessions SET ended_at = ?, end_reason = 'user.change_password' WHERE user_id = ? "
                           "AND ended_at IS NULL AND id != ?", [utc_now(), f"local:{username}", kept]).rowcount
        ctx.audit(db, "user.change_password", "user", f"local:{username}", {"other_sessions_ended": ended})


def _wait_after(failures: int) -> float:
    """Seconds before the next attempt may be tried: 1, 2, 4, 8 ... after each failure in a row."""
    return float(2 ** (failures - 1)) if failures else 0.0


def authenticate(ctx: Context, username: str, password: str, now: dt.datetime | None = None,
                 record: bool = True) -> Account:
    """The account when the password is right; otherwise LoginFailed / AccountLocked, with the failure recorded
    (the account's counter and an audit row without the password; an unknown name is not written down, as
    it is often a password typed into the wrong field)."""
    moment = _now(now)
    with ctx.store.write() as db:
        account, failure = _attempt(ctx, db, username, password, moment, record)
    if failure:  # raised after the commit, so the failure is counted and logged
        raise failure
    return account


def _attempt(ctx: Context, db, username: str, password: str, moment: dt.datetime,
             record: bool) -> tuple[Account | None, LoginFailed | None]:
    policy = ctx.config.auth
    rows = list(db.query("SELECT * FROM users WHERE username = ?", [username]))
    # The one password check every attempt pays, whatever refuses it below.
    right = _verify(rows[0]["password_hash"] if rows else _DUMMY_HASH, password)
    if not rows:
        if record:
            ctx.store.audit(db, "anonymous", "login.failed", "user", "", {"reason": "unknown user name"},
                            role="none", actor_name="anonymous")
        return None, LoginFailed(REFUSED)
    row, who = rows[0], f"local:{username}"
    if row["locked_until"] and dt.datetime.fromisoformat(row["locked_until"]) > moment:
        return None, AccountLocked(REFUSED)
    failures = row["failed_logins"] or 0
    if failures and row["last_failed_at"]:
        ready = dt.datetime.fromisoformat(row["last_failed_at"]) + dt.timedelta(seconds=_wait_after(failures))
        if ready > moment:
            return None, LoginFailed(REFUSED)
    if row["disabled"]:
        return None, LoginFailed(REFUSED)
    if not right:
        failures += 1
        locked = failures >= policy.max_failures
        db.execute("UPDATE users SET failed_logins = ?, last_failed_at = ?, locked_until = ? WHERE id = ?",
                   [0 if locked else failures, _iso(moment),
                    _iso(moment + dt.timedelta(minutes=policy.lock_minutes)) if locked else None, row["id"]])
        if record:
            ctx.store.audit(db, who, "login.failed", "user", who,
                            {"reason": "wrong password", "failures": failures, "locked": locked},
                            role=row["role"], actor_name=row["display_name"] or username)
        return None, (AccountLocked if locked else LoginFailed)(REFUSED)
    if _HASHER.check_needs_rehash(row["password_hash"]):
        db.execute("UPDATE users SET password_hash = ? WHERE id = ?", [_HASHER.hash(password), row["id"]])
    db.execute("UPDATE users SET failed_logins = 0, locked_until = NULL, last_login_at = ? WHERE id = ?",
               [_iso(moment), row["id"]])
    row.update(failed_logins=0, locked_until=None, last_login_at=_iso(moment))
    return Account.from_row(row), None


def _verify(hashed: str, password: str) -> bool:
    try:
        return _HASHER.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_setup_token(store: Store, now: dt.datetime | None = None) -> str | None:
    """A one-time token to create the first admin, only while no account exists (a new one replaces the last).
    Only its SHA-256 is stored; the token itself goes to the terminal of whoever started the server."""
    if has_accounts(store):
        return None
    token = secrets.token_urlsafe(24)
    expires = _iso(_now(now) + dt.timedelta(hours=_SETUP_HOURS))
    with store.write() as db:
        db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)",
                   [_SETUP, json.dumps({"sha256": _digest(token), "expires": expires})])
    return token


def setup_token_valid(store: Store, token: str, now: dt.datetime | None = None) -> bool:
    with store.read() as db:
        return _token_valid(db, token, now)


def _token_valid(db, token: str, now: dt.datetime | None = None) -> bool:
    row = db.execute("SELECT value FROM settings WHERE key = ?", [_SETUP]).fetchone()
    if not row or not token or db.execute("SELECT 1 FROM users LIMIT 1").fetchone():
        return False
    saved = json.loads(row[0])
    return hmac.compare_digest(saved["sha256"], _digest(token)) and \
        dt.datetime.fromisoformat(saved["expires"]) > _now(now)


def create_first_admin(ctx: Context, token: str, username: str, password: str, display_name: str = "") -> Account:
    """Spend the set-up token on the first admin account (refused once any account exists)."""
    _check_username(username)
    check_password_policy(ctx, username, password)
    setup = ctx.as_user(User(f"local:{username}", display_name or username, "admin"))
    with ctx.store.write() as db:  # checked and spent in one write transaction: two sign-ups cannot both spend it
        if not _token_valid(db, token):
            raise LoginFailed("this set-up link is not valid (used, expired or replaced): run `python -m engine "
                              "init` for a new one, or `python -m engine users add NAME --role admin` on the server")
        db.execute("DELETE FROM settings WHERE key = ?", [_SETUP])
        return _insert(setup, db, username, password, "admin", display_name)
