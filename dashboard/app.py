"""RadLens router: page config, sidebar, navigation. Run: python -m streamlit run dashboard/app.py"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # so `engine` and `dashboard` import however streamlit is launched
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboard import resources, state  # noqa: E402
from dashboard.registry import PAGES  # noqa: E402
from dashboard.widgets import DISCLAIMER  # noqa: E402

st.set_page_config(page_title="RadLens", page_icon=":material/radiology:", layout="wide")

with st.sidebar:
    st.markdown("### RadLens")
    st.session_state.setdefault(state.USER, resources.context().actor)
    st.text_input("Your name (recorded in the audit log)", key=state.USER)
    st.caption(DISCLAIMER)

navigation = st.navigation(
    [st.Page(str(p.path), title=p.title, icon=p.icon, url_path=p.url_path) for p in PAGES]
)
st.caption(":material/info: **" + DISCLAIMER + "**")
navigation.run()
