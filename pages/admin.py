"""Admin: users and roles, live sessions, the audit trail and its verification."""

import streamlit as st

from dashboard import admin_widgets, links, resources, widgets
from dashboard.text import md, plain
from engine.identity import (
    add_account,
    audit_actions,
    list_accounts,
    list_sessions,
    read_audit_log,
    reset_password,
    revoke_session,
    set_disabled,
    set_role,
    verify_audit_log,
)

ctx = resources.context()
st.title("Administration")
links.page_link("pacs", label="PACS nodes and the routing of arriving studies", icon=":material/lan:")
CHANGES = {
    "Set role": lambda name, v: set_role(ctx, name, v["role"]),
    "Disable": lambda name, v: set_disabled(ctx, name, True),
    "Enable (and unlock)": lambda name, v: set_disabled(ctx, name, False),
    "Reset password": lambda name, v: reset_password(ctx, name, v["password"]),
}

users, sessions, trail = st.tabs(["Users", "Sessions", "Audit trail"])
with users, widgets.engine_errors():
    if wanted := admin_widgets.add_form():
        account = add_account(ctx, **wanted)
        st.success(md("Added {name} as {role}.", name=account.username, role=account.role))
    if change := admin_widgets.change_form(list_accounts(ctx)):
        action, name, values = change
        CHANGES[action](name, values)
        st.success(md("{action}: done for {name} (their sessions were ended).", action=action, name=name))
    admin_widgets.accounts_table(list_accounts(ctx))
    with st.expander("What each role may do"):
        admin_widgets.role_matrix()
with sessions, widgets.engine_errors():
    if session_id := admin_widgets.sessions_table(list_sessions(ctx)):
        revoke_session(ctx, session_id)
        st.rerun()
with trail, widgets.engine_errors():
    report, seconds = verify_audit_log(ctx, record=False)
    (st.success if report.ok else st.error)(plain(report.describe()) + f" (checked in {seconds:.2f} s)")
    rows = read_audit_log(ctx, **admin_widgets.audit_filters(audit_actions(ctx)))
    st.caption(md("{n} row(s), newest first (at most 500 shown).", n=len(rows)))
    admin_widgets.audit_table(rows)
