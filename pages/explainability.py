"""Explainability: explanation methods side by side for a case with their faithfulness against a random
map, and a dataset-level audit of where the model looks."""

import streamlit as st

from dashboard import explain_widgets as ew
from dashboard import resources, widgets
from engine.audit import start_audit
from engine.cases import get_case
from engine.diagnosis import gray_image
from engine.explainability import explain_image
from engine.models.catalog import active_model

store, config = resources.store(), resources.config()


def case_view(explainer) -> None:
    case_id = widgets.case_picker(store)
    image = widgets.image_picker(get_case(store, case_id))
    gray = gray_image(config, image)
    methods, target, layer = ew.method_controls(explainer, explainer.predicted(explainer.input(gray)))
    opacity, colormap, top = ew.display_controls()
    if len(methods) < 2:
        st.info("Pick at least two methods to compare them.", icon=":material/compare:")
        return
    bar = st.progress(0.0, text="Explaining...")
    heatmaps = explain_image(store, explainer, image, gray, methods, target, layer, config.user,
                             lambda done, what: bar.progress(done, text=what))
    bar.empty()
    ew.comparison(gray, heatmaps, methods, opacity, colormap, top, f"case{case_id}-image{image['id']}")


def audit_view(model_name: str) -> None:
    ew.audit_intro(model_name)
    request = ew.audit_form()
    if request:
        audit_id = start_audit(config, store, model_name, **request)
        st.success(f"Audit {audit_id} started in the background.", icon=":material/hourglass_top:")
    ew.audit_runs(store)
    row = ew.audit_picker(store)
    if row:
        ew.audit_view(config, store, row, resources.explainer(row["model_name"]))


st.title("Explainability")
# Only the open tab runs (its state is in the URL, ?tab=...): the audit never waits on a case's maps.
case_tab, audit_tab = st.tabs(["This case", "Dataset audit"], key="tab", on_change="rerun", bind="query-params")
with widgets.engine_errors():
    installed = active_model(config, store, "classification")
    if case_tab.open:
        with case_tab:
            case_view(resources.explainer(installed.name))
    if audit_tab.open:
        with audit_tab:
            audit_view(installed.name)
