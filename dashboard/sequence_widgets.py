"""Renderers for sequence cases (volumes, cine loops): the case picker, three orthogonal planes through the
chosen slice, cine playback, the sequence model's result and each slice's contribution."""

from __future__ import annotations

import cv2
import numpy as np
import plotly.graph_objects as go
import streamlit as st

from dashboard import links, state, widgets
from dashboard.model_widgets import percent
from dashboard.text import md
from engine.cases import case_id_of
from engine.inference import SequencePrediction
from engine.io import Volume
from engine.models import Scope
from engine.tasks import sequence_cases

__all__ = ["case_picker", "position", "focus", "planes", "cine", "result", "contribution_chart", "abstained"]

PLANE_PX = 256  # each plane is drawn this many pixels wide
CINE_FRAMES, CINE_PX = 96, 192  # at most this many frames, this wide, go to the browser for playback


def case_picker(store, scope: Scope) -> int:
    """A case with several frames (the newest the model applies to, unless one was opened), or a stop."""
    cases = sequence_cases(store)
    if "case" in st.query_params:
        st.session_state[state.CURRENT_CASE] = case_id_of(st.query_params["case"]) or 0
    if not cases:
        st.info("No volume or cine loop yet. Upload a multi-frame DICOM, a NIfTI or a .npy volume.")
        links.page_link("upload", label="Go to Upload", icon=":material/upload_file:")
        st.stop()
    current = st.session_state.get(state.CURRENT_CASE)
    if current not in cases:
        with store.read() as db:
            headers = {r[0]: r[1:] for r in db.execute("SELECT id, modality, body_part FROM cases")}
        current = next((c for c in cases if scope.outside(*headers[c]) is None), next(iter(cases)))
    return st.selectbox("Case", list(cases), index=list(cases).index(current), format_func=cases.get,
                        key="sequence.case")


def position(volume: Volume, image_id: int, focus: int | None) -> tuple[int, int, int]:
    """(slice, row, col) the planes cross at, starting at slice `focus` (else the middle) and the centre; the
    slice slider is the one the contribution plot follows."""
    d, h, w = volume.voxels.shape
    k = st.slider("Slice", 1, d, (d // 2 if focus is None else focus) + 1, key=f"sequence.slice.{image_id}",
                  help="Also marked on the contribution plot and in the other two planes")
    c1, c2 = st.columns(2)
    j = c1.slider("Row (coronal plane)", 1, h, h // 2 + 1, key=f"sequence.row.{image_id}")
    i = c2.slider("Column (sagittal plane)", 1, w, w // 2 + 1, key=f"sequence.col.{image_id}")
    return k - 1, j - 1, i - 1


def focus(prediction: SequencePrediction | None) -> int | None:
    """The slice the result drew most on (where the view opens), when there is a result with contributions."""
    if prediction is None or prediction.contribution is None:
        return None
    return int(np.argmax(prediction.contribution))


def _scaled(plane: np.ndarray, row_mm: float, col_mm: float, mark_row: int | None = None,
            mark_col: int | None = None) -> np.ndarray:
    """A plane resized to PLANE_PX wide with its physical aspect (nearest neighbour: voxels stay voxels), in
    colour, with the other planes' positions drawn as thin lines (a row of this plane, a column)."""
    rows, cols = plane.shape
    height = max(1, round(PLANE_PX * rows * row_mm / (cols * col_mm)))
    image = cv2.cvtColor(cv2.resize(plane, (PLANE_PX, height), interpolation=cv2.INTER_NEAREST), cv2.COLOR_GRAY2RGB)
    if mark_row is not None:
        image[min(height - 1, int((mark_row + 0.5) * height / rows))] = _MARK
    if mark_col is not None:
        image[:, min(PLANE_PX - 1, int((mark_col + 0.5) * PLANE_PX / cols))] = _MARK
    return image


_MARK = (214, 39, 40)  # the chosen slice's colour on the contribution plot


def planes(volume: Volume, at: tuple[int, int, int]) -> None:
    k, j, i = at
    dz, dy, dx = volume.spacing_mm or (1.0, 1.0, 1.0)
    v = volume.voxels
    views = (("Slice (as acquired)", _scaled(v[k], dy, dx)),
             ("Coronal (rows); red: the slice", _scaled(v[:, j, :], dz, dx, mark_row=k)),
             ("Sagittal (columns); red: the slice", _scaled(v[:, :, i], dz, dy, mark_row=k)))
    for column, (title, image) in zip(st.columns(3), views):
        column.image(image, caption=title, clamp=True)
    spacing = ("{:.3g} x {:.3g} x {:.3g} mm voxels".format(*volume.spacing_mm) if volume.spacing_mm
               else "voxel size not stated: drawn as cubes")
    st.caption(md("{n} slices of {rows} x {cols}; {spacing}. Slice {k}, row {j}, column {i}.", n=v.shape[0],
                  rows=v.shape[1], cols=v.shape[2], spacing=spacing, k=k + 1, j=j + 1, i=i + 1))


def cine(volume: Volume) -> None:
    """Client-side playback (play / pause / scrub) of the slices in order; long or large sequences are
    subsampled so the page stays light."""
    picks = np.unique(np.linspace(0, volume.n_slices - 1, min(volume.n_slices, CINE_FRAMES)).round().astype(int))
    rows, cols = volume.voxels.shape[1:]
    size = (CINE_PX, max(1, round(CINE_PX * rows / cols)))
    frames = [cv2.resize(volume.voxels[k], size, interpolation=cv2.INTER_NEAREST) for k in picks]
    figure = go.Figure(go.Heatmap(z=frames[0], colorscale="gray", showscale=False, zmin=0, zmax=255),
                       frames=[go.Frame(data=[go.Heatmap(z=f)], name=str(k + 1)) for k, f in zip(picks, frames)])
    play = dict(frame=dict(duration=80, redraw=True), fromcurrent=True, transition=dict(duration=0))
    figure.update_layout(
        height=CINE_PX + 120, margin=dict(l=0, r=0, t=0, b=0),
        yaxis=dict(autorange="reversed", scaleanchor="x", visible=False), xaxis=dict(visible=False),
        updatemenus=[dict(type="buttons", direction="left", x=0, y=-0.05, buttons=[
            dict(label="Play", method="animate", args=[None, play]),
            dict(label="Pause", method="animate", args=[[None], dict(mode="immediate", frame=dict(duration=0))])])],
        sliders=[dict(currentvalue=dict(prefix="Slice "), x=0.25, len=0.75, y=-0.02, steps=[
            dict(label=str(k + 1), method="animate", args=[[str(k + 1)], dict(mode="immediate")]) for k in picks])])
    st.plotly_chart(figure, config={"displayModeBar": False}, width="stretch")


def result(prediction: SequencePrediction, positive: str, name: str, version: str) -> None:
    if prediction.out_of_distribution:
        st.warning(md("This volume does not look like the training volumes (OOD score {s:.1f} > {t:.1f}).",
                      s=prediction.ood_score, t=prediction.ood_threshold), icon=":material/warning:")
    st.metric(md("Calibrated probability of {positive}", positive=positive), percent(prediction.probability))
    side = ":orange-badge[Above" if prediction.label == positive else ":green-badge[Below"
    st.markdown(md(side + " the operating threshold {t:.1%}: **{label}**]", t=prediction.threshold,
                   label=prediction.label))
    st.markdown(md("**OOD score:** {s:.1f} (threshold {t:.1f})", s=prediction.ood_score, t=prediction.ood_threshold))
    st.caption(md("Model **{name}** v{version} - {ms:.0f} ms (preprocess + forward + contribution)", name=name,
                  version=version, ms=prediction.latency_ms))
    links.page_link("models", label="Model card", icon=":material/description:", query_params={"model": name})


def contribution_chart(prediction: SequencePrediction, current: int) -> None:
    """Each slice's share of the pooled sequence (attention weights), the chosen slice highlighted."""
    weights = prediction.contribution
    if weights is None:
        st.caption("This model pools its slices without weighing them, so it has no per-slice contribution.")
        return
    colours = ["rgb{}".format(_MARK) if k == current else "#1f77b4" for k in range(len(weights))]
    figure = go.Figure(go.Bar(x=np.arange(1, len(weights) + 1), y=weights, marker_color=colours,
                              hovertemplate="slice %{x}: %{y:.1%}<extra></extra>"))
    figure.add_hline(y=1 / len(weights), line_dash="dot", annotation_text="uniform", annotation_position="top left")
    figure.update_layout(title="Contribution of each slice", height=260, margin=dict(l=0, r=0, t=40, b=0),
                         xaxis_title="slice", yaxis=dict(title="attention weight", tickformat=".0%"))
    st.plotly_chart(figure, config={"displayModeBar": False}, width="stretch")
    st.caption(md("Attention weights: how much each slice contributes to the pooled sequence the model classifies "
                  "(they sum to 100 %). Slice {k} in red. They show where the model drew its evidence from, not "
                  "a finding's location.", k=current + 1))


def abstained(done, may_reveal: bool) -> bool:
    """The abstention; whether a role that may see raw output asked for it."""
    return widgets.abstention(done.verdict, may_reveal, f"sequence.raw.{done.prediction_id}")
