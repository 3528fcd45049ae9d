"""Training: start a retraining job, watch it live (progress, curves, throughput, memory, log), cancel or
resume it; a finished job's model goes to the Models page for comparison and promotion."""

import streamlit as st

from dashboard import resources, state, train_widgets, widgets
from dashboard.job_widgets import JobRoom, job_room
from engine.jobs import submit_training

ctx = resources.context()
st.title("Training")

with widgets.engine_errors():
    job_room(ctx, JobRoom(
        "train", "training job", train_widgets.job_form, submit_training,
        "No training job yet. Fill in the form above: the defaults retrain the active model's recipe.",
        lambda c, jobs: train_widgets.queue_table(c.config, jobs), train_widgets.job_title, train_widgets.live_job,
        state.TRAIN_JOB, "Resume from the last checkpoint", train_widgets.compare_link))
