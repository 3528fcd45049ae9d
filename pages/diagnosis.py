"""Diagnosis: calibrated probability, uncertainty, OOD gate and Grad-CAM for a case; the clinician's review."""

import streamlit as st

from dashboard import model_widgets, resources, results_widgets, state, widgets
from dashboard.text import md
from engine.cases import case_history, unreviewed_cases
from engine.tasks import diagnose_cases, diagnose_image, scope_of

ctx = resources.context()
st.title("Diagnosis")

with widgets.engine_errors():
    classifier = resources.active_classifier(ctx)
    case_id = widgets.case_picker(ctx.store, scope_of(classifier))
    image = widgets.image_picker(widgets.viewed_case(ctx, case_id))
    tta = 8 if st.toggle("Test-time augmentation uncertainty (9 forwards instead of 1)", key="diagnosis.tta") else 0
    result = widgets.once_per_opening(state.DIAGNOSIS, (image["id"], classifier.loaded.sha256, tta),
                                      lambda: diagnose_image(ctx, classifier, image, tta))

    left, right = st.columns([3, 2])
    with right:
        prediction = model_widgets.result_panel(ctx, classifier, result)
        if result.prediction is not None:
            results_widgets.case_results_out(ctx, case_id, image)
    with left:
        if prediction is not None:
            show, opacity, colormap = model_widgets.overlay_controls()
            model_widgets.cam_view(result.gray, prediction, show, opacity, colormap)
        else:
            model_widgets.plain_view(result.gray)

    st.subheader("Case history")
    model_widgets.history(case_history(ctx.store, case_id))
    pending = unreviewed_cases(ctx.store)
    if st.button(f"Run on all {len(pending)} unreviewed cases", icon=":material/playlist_play:", disabled=not pending):
        bar = st.progress(0.0)
        done, failed = diagnose_cases(ctx, classifier, pending,
                                      lambda n, total, what: bar.progress(n / total, text=f"{n} of {total}: {what}"))
        abstained = sum(not r.verdict.analysed for r in done)
        st.success(md("Classified {done} case(s); {abstained} not analysed (outside the model's scope); "
                      "{failed} failed.", done=len(done) - abstained, abstained=abstained, failed=len(failed)))
        for case, reason in failed.items():
            st.error(md("Case #{case}: {reason}", case=case, reason=reason))
