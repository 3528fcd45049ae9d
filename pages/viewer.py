"""Viewer: the study image with window/level, zoom/pan, frames, display steps and de-identified tags."""

import streamlit as st

from dashboard import links, resources, widgets
from engine.io import render

ctx = resources.context()
st.title("Study viewer")
case_id = widgets.case_picker(ctx.store)

with widgets.engine_errors():
    image = widgets.image_picker(widgets.viewed_case(ctx, case_id))
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
        links.page_link("diagnosis", label="Diagnose this case", icon=":material/diagnosis:",
                     query_params={"case": case_id})
        links.page_link("segmentation", label="Segment this case", icon=":material/donut_large:",
                     query_params={"case": case_id})
    st.subheader("De-identified header")
    widgets.tag_table(study)
