"""`python -m engine users ...` and `python -m engine audit-log ...`: the Admin page's account and audit-trail
actions for the server's shell (which acts as the system user: shell access to RADLENS_HOME is full access)."""

from __future__ import annotations

import getpass
import json
import sys

from engine.context import ACCOUNT_ROLES, Context
from engine.errors import InvalidOption
from engine.identity.accounts import (
    add_account,
    issue_setup_token,
    list_accounts,
    reset_password,
    set_disabled,
    set_role,
)
from engine.identity.trail import read_audit_log, verify_audit_log

__all__ = ["add_parsers", "COMMANDS", "setup_hint", "read_password"]


def read_password(args) -> str:
    """From stdin with --password-stdin (scripts), else asked twice on the terminal; never an argument,
    so it cannot land in the shell history or the process list."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Password again: "):
        raise InvalidOption("the two passwords differ")
    return first


def _users(args, ctx: Context) -> int:
    if args.action == "list":
        for a in list_accounts(ctx):
            status = "disabled" if a.disabled else "locked" if a.locked_until else "active"
            print(f"{a.username:24} {a.role:11} {status:9} {a.display_name}")
        return 0
    if args.action == "add":
        account = add_account(ctx, args.username, read_password(args), args.role or "clinician", args.name or "")
        print(f"added {account.username} ({account.role})")
    elif args.action == "set-role":
        set_role(ctx, args.username, args.role or "")
        print(f"{args.username} is now {args.role}; their sessions were ended")
    elif args.action in ("disable", "enable"):
        set_disabled(ctx, args.username, args.action == "disable")
        print(f"{args.username} {args.action}d")
    elif args.action == "reset-password":
        reset_password(ctx, args.username, read_password(args))
        print(f"password of {args.username} reset; their sessions were ended")
    return 0


def _audit_log(args, ctx: Context) -> int:
    if args.action == "verify":
        report, seconds = verify_audit_log(ctx)
        print(f"{report.describe()} ({seconds:.2f} s)")
        return 0 if report.ok else 1
    for row in reversed(read_audit_log(ctx, args.actor or "", args.filter or "", limit=args.limit)):
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['id']:>7} {row['at'][:19]} {row['actor']:28} {row['role'] or '-':11} {row['action']:20} "
                  f"{row['target_type']} {row['target_id']} {row['detail']}")
    return 0


def add_parsers(sub) -> None:
    users = sub.add_parser("users", help="local accounts: add, list, set-role, disable, enable, reset-password")
    users.add_argument("action", choices=["add", "list", "set-role", "disable", "enable", "reset-password"])
    users.add_argument("username", nargs="?", default="", help="the account (all actions but list)")
    users.add_argument("--role", choices=ACCOUNT_ROLES, help="for add (default clinician) and set-role")
    users.add_argument("--name", help="display name (add)")
    users.add_argument("--password-stdin", action="store_true",
                       help="read the password from the first line of stdin instead of asking")
    log = sub.add_parser("audit-log", help="verify the audit trail's hash chain, or show its latest rows")
    log.add_argument("action", choices=["verify", "show"])
    log.add_argument("--actor", help="show: only rows whose actor starts with this (e.g. local:alice)")
    log.add_argument("--filter", help="show: only actions starting with this (e.g. login)")
    log.add_argument("--limit", type=int, default=50, help="show: this many newest rows (default 50)")
    log.add_argument("--json", action="store_true", help="show: one JSON object per line")


def _checked_users(args, ctx: Context) -> int:
    if args.action != "list" and not args.username:
        raise InvalidOption(f"users {args.action} needs a user name")
    return _users(args, ctx)


COMMANDS = {"users": _checked_users, "audit-log": _audit_log}


def setup_hint(ctx: Context) -> str | None:
    """What the terminal says when no account exists yet (local accounts only): a one-time link."""
    if ctx.config.auth.mode != "local":
        return None
    token = issue_setup_token(ctx.store)
    if token is None:
        return None
    auth = ctx.config.auth
    return (f"No RadLens account exists yet. Create the first administrator (once, within 24 hours) at\n"
            f"    http://{auth.address if auth.address not in ('0.0.0.0', '::') else '127.0.0.1'}:{auth.port}"
            f"/?setup={token}\nor here: python -m engine users add NAME --role admin")
