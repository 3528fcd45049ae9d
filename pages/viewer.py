"""Viewer: the study image with window/level, zoom/pan, frames, display steps and de-identified tags."""

import streamlit as st

from dashboard import resources, widgets
from dashboard.registry import page_path
from engine.cases.images import get_case
from engine.io import render

ctx = resources.context()
st.title("Study viewer")
case_id = widgets.case_picker(ctx.store)

with widgets.engine_errors():
    image = widgets.image_picker(get_case(ctx.store, case_id))
    study = resources.study(image["path"], image["id"])
    left, right = st.columns([3, 1])
    with right:
        frame = st.slider("Frame", 1, study.n_frames, 1) - 1 if study.n_frames > 1 else 0
        window = widgets.window_controls(study, scope=image["id"])
    rendered = render(study, frame, window)
    with left:
        widgets.image_view(rendered)
        widgets.step_badges(rendered.steps)
    with right:
        widgets.image_facts(image, study, study.spacing)
        st.page_link(page_path("diagnosis"), label="Diagnose this case", icon=":material/diagnosis:",
                     query_params={"case": case_id})
        st.page_link(page_path("segmentation"), label="Segment this case", icon=":material/donut_large:",
                     query_params={"case": case_id})
    st.subheader("De-identified header")
    widgets.tag_table(study)
