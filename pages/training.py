"""Training: start a retraining job, watch it live (progress, curves, throughput, memory, log), cancel or
resume it; a finished job's model goes to the Models page for comparison and promotion."""

import streamlit as st

from dashboard import resources, state, train_widgets, widgets
from engine.train.jobs import dispatch, list_jobs, submit_job

store, config = resources.store(), resources.config()
st.title("Training")

with widgets.engine_errors():
    dispatch(config, store)  # starts what waits for a free device; marks jobs whose process died
    with st.expander("New training job", icon=":material/add_circle:", expanded=not list_jobs(store)):
        spec = train_widgets.job_form(config, store)
        if spec:
            job_id = submit_job(config, store, spec)
            st.session_state[state.TRAIN_JOB] = job_id
            st.toast(f"Job {job_id} queued", icon=":material/play_arrow:")
    jobs = list_jobs(store)
    if not jobs:
        st.info("No training job yet. Fill in the form above: the defaults retrain the active model's recipe.")
        st.stop()
    st.subheader("Jobs")
    train_widgets.queue_table(config, jobs)
    ids = [j["id"] for j in jobs]
    running = next((j["id"] for j in jobs if j["status"] == "running"), ids[0])
    wanted = st.session_state.get(state.TRAIN_JOB, running)
    job_id = st.selectbox("Job", ids, index=ids.index(wanted) if wanted in ids else 0, format_func=lambda i: next(
        f"Job {i}: {j['status']} - {j['config']['spec']['arch']} on {j['config']['spec']['dataset']}"
        for j in jobs if j["id"] == i))
    st.session_state[state.TRAIN_JOB] = job_id
    train_widgets.live_job(config, store, job_id)
