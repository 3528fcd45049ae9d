"""RadLens router: page config, the login gate, sidebar, navigation.
Run: python -m streamlit run dashboard/app.py (make run adds the safe server options)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # so `engine` and `dashboard` import however streamlit is launched
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboard import auth, state  # noqa: E402
from dashboard.registry import PAGES  # noqa: E402
from dashboard.widgets import DISCLAIMER  # noqa: E402
from engine import pacs  # noqa: E402

pacs.install_after_review_hook()  # a review sends its case's results back to the source PACS when that is on

st.set_page_config(page_title="RadLens", page_icon=":material/radiology:", layout="wide")


def _pages(specs) -> list:
    return [st.Page(str(p.path), title=p.title, icon=p.icon, url_path=p.url_path) for p in specs]


user = auth.signed_in_user()  # renders the sign-in form when there is no live session
if user is None:
    st.session_state.pop(state.USER, None)
    # every page is registered, so a page's URL is not "not found", but hidden and never run: the browser
    # drops the previous user's page list and no page script executes
    st.navigation(_pages(PAGES), position="hidden")
    st.caption(":material/info: **" + DISCLAIMER + "**")
    st.stop()  # nothing else runs: no page, no ?case=, no download
st.session_state[state.USER] = user

with st.sidebar:
    st.markdown("### RadLens")
    auth.account_panel(user)
    st.caption(DISCLAIMER)

allowed = [p for p in PAGES if user.may(p.permission)]
if not allowed:
    st.error("Your role gives access to no page; ask an administrator.")
    st.stop()
navigation = st.navigation(_pages(allowed))
st.caption(":material/info: **" + DISCLAIMER + "**")
navigation.run()
