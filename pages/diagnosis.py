"""Diagnosis: calibrated probability, uncertainty, OOD gate and Grad-CAM for a case; the clinician's review."""

import streamlit as st

from dashboard import model_widgets, resources, state, widgets
from dashboard.text import md
from engine.cases.diagnosis import (
    add_review,
    case_history,
    diagnose_cases,
    diagnose_image,
    unreviewed_cases,
)

ctx = resources.context()
st.title("Diagnosis")
case_id = widgets.case_picker(ctx.store)

with widgets.engine_errors():
    classifier = resources.active_classifier(ctx)
    image = widgets.image_picker(widgets.viewed_case(ctx, case_id))
    tta = 8 if st.toggle("Test-time augmentation uncertainty (9 forwards instead of 1)", key="diagnosis.tta") else 0
    result = widgets.once_per_opening(state.DIAGNOSIS, (image["id"], classifier.loaded.sha256, tta),
                                      lambda: diagnose_image(ctx, classifier, image, tta))

    left, right = st.columns([3, 2])
    with left:
        show, opacity, colormap = model_widgets.overlay_controls()
        model_widgets.cam_view(result.gray, result.prediction, show, opacity, colormap)
    with right:
        card = classifier.loaded.card
        model_widgets.prediction_panel(result.prediction, card.name, card.version, card.positive_label)
        submitted = ctx.user.may("case.review") and \
            model_widgets.review_form(classifier.loaded.labels, key=f"review.{case_id}")
        if not ctx.user.may("case.review"):
            st.caption("Reviews are recorded by clinicians: your role can read results but not review them.")
        if submitted:
            add_review(ctx, case_id, *submitted, prediction_id=result.prediction_id)
            st.success("Review saved.", icon=":material/check:")

    st.subheader("Case history")
    model_widgets.history(case_history(ctx.store, case_id))
    pending = unreviewed_cases(ctx.store)
    if st.button(f"Run on all {len(pending)} unreviewed cases", icon=":material/playlist_play:", disabled=not pending):
        bar = st.progress(0.0)
        done, failed = diagnose_cases(ctx, classifier, pending,
                                      lambda n, total, what: bar.progress(n / total, text=f"{n} of {total}: {what}"))
        st.success(md("Classified {done} case(s); {failed} failed.", done=len(done), failed=len(failed)))
        for case, reason in failed.items():
            st.error(md("Case #{case}: {reason}", case=case, reason=reason))
