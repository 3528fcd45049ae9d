"""Renderers for the Explainability page: method controls, the overlay grid, faithfulness against the
random baseline, deletion curves, exports, and the dataset-level audit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from dashboard import state
from dashboard.auth import refreshing
from dashboard.text import md
from dashboard.widgets import Exporter
from engine.cases import TOP_OUTSIDE, audit_heatmaps, dataset_file, get_audit, list_audits
from engine.config import Config
from engine.data import SPLITS, datasets, gray_of_file
from engine.draw import COLORMAPS, comparison_sheet, keep_top, overlay, png_bytes
from engine.inference import BASELINE, METHODS, METRICS, REMOVED, Explainer, Heatmap

__all__ = ["method_controls", "display_controls", "comparison", "overlay_grid", "faithfulness_table",
           "deletion_curves", "exports", "audit_intro", "audit_form", "audit_runs", "audit_picker", "audit_view"]

DEFAULT_METHODS = ["gradcam", "gradcam++", "eigencam"]
SLOW = ("scorecam",)  # seconds per image on a CPU: the user is told before choosing
GRID_SIDE = 720  # px per overlay in the grid


def method_controls(explainer: Explainer, predicted: str) -> tuple[list[str], str, str]:
    c1, c2, c3 = st.columns([3, 1, 1])
    methods = c1.multiselect(
        "Methods (2-6)", list(METHODS), default=DEFAULT_METHODS, max_selections=6, key=state.EXPLAIN_METHODS,
        format_func=lambda m: METHODS[m].title,
        help="Score-CAM needs one forward per channel (about 10 s per image on a CPU, then cached); "
             "Ablation-CAM and FullGrad well under a second; the rest one pass.")
    labels = explainer.labels
    target = c2.selectbox("Class explained", labels, index=labels.index(predicted),
                          help=f"Default: the model's output for this image ({predicted})")
    layer = c3.selectbox("Layer", explainer.layers, help="Default: the last stage. Earlier layers give finer, "
                         "less class-specific maps. FullGrad always uses every layer.")
    return methods, target, layer


def display_controls() -> tuple[float, str, int]:
    c1, c2, c3 = st.columns(3)
    opacity = c1.slider("Opacity", 0.0, 1.0, 0.5, 0.05)
    colormap = c2.selectbox("Colormap", list(COLORMAPS))
    top = c3.slider("Show the top % of each map", 5, 100, 100, 5,
                    help="Hide everything below each map's top k % of pixels (100 = the whole map).")
    return opacity, colormap, top


def comparison(gray, heatmaps: list[Heatmap], methods: list[str], opacity: float, colormap: str, top: int,
               stem: str, export: Exporter) -> None:
    """The chosen methods' overlays, their faithfulness next to the random baseline's, curves, exports."""
    baseline = next(h for h in heatmaps if h.method == BASELINE)
    shown = [h for h in heatmaps if h.method in methods]
    overlay_grid(gray, shown, baseline, opacity, colormap, top)
    st.subheader("Faithfulness")
    faithfulness_table(shown, baseline)
    deletion_curves(shown, baseline)
    exports(gray, shown, opacity, colormap, top, stem, export)


def _runtime(h: Heatmap) -> str:
    text = f"{h.runtime_ms / 1000:.1f} s" if h.runtime_ms >= 1000 else f"{h.runtime_ms:.0f} ms"
    return f"{text}, cached" if h.cached else text


def overlay_grid(gray, heatmaps: list[Heatmap], baseline: Heatmap, opacity: float, colormap: str, top: int) -> None:
    """All maps on one colour scale (each map spans [0, 1]), three per row."""
    for start in range(0, len(heatmaps), 3):
        for column, h in zip(st.columns(3), heatmaps[start:start + 3]):
            with column:
                st.image(overlay(gray, keep_top(h.cam, top), opacity, colormap, GRID_SIDE), width="stretch")
                better = h.faithfulness.road > baseline.faithfulness.road
                badge = ":green-badge[above random]" if better else ":orange-badge[not above random]"
                st.markdown(md("**{title}** · {runtime}  \nROAD {road:+.2f} " + badge + " (random {random:+.2f})",
                               title=h.title, runtime=_runtime(h), road=h.faithfulness.road,
                               random=baseline.faithfulness.road))
    st.caption(md("Evidence for **{target}** at layer {layer}. Warm = more evidence; each map is scaled to its "
                  "own maximum, so compare where the maps point, not how hot they are.", target=heatmaps[0].target,
                  layer=heatmaps[0].layer))


def faithfulness_table(heatmaps: list[Heatmap], baseline: Heatmap) -> None:
    rows = []
    for h in [*heatmaps, baseline] if baseline not in heatmaps else heatmaps:
        row = {"Method": h.title}
        for key, (title, _) in METRICS.items():
            row[title] = getattr(h.faithfulness, key)
        row["ROAD minus random"] = h.faithfulness.road - baseline.faithfulness.road
        row["Runtime"] = _runtime(h)
        rows.append(row)
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                 column_config={title: st.column_config.NumberColumn(format="%+.2f")
                                for title in [t for t, _ in METRICS.values()] + ["ROAD minus random"]})
    st.caption("Confidence = log-odds of the explained class. **ROAD**: (confidence after removing the least "
               "relevant pixels - after removing the most relevant) / 2, averaged over 20-80 % removed, pixels filled "
               "by noisy linear imputation; higher = more faithful. **Keep-map change**: confidence change when the "
               "image is multiplied by the map. **Deletion AUC**: mean confidence as 0-80 % of the pixels are "
               "removed, most relevant first (MoRF, lower = better) or least relevant first (LeRF, higher = "
               "better). **Complexity**: mean map value (lower = more compact). Filled-in patches look like "
               "opacities to this model, so removal alone can raise the log-odds of pneumonia: compare methods "
               "with each other and with random, not with zero.")


def deletion_curves(heatmaps: list[Heatmap], baseline: Heatmap) -> None:
    figure = go.Figure()
    xs = [0, *(round(100 * f) for f in REMOVED)]
    palette = px.colors.qualitative.D3
    shown = [*heatmaps, baseline] if baseline not in heatmaps else heatmaps
    for i, h in enumerate(shown):
        colour = "gray" if h.method == BASELINE else palette[i % len(palette)]
        f = h.faithfulness
        figure.add_scatter(x=xs, y=[f.confidence, *f.morf], name=f"{h.title}: most relevant first",
                           line=dict(color=colour), legendgroup=h.method)
        figure.add_scatter(x=xs, y=[f.confidence, *f.lerf], name=f"{h.title}: least relevant first",
                           line=dict(color=colour, dash="dot"), legendgroup=h.method)
    figure.update_layout(height=380, margin=dict(l=0, r=0, t=30, b=0), xaxis_title="% of pixels removed",
                         yaxis_title=f"log-odds of {heatmaps[0].target}", title="Deletion curves")
    st.plotly_chart(figure, width="stretch", config={"displaylogo": False})


def exports(gray, heatmaps: list[Heatmap], opacity: float, colormap: str, top: int, stem: str,
            export: Exporter) -> None:
    """A comparison sheet and one overlay PNG per method, full resolution, built only when clicked."""
    st.markdown("**Export** (full resolution, with the opacity, colormap and top % above)")
    columns = st.columns([2, 1, 1, 1, 1, 1])
    columns[0].download_button(
        "Comparison sheet", export("comparison.png", lambda: png_bytes(comparison_sheet(
            gray, {h.title: keep_top(h.cam, top) for h in heatmaps}, opacity, colormap))),
        f"{stem}-comparison.png", "image/png", on_click="ignore", icon=":material/grid_view:")
    for column, h in zip(columns[1:] + st.columns([2, 1, 1, 1, 1, 1])[1:], heatmaps):
        column.download_button(h.title, export(f"{h.method}.png", lambda h=h: png_bytes(
                                   overlay(gray, keep_top(h.cam, top), opacity, colormap))),
                               f"{stem}-{h.method}.png", "image/png", on_click="ignore", icon=":material/download:")


def audit_form() -> dict | None:
    """The audit to start, when the button is pressed."""
    with st.form("audit"):
        c1, c2, c3, c4 = st.columns(4)
        method = c1.selectbox("Method", [m for m in METHODS if m != BASELINE], format_func=lambda m: METHODS[m].title)
        dataset = c2.selectbox("Dataset", datasets("classification", in_data_dir=True))
        split = c3.selectbox("Split", SPLITS, index=SPLITS.index("test"))
        limit = c4.number_input("Images (0 = all)", 0, 10_000, 0, 10, help="Spread evenly over the split")
        if st.form_submit_button("Start audit", icon=":material/play_arrow:"):
            return {"method": method, "dataset": dataset, "split": split, "limit": int(limit) or None}
    return None


def audit_runs(store) -> None:
    """Every audit with its progress, refreshed every 3 s; the page reruns when a running one ends."""
    refreshing(_audit_runs, 3)(store)


def _audit_runs(store) -> None:
    runs = list_audits(store)
    running = any(r["status"] in ("queued", "running") for r in runs)
    if st.session_state.get(state.AUDIT_RUNNING) and not running:
        st.session_state[state.AUDIT_RUNNING] = False
        st.rerun(scope="app")
    st.session_state[state.AUDIT_RUNNING] = running
    if not runs:
        st.info("No audits yet.")
        return
    frame = pd.DataFrame([{
        "id": r["id"], "started": r["created_at"][:16].replace("T", " "),
        "model": f"{r['model_name']} v{r['model_version']}",
        "method": METHODS[r["method"]].title, "data": f"{r['dataset']} {r['split']}", "status": r["status"],
        "progress": r["done"] / r["total"] if r["total"] else 0.0, "border_share": r["border_share"],
        "corner_share": r["corner_share"], "road": r["road"], "error": r["error"]} for r in runs])
    if frame["error"].isna().all():
        frame = frame.drop(columns="error")
    st.dataframe(frame, hide_index=True, width="stretch",
                 column_config={"progress": st.column_config.ProgressColumn("Progress", min_value=0, max_value=1),
                                "border_share": st.column_config.NumberColumn("Border mass", format="percent"),
                                "corner_share": st.column_config.NumberColumn("Top-corner mass", format="percent"),
                                "road": st.column_config.NumberColumn("Mean ROAD", format="%+.2f")})


def audit_intro(model_name: str) -> None:
    st.caption(md("Run one method over a whole dataset split with **{name}**: how much of the heatmap falls on the "
                  "image border and the top corners (where markers and burned-in text sit), and how faithful the "
                  "maps are. Runs in the background; every run is kept for comparing model versions.",
                  name=model_name))


def audit_picker(store) -> dict | None:
    """The finished audit to show (newest first), or None when there is none."""
    runs = {r["id"]: r for r in list_audits(store) if r["status"] == "finished"}
    if not runs:
        return None
    chosen = st.selectbox("Show audit", list(runs), format_func=lambda i: (
        f"#{i}: {runs[i]['model_name']} v{runs[i]['model_version']}, {METHODS[runs[i]['method']].title}, "
        f"{runs[i]['dataset']} {runs[i]['split']} ({runs[i]['created_at'][:16]})"))
    return get_audit(store, chosen)


def audit_view(config: Config, row: dict, explainer: Explainer, colormap: str = "jet") -> Path | None:
    """One finished audit: where the heatmap mass lies, per class, and the images looking most outside.
    Returns the dataset file the user asked to open as a case (the page ingests it)."""
    summary = json.loads(row["summary"])
    uniform = summary["uniform"]
    c1, c2, c3 = st.columns(3)
    for column, key, title, reference in (
            (c1, "border_share", "Heatmap mass in the outer 10 % border",
             f"uniform map: {uniform['border_share']:.0%}"),
            (c2, "corner_share", "Mass in the two top corners", f"uniform map: {uniform['corner_share']:.1%}")):
        mean, low, high = summary[key]
        column.metric(title, f"{mean:.1%}", f"{reference} · 95 % CI {low:.1%}-{high:.1%}", delta_color="off",
                      delta_arrow="off")
    mean, low, high = summary["road"]
    c3.metric("Mean ROAD", f"{mean:+.2f}", f"95 % CI {low:+.2f} to {high:+.2f}", delta_color="off", delta_arrow="off")
    st.markdown(md("**{n} images** of {dataset} {split} · {method} at {layer} · model {model} v{version} · "
                   "explained class = the model's output (accuracy {accuracy:.1%})", n=summary["n"],
                   dataset=row["dataset"], split=row["split"], method=METHODS[row["method"]].title, layer=row["layer"],
                   model=row["model_name"], version=row["model_version"], accuracy=summary["accuracy"]))
    heatmaps = {label: cam for label, cam in audit_heatmaps(row).items() if summary["per_class"][label]["n"]}
    size = next(iter(heatmaps.values())).shape[0] if heatmaps else 0
    columns = st.columns([1] * len(heatmaps) + [2])
    for column, (label, cam) in zip(columns, heatmaps.items()):
        per = summary["per_class"][label]
        column.image(overlay(_gray_canvas(size), cam / max(float(cam.max()), 1e-8), 0.9, colormap), width=300,
                     caption=f"Mean heatmap, {label} (n={per['n']}): border {per['border_share']:.1%}, "
                             f"corners {per['corner_share']:.1%}")
    with columns[-1]:
        histogram = px.histogram(pd.DataFrame(summary["images"]), x="road", color="label", nbins=30,
                                 title="ROAD per image")
        st.plotly_chart(histogram.update_layout(height=300, margin=dict(l=0, r=0, t=40, b=0)),
                        width="stretch", config={"displayModeBar": False})
    st.markdown(md("**The {n} images whose heatmap lies most outside the central region**", n=TOP_OUTSIDE))
    by_name = {r["name"]: r for r in summary["images"]}
    chosen = None
    for start in range(0, TOP_OUTSIDE, 4):
        for column, name in zip(st.columns(4), summary["most_outside"][start:start + 4]):
            with column:
                chosen = _outside_tile(config, row, by_name[name], explainer, colormap) or chosen
    return chosen


def _gray_canvas(size: int) -> np.ndarray:
    return np.full((size, size), 96, np.uint8)


def _outside_tile(config: Config, row: dict, record: dict, explainer: Explainer, colormap: str) -> Path | None:
    path = dataset_file(config, row["dataset"], record["name"])
    caption = (f"{record['label']} → {record['predicted']} · border {record['border_share']:.0%} · "
               f"corners {record['corner_share']:.0%}")
    if path is None:
        st.text(f"{record['name']}: {caption}")
        return None
    gray = gray_of_file(path)
    cam = _tile_cam(explainer, str(path), row["method"], record["predicted"], row["layer"])
    st.image(overlay(gray, cam, 0.5, colormap, 360), caption=caption, width="stretch")
    if st.button("Open as a case", key=f"open-{row['id']}-{record['name']}", icon=":material/open_in_new:"):
        return path
    return None


@st.cache_data(max_entries=64, show_spinner=False, hash_funcs={Explainer: lambda e: e.classifier.loaded.sha256})
def _tile_cam(explainer: Explainer, path: str, method: str, target: str, layer: str) -> np.ndarray:
    """A dataset image's map, computed once per (weights, image, method, class, layer) and reused on every rerun."""
    return explainer.explain(gray_of_file(Path(path)), [method], target, layer, faithfulness=False)[0].cam
