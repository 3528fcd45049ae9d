"""Admin page pieces: the account table and forms, live sessions, the audit trail with its verification.
Each returns what the admin asked for; the page acts through the engine (which checks `user.manage`)."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from engine.context import ACCOUNT_ROLES, PERMISSIONS, ROLES
from engine.identity import Account, Session

__all__ = ["accounts_table", "add_form", "change_form", "sessions_table", "audit_filters", "audit_table",
           "role_matrix"]


def _when(value: str | None) -> str:
    return (value or "")[:19].replace("T", " ")


def accounts_table(accounts: list[Account]) -> None:
    st.dataframe(pd.DataFrame([{
        "User name": a.username, "Display name": a.display_name, "Role": a.role,
        "Status": "disabled" if a.disabled else ("locked" if a.locked_until else "active"),
        "Failed sign-ins": a.failed_logins, "Last sign-in (UTC)": _when(a.last_login_at),
        "Created (UTC)": _when(a.created_at)} for a in accounts]), hide_index=True, width="stretch")


def add_form() -> dict | None:
    with st.form("admin.add", clear_on_submit=True):
        st.markdown("**Add a user**")
        c1, c2, c3 = st.columns(3)
        username = c1.text_input("User name", help="lower-case letters, digits, '.', '_' or '-'")
        display = c2.text_input("Display name", max_chars=80)
        role = c3.selectbox("Role", ACCOUNT_ROLES)
        password = st.text_input("Initial password (hand it over in person; they can change it)", type="password")
        if st.form_submit_button("Add user", type="primary"):
            return {"username": username.strip().lower(), "display_name": display, "role": role, "password": password}
    return None


def change_form(accounts: list[Account]) -> tuple[str, str, dict] | None:
    """(action, username, values) for: role, disable / enable, reset password."""
    if not accounts:
        return None
    with st.form("admin.change"):
        st.markdown("**Change a user**")
        c1, c2 = st.columns(2)
        username = c1.selectbox("User", [a.username for a in accounts])
        action = c2.selectbox("Change", ["Set role", "Disable", "Enable (and unlock)", "Reset password"])
        role = st.selectbox("New role (for Set role)", ACCOUNT_ROLES)
        password = st.text_input("New password (for Reset password)", type="password")
        if st.form_submit_button("Apply"):
            return action, username, {"role": role, "password": password}
    return None


def sessions_table(sessions: list[Session]) -> str | None:
    """Live sessions; returns the id of one the admin chose to end."""
    if not sessions:
        st.caption("No live session.")
        return None
    st.dataframe(pd.DataFrame([{
        "Session": s.id[:12], "User": s.user.id, "Name": s.user.name, "Role": s.user.role, "Sign-in": s.auth,
        "Started (UTC)": _when(s.started_at), "Last activity (UTC)": _when(s.last_seen)} for s in sessions]),
        hide_index=True, width="stretch")
    c1, c2 = st.columns([3, 1])
    chosen = c1.selectbox("Session to end", [s.id[:12] for s in sessions], key="admin.session")
    if c2.button("End session", key="admin.revoke"):
        return next(s.id for s in sessions if s.id.startswith(chosen))
    return None


def audit_filters(actions: list[str]) -> dict:
    c1, c2, c3 = st.columns(3)
    actor = c1.text_input("Who (prefix)", placeholder="local:alice", key="audit.actor")
    action = c2.selectbox("Action", ["(any)", *actions], key="audit.action")
    since = c3.date_input("Since", value=None, format="YYYY-MM-DD", key="audit.since")
    return {"actor": actor.strip(), "action": "" if action == "(any)" else action,
            "since": since.isoformat() if since else ""}


def audit_table(rows: list[dict]) -> None:
    st.dataframe(pd.DataFrame([{
        "#": r["id"], "When (UTC)": _when(r["at"]), "Who": r["actor"], "Name": r["actor_name"], "Role": r["role"],
        "Action": r["action"], "Target": f"{r['target_type']} {r['target_id']}".strip(),
        "Detail": ", ".join(f"{k}={v}" for k, v in json.loads(r["detail"] or "{}").items())} for r in rows]),
        hide_index=True, width="stretch", height=420)


def role_matrix() -> None:
    roles = [*ACCOUNT_ROLES]
    st.dataframe(pd.DataFrame([{"Permission": name, "Allows": text,
                                **{r: "yes" if name in ROLES[r] else "" for r in roles}}
                               for name, text in PERMISSIONS.items()]), hide_index=True, width="stretch")
