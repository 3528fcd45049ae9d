"""Viewer: the study image with window/level, zoom/pan, frames, display steps and de-identified tags."""

import streamlit as st

from dashboard import resources, state, widgets
from engine.cases import get_case, recent_cases
from engine.io import render

store = resources.store()
st.title("Study viewer")

if "case" in st.query_params:
    st.session_state[state.CURRENT_CASE] = int(st.query_params["case"]) if st.query_params["case"].isdigit() else 0
recent = recent_cases(store)
if not recent:
    st.info("No cases yet. Upload a study first.")
    st.page_link("pages/upload.py", label="Go to Upload", icon=":material/upload_file:")
    st.stop()
current = st.session_state.setdefault(state.CURRENT_CASE, next(iter(recent)))
case_id = st.selectbox("Case", list(recent) if current in recent else [current, *recent], key=state.CURRENT_CASE,
                       format_func=lambda i: recent.get(i, f"#{i}"))

with widgets.engine_errors():
    case = get_case(store, case_id)
    images = case["images"]
    image = images[0] if len(images) == 1 else st.selectbox(
        "Image", images, format_func=lambda i: f"Image {i['id']}: {i['series_description'] or i['modality']}")
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
    st.subheader("De-identified header")
    widgets.tag_table(study)
