"""Renderers for the Segmentation page: overlay controls and view, measurements, agreement with the
ground truth, exports, the region explanation and the history."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import streamlit as st

from dashboard.text import md
from dashboard.widgets import Exporter, image_view
from engine.draw import COLORMAPS, COLOURS, draw_segmentation, overlay
from engine.inference import Segmenter
from engine.io import Rendered
from engine.tasks import CaseSegmentation, mask_png

__all__ = ["view_controls", "segmentation_view", "measurements", "agreement_panel", "exports", "region_explanation",
           "uncertainty_view", "history"]

# Methods offered for "explain this region": fast gradient methods plus Eigen-CAM (gradient-free).
_VIEW_WIDTH = 660  # px: the left column of a wide layout
REGION_METHODS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "hirescam": "HiRes-CAM", "layercam": "Layer-CAM",
                  "eigencam": "Eigen-CAM"}


def view_controls(has_truth: bool) -> dict:
    c1, c2, c3, c4, c5 = st.columns([2, 2, 2, 2, 2], vertical_alignment="bottom")
    style = c1.segmented_control("Mask", ["contour", "filled"], default="contour", key="seg.style") or "contour"
    opacity = c2.slider("Opacity", 0.0, 1.0, 0.35, 0.05, disabled=style != "filled", key="seg.opacity")
    colour = c3.selectbox("Colour", list(COLOURS), key="seg.colour")
    ellipse = c4.toggle("Fitted ellipse", value=True, key="seg.ellipse",
                        help="The ellipse the circumference is measured on")
    truth = c5.toggle("Ground truth", value=has_truth, disabled=not has_truth, key="seg.truth",
                      help="The dataset's own mask, outlined in magenta (dataset cases only)")
    return {"style": style, "opacity": opacity, "colour": colour, "ellipse": ellipse, "truth": truth and has_truth}


def segmentation_view(done: CaseSegmentation, options: dict) -> None:
    m = done.raw.measurement
    image = draw_segmentation(done.gray, done.raw.mask, options["style"], options["opacity"], options["colour"],
                              m.ellipse if m and options["ellipse"] else None,
                              done.truth if options["truth"] else None)
    # Height from the image's aspect at the column's width, so no black band is left under the image.
    image_view(Rendered(image, (), None), height=min(640, round(_VIEW_WIDTH * image.shape[0] / image.shape[1])))
    legend = [f"model mask ({options['colour']})"] + ["fitted ellipse (white)"] * bool(m and options["ellipse"])
    legend += ["ground truth (magenta)"] * bool(options["truth"])
    st.caption("Shown: " + ", ".join(legend) + ". Scroll to zoom, drag to pan.")


def measurements(done: CaseSegmentation, model_name: str, model_version: str) -> None:
    m = done.raw.measurement
    if m is None:
        st.warning("No head found: the mask is empty, so nothing can be measured.", icon=":material/warning:")
        return
    c1, c2 = st.columns(2)
    c1.metric("Head circumference", f"{m.circumference:.1f} {m.unit}")
    c2.metric("Head area", f"{m.area / 100:.2f} cm²" if m.unit == "mm" else f"{m.area:,.0f} px²")
    if m.unit == "px":
        st.warning("Pixel size unknown: measurements are in pixels. Enter the pixel size below to get mm.",
                   icon=":material/straighten:")
    e = m.ellipse
    st.markdown(md("Pixel size: **{spacing}**  \nEllipse axes {a:.0f} x {b:.0f} px at {angle:.0f}°; box {box}  \n"
                   "Model **{name}** v{version} · {ms:.0f} ms", spacing=done.spacing.describe(), a=2 * e.a,
                   b=2 * e.b, angle=e.angle_deg, box=m.bbox, name=model_name, version=model_version,
                   ms=done.raw.latency_ms))


def agreement_panel(done: CaseSegmentation) -> None:
    if not done.scores:
        return
    s, match, m = done.scores, done.match, done.raw.measurement
    unit = "mm" if done.spacing.known else "px"
    st.markdown(md("**Against the ground truth** ({dataset} {split} split, {image})", dataset=match.dataset,
                   split=match.split, image=match.image))
    c1, c2, c3 = st.columns(3)
    c1.metric("Dice", f"{s['dice']:.3f}")
    c2.metric("IoU", f"{s['iou']:.3f}")
    c3.metric("HD95", f"{s['hd95']:.1f} {unit}", help="95th-percentile distance between the two outlines")
    if m and m.unit == "mm":
        st.caption(md("Dataset's circumference {hc:.1f} mm; error {error:+.1f} mm.", hc=match.reference_hc_mm,
                      error=m.circumference - match.reference_hc_mm))


def exports(image: dict, done: CaseSegmentation, seg: Callable[[], bytes], export: Exporter) -> None:
    """The mask as PNG, and `seg()` (built and logged only when clicked) as a DICOM SEG download."""
    stem = f"case{done.case_id}-image{done.image_id}"
    c1, c2 = st.columns(2)
    c1.download_button("Mask PNG", export("mask.png", lambda: mask_png(done.raw.mask)), f"{stem}-mask.png",
                       "image/png", on_click="ignore", icon=":material/download:")
    is_dicom = image["source_format"] == "dicom" and done.raw.measurement is not None
    c2.download_button("DICOM SEG", seg if is_dicom else b"", f"{stem}-seg.dcm", "application/dicom",
                       on_click="ignore", icon=":material/download:", disabled=not is_dicom,
                       help="A DICOM Segmentation referencing this image (opens in OHIF or a PACS)" if is_dicom
                       else "Needs a DICOM source image with a mask")


def region_explanation(segmenter: Segmenter, gray) -> None:
    """A CAM of the model's evidence for the whole predicted mask (grad-cam's SemanticSegmentationTarget)."""
    c1, c2, c3 = st.columns(3)
    method = c1.selectbox("Method", list(REGION_METHODS), format_func=REGION_METHODS.get, key="seg.cam.method")
    colormap = c2.selectbox("Colormap", list(COLORMAPS), key="seg.cam.colormap")
    opacity = c3.slider("Opacity", 0.0, 1.0, 0.5, 0.05, key="seg.cam.opacity")
    cam = segmenter.explain(gray, method)
    image_view(Rendered(overlay(gray, cam, opacity, colormap), (), None), height=420)
    st.caption(md("{method} for the predicted head region: warm colours mark the features that raised the "
                  "model's head score inside the mask most.", method=REGION_METHODS[method]))


def uncertainty_view(segmenter: Segmenter, gray) -> None:
    """Where the model's answers on the image and on its mirror image differ (one more forward)."""
    d = segmenter.disagreement(gray)
    image_view(Rendered(overlay(gray, d / max(float(d.max()), 1e-6), 0.85, "inferno"), (), None), height=420)
    share = float((d > 0.25).mean())
    st.caption(md("\\|p(image) − p(mirror image)\\| per pixel, colour scaled to the largest difference, **{top:.2f}** "
                  "(1 would be opposite answers); {share:.1%} of pixels differ by more than 0.25. A thin band along "
                  "the edge is normal; wide or patchy bright areas mark where the outline is least certain.",
                  top=float(d.max()), share=share))


_HISTORY = {"id": "#", "created_at": "When (UTC)", "model_name": "Model", "model_version": "Version",
            "weights": "Weights", "circumference": "HC", "area": "Area", "unit": "Unit",
            "spacing_source": "Pixel size from",
            "dice": "Dice", "hd95": "HD95", "latency_ms": "ms", "actor": "By"}


def history(rows: list[dict]) -> None:
    if rows:
        frame = pd.DataFrame(rows).rename(columns=_HISTORY)
        frame["When (UTC)"] = frame["When (UTC)"].str.slice(0, 19).str.replace("T", " ")
        st.dataframe(frame, hide_index=True, width="stretch")
    else:
        st.caption("No segmentations of this case yet.")
