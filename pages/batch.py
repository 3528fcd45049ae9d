"""Batch: run a model over a folder, zip or manifest of images on the server as a resumable job; watch its
progress (files done, images/s, time left, failures, where the time goes), cancel or resume it, and download
its results, one line per file."""

import streamlit as st

from dashboard import batch_widgets, resources, state, widgets
from dashboard.job_widgets import JobRoom, job_room
from engine.batch import start_batch

ctx = resources.context()
st.title("Batch")

with widgets.engine_errors():
    job_room(ctx, JobRoom(
        "batch", "batch run", batch_widgets.run_form, lambda c, request: start_batch(c, request),
        "No batch run yet. Point the form above at a folder, zip or manifest of images on the server.",
        batch_widgets.runs_table, batch_widgets.run_title, batch_widgets.live_run, state.BATCH_JOB,
        "Resume (loaded shards are kept)"))
