"""Links between pages that exist only for users who may open the target (a page outside the user's role is not
in the navigation, and Streamlit refuses links to it)."""

from __future__ import annotations

import streamlit as st

from dashboard import state
from dashboard.registry import PAGES, page_path

__all__ = ["allowed", "page_link", "switch_page"]


def allowed(url_path: str) -> bool:
    user = st.session_state.get(state.USER)
    spec = next(p for p in PAGES if p.url_path == url_path)
    return bool(user) and user.may(spec.permission)


def page_link(url_path: str, **kwargs) -> None:
    if allowed(url_path):
        st.page_link(page_path(url_path), **kwargs)


def switch_page(url_path: str) -> None:
    if allowed(url_path):
        st.switch_page(page_path(url_path))
