"""Explainability: explanation methods side by side for a case with their faithfulness against a random
map, and a dataset-level audit of where the model looks."""

import streamlit as st

from dashboard import explain_widgets as ew
from dashboard import resources, widgets
from dashboard.text import md, plain
from engine.cases import explain_image, ingest_paths, start_audit
from engine.stored import gray_image

ctx = resources.context()


def case_view(explainer) -> None:
    if (image := widgets.scoped_image(ctx, explainer.classifier.loaded.card)) is None:
        return
    gray = gray_image(ctx.config, image)
    methods, target, layer = ew.method_controls(explainer, explainer.predicted(explainer.input(gray)))
    opacity, colormap, top = ew.display_controls()
    if len(methods) < 2:
        st.info("Pick at least two methods to compare them.", icon=":material/compare:")
        return
    bar = st.progress(0.0, text="Explaining...")
    heatmaps = explain_image(ctx, explainer, image, gray, methods, target, layer,
                             lambda done, what: bar.progress(done, text=what))
    bar.empty()
    ew.comparison(gray, heatmaps, methods, opacity, colormap, top, f"case{image['case_id']}-image{image['id']}",
                  widgets.exporter(ctx, image["case_id"]))


def audit_view(model_name: str) -> None:
    ew.audit_intro(model_name)
    request = ew.audit_form()
    if request:
        audit_id = start_audit(ctx, model_name, **request)
        st.success(md("Audit {id} started in the background.", id=audit_id), icon=":material/hourglass_top:")
    ew.audit_runs(ctx.store)
    row = ew.audit_picker(ctx.store)
    if row and (path := ew.audit_view(ctx.config, row, resources.explainer(row["model_name"]))):
        result = next(iter(ingest_paths([path], ctx)))  # a duplicate returns the existing case
        if not result.ok:
            st.error(plain(result.error))
            return
        widgets.open_case(result.case_id, "explainability")


st.title("Explainability")
# Only the open tab runs (its state is in the URL, ?tab=...): the audit never waits on a case's maps.
case_tab, audit_tab = st.tabs(["This case", "Dataset audit"], key="tab", on_change="rerun", bind="query-params")
with widgets.engine_errors():
    explainer = resources.explainer(resources.active_classifier(ctx).loaded.name)
    if case_tab.open:
        with case_tab:
            case_view(explainer)
    if audit_tab.open:
        with audit_tab:
            audit_view(explainer.classifier.loaded.name)
