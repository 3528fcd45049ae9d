"""The login gate: runs in the router before any page, so nothing (no page, no ?case=, no download) renders
for someone who has not signed in. One function per RADLENS_AUTH mode, in a registry."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st
from streamlit.errors import StreamlitSecretNotFoundError

from dashboard import resources, state
from dashboard.text import md, plain
from engine.config import is_loopback
from engine.context import UNAUTHENTICATED, Context, User
from engine.errors import EngineError, SessionExpired
from engine.identity import (
    authenticate,
    change_password,
    check_session,
    create_first_admin,
    end_session,
    oidc_user,
    setup_token_valid,
    start_session,
)

__all__ = ["signed_in_user", "sign_out", "account_panel", "refreshing"]


def _session_user(ctx: Context) -> User | None:
    """The user of this tab's live session, or None (with the reason kept to show on the form)."""
    token = st.session_state.get(state.SESSION)
    if not token:
        return None
    try:
        return check_session(ctx, token).user
    except SessionExpired as expired:
        st.session_state.pop(state.SESSION, None)
        st.session_state[state.SIGN_IN_NOTE] = str(expired)
        return None


def _still_signed_in() -> bool:
    """The tab's session is still live (not ended, idle, revoked, nor its account disabled), checked without
    counting as activity: a page left refreshing itself must not keep a session alive."""
    ctx = resources.base_context()
    if ctx.config.auth.mode == "none":
        return True
    try:
        check_session(ctx, st.session_state.get(state.SESSION), touch=False)
        return True
    except SessionExpired as expired:
        st.session_state.pop(state.SESSION, None)
        st.session_state[state.SIGN_IN_NOTE] = str(expired)
        return False


def refreshing(render: Callable, every: float | None) -> Callable:
    """`render` as a fragment that reruns itself every `every` seconds (None: never). A fragment's rerun skips
    the page's sign-in gate, so each one checks the session first; once it has ended the whole app reruns and
    the gate shows the sign-in form instead."""
    def guarded(*args, **kwargs):
        if every and not _still_signed_in():
            st.rerun()
        return render(*args, **kwargs)

    return st.fragment(run_every=every)(guarded)


def _narrow():
    """The sign-in forms sit in a centred column, not across the whole wide layout."""
    return st.columns([1, 2, 1])[1]


def _login_form(ctx: Context) -> None:
    with _narrow():
        st.title("Sign in to RadLens")
        if note := st.session_state.get(state.SIGN_IN_NOTE):
            st.info(plain(note), icon=":material/info:")
        with st.form("login"):
            username = st.text_input("User name", autocomplete="username")
            password = st.text_input("Password", type="password", autocomplete="current-password")
            submitted = st.form_submit_button("Sign in", type="primary")
        if submitted:
            try:
                account = authenticate(ctx, username.strip().lower(), password)
            except EngineError as error:
                st.error(plain(error), icon=":material/lock:")
                return
            st.session_state[state.SESSION] = start_session(ctx, account.user, "local")
            st.session_state.pop(state.SIGN_IN_NOTE, None)
            st.rerun()
        st.caption("No account? Ask your RadLens administrator. Forgotten password: an administrator can reset it.")


def _first_admin_form(ctx: Context, token: str) -> None:
    with _narrow():
        _first_admin_fields(ctx, token)


def _first_admin_fields(ctx: Context, token: str) -> None:
    st.title("Create the first administrator")
    st.caption("This link works once, until an account exists. The administrator then adds clinicians and "
               "researchers on the Admin page.")
    with st.form("setup"):
        username = st.text_input("User name", autocomplete="username")
        display = st.text_input("Display name (shown in the audit trail)", max_chars=80)
        password = st.text_input("Password", type="password", autocomplete="new-password")
        again = st.text_input("Password again", type="password", autocomplete="new-password")
        submitted = st.form_submit_button("Create administrator", type="primary")
    if submitted:
        if password != again:
            st.error("The two passwords differ.")
            return
        try:
            account = create_first_admin(ctx, token, username.strip().lower(), password, display)
        except EngineError as error:
            st.error(plain(error))
            return
        st.session_state[state.SESSION] = start_session(ctx, account.user, "local")
        st.query_params.clear()
        st.rerun()


def _local(ctx: Context) -> User | None:
    if user := _session_user(ctx):
        return user
    token = st.query_params.get("setup", "")
    if token and setup_token_valid(ctx.store, token):
        _first_admin_form(ctx, token)
    else:
        _login_form(ctx)
    return None


def _provider(name: str) -> dict | None:
    """The [auth.<name>] client settings, or None after saying what is missing."""
    try:
        return dict(st.secrets["auth"][name])
    except (KeyError, FileNotFoundError, StreamlitSecretNotFoundError):
        st.title("Sign in to RadLens")
        st.error(md("RADLENS_AUTH=oidc needs the identity provider's client settings: an [auth] section with "
                    "[auth.{name}] in .streamlit/secrets.toml (or the file RADLENS_SECRETS names). See "
                    "docs/security.md.", name=name))
        return None


def _oidc(ctx: Context) -> User | None:
    settings = ctx.config.auth
    if (provider := _provider(settings.oidc_provider)) is None:
        return None
    had_session = bool(st.session_state.get(state.SESSION))
    if user := _session_user(ctx):
        if st.user.is_logged_in:
            return user
        st.session_state.pop(state.SESSION, None)  # signed out at the provider or the cookie went
    elif had_session and st.user.is_logged_in:
        st.logout()  # our session ended (idle, too old, revoked): the provider's 30-day cookie goes too
    if st.user.is_logged_in:
        try:
            issuer = provider.get("server_metadata_url", "").removesuffix("/.well-known/openid-configuration")
            user = oidc_user(st.user.to_dict(), settings, provider["client_id"], issuer)
        except SessionExpired:
            st.logout()  # signed in at the provider longer ago than a session may last: sign in afresh
        except EngineError as error:
            st.title("Sign in to RadLens")
            st.error(plain(error), icon=":material/lock:")
            st.button("Sign out of the identity provider", on_click=st.logout)
            return None
        st.session_state[state.SESSION] = start_session(ctx, user, "oidc")
        return user
    st.title("Sign in to RadLens")
    if note := st.session_state.pop(state.SIGN_IN_NOTE, None):
        st.info(plain(note), icon=":material/info:")
    st.button("Sign in with your organisation's account", type="primary", icon=":material/login:",
              on_click=st.login, args=(settings.oidc_provider,))
    return None


def _none(ctx: Context) -> User | None:
    address = st.get_option("server.address") or ""
    if not is_loopback(address):
        st.error(md("RADLENS_AUTH=none needs the server to listen on 127.0.0.1 only (it listens on {address}): "
                    "start it with `make run`, or use local accounts.", address=address or "every address"))
        return None
    return UNAUTHENTICATED


GATES: dict[str, Callable[[Context], User | None]] = {"local": _local, "oidc": _oidc, "none": _none}


def signed_in_user() -> User | None:
    """The signed-in user; None after rendering the sign-in form (the caller then stops)."""
    ctx = resources.base_context()
    return GATES[ctx.config.auth.mode](ctx)


def sign_out() -> None:
    ctx = resources.base_context()
    if token := st.session_state.pop(state.SESSION, None):
        end_session(ctx, token)
    st.session_state[state.SIGN_IN_NOTE] = "You signed out."
    for key in list(st.session_state):
        if key not in (state.SIGN_IN_NOTE,):
            del st.session_state[key]
    if ctx.config.auth.mode == "oidc" and st.user.is_logged_in:
        st.logout()


def account_panel(user: User) -> None:
    """Sidebar: who is signed in, sign out, change password (local accounts)."""
    ctx = resources.base_context()
    st.caption(md("Signed in as **{name}** ({role})", name=user.name, role=user.role))
    if ctx.config.auth.mode == "none":
        st.caption("Not signed in: RADLENS_AUTH=none on this computer only. Actions are recorded as "
                   "unauthenticated (local).")
        return
    st.button("Sign out", icon=":material/logout:", on_click=sign_out, key="auth.sign_out")
    if user.id.startswith("local:"):
        with st.popover("Change password"):
            with st.form("change_password", clear_on_submit=True):
                old = st.text_input("Current password", type="password", autocomplete="current-password")
                new = st.text_input("New password", type="password", autocomplete="new-password")
                if st.form_submit_button("Change password"):
                    try:
                        change_password(ctx.as_user(user), user.id.removeprefix("local:"), old, new,
                                        keep_session=st.session_state.get(state.SESSION, ""))
                        st.success("Password changed; your other sessions were signed out.")
                    except EngineError as error:
                        st.error(plain(error))
