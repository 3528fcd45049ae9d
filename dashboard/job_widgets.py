"""The room every page of background jobs shares (Training, Batch): refresh the queue, the new-job form, the
list of jobs, the chosen job's live view and its Cancel / Resume buttons."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st

from dashboard.text import md
from engine.context import Context
from engine.jobs import RESUMABLE, Job, JobStatus, cancel_job, dispatch, get_job, list_jobs, resume_job

__all__ = ["JobRoom", "job_room"]


@dataclass(frozen=True)
class JobRoom:
    kind: str  # the job kind (engine.jobs.queue.KINDS)
    noun: str  # "training job", "batch run"
    form: Callable[[Context], object | None]  # draws the form; returns the request when submitted
    start: Callable[[Context, object], int]  # queues the request; returns the job id
    empty: str  # what the page says before the first job
    table: Callable[[Context, list[Job]], None]
    title: Callable[[Job], str]
    live: Callable[[Context, int], None]
    state_key: str  # session-state key of the chosen job
    resume_label: str
    finished: Callable[[Job], None] = lambda job: None  # what a finished job offers next (a link)


def _actions(job: Job, room: JobRoom) -> str | None:
    """The buttons a job offers; returns "cancel" or "resume" when one is pressed (the page acts)."""
    row = st.container(horizontal=True)  # buttons as wide as their labels, side by side
    if job.active and row.button("Cancel job", icon=":material/stop:", key=f"cancel.{job.id}"):
        return "cancel"
    if job.status in RESUMABLE and row.button(room.resume_label, icon=":material/replay:",
                                              key=f"resume.{job.id}", type="primary"):
        return "resume"
    if job.status is JobStatus.FINISHED:
        room.finished(job)
    return None


def job_room(ctx: Context, room: JobRoom) -> None:
    if st.button("Refresh the queue", icon=":material/refresh:", help="Start what waits for a free device and "
                 "mark jobs whose process died as interrupted"):
        dispatch(ctx)
    with st.expander(f"New {room.noun}", icon=":material/add_circle:", expanded=not list_jobs(ctx.store, room.kind)):
        request = room.form(ctx)
        if request:
            job_id = room.start(ctx, request)
            st.session_state[room.state_key] = job_id
            st.toast(md("{noun} {id} queued", noun=room.noun.capitalize(), id=job_id), icon=":material/play_arrow:")
    jobs = {j.id: j for j in list_jobs(ctx.store, room.kind)}
    if not jobs:
        st.info(room.empty)
        st.stop()
    st.subheader(f"{room.noun.capitalize()}s")
    room.table(ctx, list(jobs.values()))
    running = next((i for i, j in jobs.items() if j.status == "running"), next(iter(jobs)))
    wanted = st.session_state.get(room.state_key, running)
    ids = list(jobs)
    job_id = st.selectbox(room.noun.capitalize(), ids, index=ids.index(wanted) if wanted in ids else 0,
                          format_func=lambda i: room.title(jobs[i]))
    st.session_state[room.state_key] = job_id
    room.live(ctx, job_id)
    action = _actions(get_job(ctx.store, job_id), room)
    if action:
        {"cancel": cancel_job, "resume": resume_job}[action](ctx, job_id)
        st.rerun()
