"""Training: start a retraining job, watch it live (progress, curves, throughput, memory, log), cancel or
resume it; a finished job's model goes to the Models page for comparison and promotion."""

import streamlit as st

from dashboard import resources, state, train_widgets, widgets
from dashboard.text import md
from engine.jobs.queue import cancel_job, dispatch, get_job, list_jobs, resume_job
from engine.jobs.training import submit_training

ctx = resources.context()
st.title("Training")

with widgets.engine_errors():
    if st.button("Refresh the queue", icon=":material/refresh:", help="Start what waits for a free device and "
                 "mark jobs whose process died as interrupted"):
        dispatch(ctx)
    with st.expander("New training job", icon=":material/add_circle:", expanded=not list_jobs(ctx.store, "train")):
        request = train_widgets.job_form(ctx)
        if request:
            job_id = submit_training(ctx, request)
            st.session_state[state.TRAIN_JOB] = job_id
            st.toast(md("Job {id} queued", id=job_id), icon=":material/play_arrow:")
    jobs = {j.id: j for j in list_jobs(ctx.store, "train")}
    if not jobs:
        st.info("No training job yet. Fill in the form above: the defaults retrain the active model's recipe.")
        st.stop()
    st.subheader("Jobs")
    train_widgets.queue_table(ctx.config, list(jobs.values()))
    running = next((i for i, j in jobs.items() if j.status == "running"), next(iter(jobs)))
    wanted = st.session_state.get(state.TRAIN_JOB, running)
    ids = list(jobs)
    job_id = st.selectbox("Job", ids, index=ids.index(wanted) if wanted in ids else 0,
                          format_func=lambda i: train_widgets.job_title(jobs[i]))
    st.session_state[state.TRAIN_JOB] = job_id
    train_widgets.live_job(ctx, job_id)
    action = train_widgets.job_actions(get_job(ctx.store, job_id))
    if action:
        {"cancel": cancel_job, "resume": resume_job}[action](ctx, job_id)
        st.rerun()
