"""Segmentation: the head mask as contour or fill, the fitted ellipse, circumference and area in mm,
agreement with the ground truth for dataset cases, exports, and the region's explanation."""

import streamlit as st

from dashboard import model_widgets, resources, results_widgets, seg_widgets, state, widgets
from engine.models import Scope
from engine.tasks import export_seg, raw_segmentation, segment_case_image, segmentation_history

ctx = resources.context()
st.title("Segmentation")

with widgets.engine_errors():
    segmenter = resources.active_segmenter(ctx)
    case_id = widgets.case_picker(ctx.store, Scope.from_card(segmenter.loaded.card))
    image = widgets.image_picker(widgets.viewed_case(ctx, case_id))
    pixel_mm = st.session_state.get(f"seg.pixel.{image['id']}") or None
    done = widgets.once_per_opening(state.SEGMENTATION, (image["id"], segmenter.loaded.sha256, pixel_mm),
                                    lambda: segment_case_image(ctx, segmenter, image, pixel_mm))
    if done.result is None:
        left, right = st.columns([3, 2])
        with right:
            reveal = widgets.abstention(done.verdict, ctx.user.may("case.raw_output"),
                                        f"seg.raw.{done.segmentation_id}")
        if not reveal:
            with left:
                model_widgets.plain_view(done.gray)
            st.stop()
        widgets.once_per_opening(state.RAW_OUTPUT, ("segmentation", done.segmentation_id),
                                 lambda: raw_segmentation(ctx, done))
        widgets.raw_output_banner()

    options = seg_widgets.view_controls(done.truth is not None)
    left, right = st.columns([3, 2])
    with left:
        seg_widgets.segmentation_view(done, options)
    with right:
        seg_widgets.measurements(done, segmenter.loaded.name, segmenter.loaded.version)
        seg_widgets.agreement_panel(done)
        st.number_input("Pixel size (mm), overrides the file's", min_value=0.0, max_value=10.0, step=0.01,
                        format="%.4f", key=f"seg.pixel.{image['id']}", help="0 = use the file's own pixel size")
        if done.result is not None:
            if ctx.user.may("case.export"):
                seg_widgets.exports(image, done, lambda: export_seg(ctx, image, done, segmenter),
                                    widgets.exporter(ctx, case_id))
            results_widgets.case_results_out(ctx, case_id, image)

    with st.expander("Uncertainty (image vs mirror image)", icon=":material/contrast:"):
        if st.toggle("Compute the uncertainty map", key="seg.uncertainty"):
            seg_widgets.uncertainty_view(segmenter, done.gray)
    with st.expander("Explain this region", icon=":material/blur_on:"):
        if st.toggle("Compute the explanation", key="seg.cam"):
            seg_widgets.region_explanation(segmenter, done.gray)
    st.subheader("Case history")
    seg_widgets.history(segmentation_history(ctx.store, case_id))
