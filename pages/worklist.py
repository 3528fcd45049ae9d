"""Worklist: every case, filtered, searched, sorted and paged; a row opens the viewer."""

import pandas as pd
import streamlit as st

from dashboard import resources, widgets
from engine.worklist import SORTS, STATUSES, WorklistQuery, facet_values, query_worklist

store = resources.store()
st.title("Worklist")

c1, c2, c3, c4 = st.columns([3, 2, 2, 2])
text = c1.text_input("Search", placeholder="description, body part, modality or case id", key="worklist.search")
modalities = c2.multiselect("Modality", facet_values(store, "modality"))
body_parts = c3.multiselect("Body part", facet_values(store, "body_part"))
status = c4.selectbox("Status", list(STATUSES))
c5, c6, c7 = st.columns([3, 2, 2])
received = c5.date_input("Received between", value=(), format="YYYY-MM-DD")
sort = c6.selectbox("Sort", list(SORTS))
page = c7.number_input("Page", min_value=1, value=1, step=1)

dates = [d.isoformat() for d in received] if isinstance(received, (list, tuple)) else [received.isoformat()]
result = query_worklist(store, WorklistQuery(
    tuple(modalities), tuple(body_parts), dates[0] if dates else None, dates[-1] if dates else None,
    status, text, sort, int(page)))

st.caption(f"{result.total:,} case(s) - page {result.page} of {result.pages}. Select a row to open it.")
frame = pd.DataFrame(result.rows, columns=[
    "id", "modality", "body_part", "study_description", "latest_label", "latest_probability", "latest_uncertainty",
    "latest_measurement", "latest_review", "view_position", "study_date", "received_at", "image_count", "burned_in_risk", "source"])
frame.columns = ["Case", "Modality", "Body part", "Description", "Model output", "Probability", "Uncertainty",
                 "Measurement",
                 "Review", "View", "Study date (shifted)", "Received (UTC)", "Images", "Burned-in text risk", "Source"]
frame[["Model output", "Measurement", "Review"]] = frame[["Model output", "Measurement", "Review"]].fillna("")
frame["Uncertainty"] = frame["Uncertainty"].map(lambda u: "" if pd.isna(u) else f"{u:.2f}")
frame["Burned-in text risk"] = frame["Burned-in text risk"].map({1: "possible", 0: ""})
frame["Received (UTC)"] = frame["Received (UTC)"].str.slice(0, 19).str.replace("T", " ")
widgets.case_table(frame, "worklist", {"Probability": st.column_config.ProgressColumn(
    "Probability", help="Latest calibrated probability of the positive label", format="percent", min_value=0.0,
    max_value=1.0), "Uncertainty": st.column_config.TextColumn(
    "Uncertainty", help="Of the latest prediction (entropy in bits, or the spread over test-time augmentation); "
    "sort by 'Most uncertain first' to review those cases first")})
