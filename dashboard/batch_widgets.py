"""Batch page pieces: the run form, the list of runs, and the live view of one run (a self-refreshing fragment)."""

from __future__ import annotations

import io
from itertools import islice

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard.auth import refreshing
from dashboard.text import md
from engine.batch import (
    BACKENDS,
    DEFAULT_SHARD_SIZE,
    EXPORT_COLUMNS,
    BatchRequest,
    batch_rows,
    batch_summary,
    batch_tasks,
    write_results_csv,
)
from engine.context import Context
from engine.jobs import Job, JobStatus, get_job
from engine.models import installed_models

__all__ = ["run_form", "runs_table", "live_run", "run_title", "REFRESH_S", "PREVIEW_ROWS"]

REFRESH_S = 2.0
PREVIEW_ROWS = 200
_STAGE_TITLES = {"read": "read file", "decode": "decode (sandbox)", "preprocess": "preprocess", "forward": "forward",
                 "forward_cam": "forward + Grad-CAM", "encode": "encode PNG", "write": "write Parquet + SQLite",
                 "cases": "ingest as cases"}


def run_form(ctx: Context) -> BatchRequest | None:
    """The new-run form; returns the request when submitted."""
    roots = ", ".join(str(r) for r in ctx.config.allowed_batch_roots)
    with st.form("batch.form"):
        source = st.text_input("Source on the server: a folder, a .zip, or a manifest (.csv / .parquet with a "
                               "'path' column)", help=f"Batch runs may read under: {roots} (RADLENS_BATCH_ROOTS)",
                               key="batch.source")
        c1, c2, c3 = st.columns(3)
        task = c1.selectbox("Task", batch_tasks())
        models = ["(active model)"] + [m.name for m in installed_models(ctx.config, task)]
        model = c2.selectbox("Model", models, help="The models installed for the task chosen when the form "
                             "was drawn; the engine refuses a model of another task")
        backend = c3.selectbox("Backend", list(BACKENDS), help="local: processes on this machine; ray: a Ray "
                               "cluster (a local one unless the server is configured for another)")
        c4, c5, c6 = st.columns(3)
        workers = c4.number_input("Workers", 1, 64, 2)
        shard_size = c5.number_input("Images per shard", 1, 100_000, DEFAULT_SHARD_SIZE,
                                     help="The unit of retry and resume")
        pixel_mm = c6.number_input("Pixel size (mm), segmentation", 0.0, 10.0, 0.0, format="%.4f",
                                   help="For files that give none; 0 measures in pixels")
        cam = st.checkbox("Keep each image's Grad-CAM overlay (classification)")
        cases = st.checkbox("Also make each analysed image a case (de-identified at ingest; its result logged "
                            "on the case)", help="Needs the upload permission")
        if not st.form_submit_button("Start the batch run", icon=":material/play_arrow:", type="primary"):
            return None
    if not source.strip():
        st.warning("Give the source: a folder, zip or manifest on the server")
        return None
    return BatchRequest(source.strip(), task, "" if model == "(active model)" else model, cam, backend,
                        int(workers), int(shard_size), pixel_mm=pixel_mm or None, cases=cases)


def run_title(job: Job) -> str:
    return f"Run {job.id}: {job.status.value} - {job.config.get('model')} on {job.config.get('items', 0):,} files"


def runs_table(ctx: Context, jobs: list[Job]) -> None:
    rows = []
    for job in jobs:
        s = batch_summary(ctx.store, job.id)
        rows.append({"Run": job.id, "Status": job.status.value, "Task": job.task, "Model": job.config.get("model"),
                     "Backend": job.config.get("backend"), "Files": s["items"], "Analysed": s["analysed"],
                     "Not analysed": s["not_analysed"], "Failed": s["failed"], "New rows": s["new_rows"],
                     "Started by": job.actor, "Created (UTC)": (job.created_at or "")[:19].replace("T", " "),
                     "Error": job.error})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def _stages(seconds: dict) -> go.Figure:
    names = [k for k in _STAGE_TITLES if seconds.get(k)]
    figure = go.Figure(go.Bar(x=[seconds[k] for k in names], y=[_STAGE_TITLES[k] for k in names], orientation="h",
                              text=[f"{seconds[k]:.1f} s" for k in names], textposition="auto"))
    figure.update_layout(height=60 + 28 * len(names), margin=dict(l=0, r=0, t=10, b=0),
                         xaxis_title="seconds (all workers together)", yaxis=dict(autorange="reversed"))
    return figure


def _results_csv(ctx: Context, job_id: int) -> bytes:
    buffer = io.StringIO()
    write_results_csv(ctx, job_id, buffer)
    return buffer.getvalue().encode()


def _render(ctx: Context, job_id: int, was_active: bool) -> None:
    job = get_job(ctx.store, job_id)
    if was_active and not job.active:
        st.rerun(scope="app")  # the list and the buttons outside this fragment change too
    s, p = batch_summary(ctx.store, job_id), job.progress
    done, total = p.get("done", 0), max(s["items"], 1)
    eta = f", about {p['eta_s']:.0f} s left" if job.status is JobStatus.RUNNING and p.get("eta_s") else ""
    st.progress(min(done / total, 1.0), text=f"{done:,} of {s['items']:,} files{eta}")
    c = st.columns(5)
    c[0].metric("Throughput", f"{p.get('images_per_s', 0):.1f} img/s")
    c[1].metric("Analysed", f"{s['analysed']:,}")
    c[2].metric("Not analysed", f"{s['not_analysed']:,}", help="Outside the model's scope (modality, body part "
                "or OOD gate): no label is given")
    c[3].metric("Failed", f"{s['failed']:,}", help="Files that could not be read or decoded; each has its reason")
    c[4].metric("New result rows", f"{s['new_rows']:,}", help="Images this model had not analysed before; the "
                "others were already in the store (results are kept once per image and model)")
    if s["labels"]:
        st.text("Labels: " + ", ".join(f"{k} {v:,}" for k, v in sorted(s["labels"].items())))
    if p.get("stage_seconds"):
        st.plotly_chart(_stages(p["stage_seconds"]), config={"displayModeBar": False})


def live_run(ctx: Context, job_id: int) -> None:
    """The run's progress (refreshing while it runs), then its results and their download."""
    active = get_job(ctx.store, job_id).active
    refreshing(_render, REFRESH_S if active else None)(ctx, job_id, active)
    if active:
        return
    rows = list(islice(batch_rows(ctx, job_id, with_paths=True), PREVIEW_ROWS))
    if not rows:
        return
    st.caption(md("The first {n} files of the run, in source order (paths are read from the source now; the store "
                  "keeps none)", n=len(rows)))
    table = pd.DataFrame(rows)[[c for c in EXPORT_COLUMNS if c in rows[0]]]
    st.dataframe(table.rename(columns=lambda c: c.replace("_", " ").capitalize()), hide_index=True, width="stretch")
    st.download_button("Download the results (CSV, one line per file)", _results_csv(ctx, job_id),
                       f"batch-{job_id}.csv", "text/csv", icon=":material/download:")
