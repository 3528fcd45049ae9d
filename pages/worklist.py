"""Worklist: every case, filtered, searched, sorted and paged; a row opens the viewer."""

import streamlit as st

from dashboard import resources, results_widgets, widgets
from dashboard.text import md
from engine.cases import COLUMNS, SORTS, STATUSES, WorklistQuery, facet_values, list_worklist

ctx = resources.context()
st.title("Worklist")

c1, c2, c3, c4 = st.columns([3, 2, 2, 2])
text = c1.text_input("Search", placeholder="description, body part, modality or case id", key="worklist.search",
                     max_chars=200)
modalities = c2.multiselect("Modality", facet_values(ctx.store, "modality"))
body_parts = c3.multiselect("Body part", facet_values(ctx.store, "body_part"))
status = c4.selectbox("Status", list(STATUSES))
c5, c6, c7 = st.columns([3, 2, 2])
received = c5.date_input("Received between", value=(), format="YYYY-MM-DD")
sort = c6.selectbox("Sort", list(SORTS))
page = c7.number_input("Page", min_value=1, value=1, step=1)

dates = [d.isoformat() for d in received] if isinstance(received, (list, tuple)) else [received.isoformat()]
query = WorklistQuery(tuple(modalities), tuple(body_parts), dates[0] if dates else None,
                      dates[-1] if dates else None, status, text, sort, int(page))
result = list_worklist(ctx, query)

st.caption(md("{total:,} case(s) - page {page} of {pages}. Select a row to open it.", total=result.total,
              page=result.page, pages=result.pages))
widgets.worklist_table(result.rows, COLUMNS)
results_widgets.filter_exports(ctx, query, result.total)
