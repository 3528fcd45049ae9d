"""The one job machinery and the context, without running a job: reads never write, a dead process reads as
interrupted and dispatch records it, every kind shares one status vocabulary, the training configuration
has one definition."""

import dataclasses
import json

import pytest

from engine.errors import JobError
from engine.jobs.queue import KINDS, Job, JobStatus, dispatch, get_job, list_jobs
from engine.jobs.training import TrainConfig, get_args_parser
from engine.store import utc_now
from engine.tasks import TASKS

DEAD_PID = 2**22 + 12345  # above Linux's default pid_max: no process has it


def _row(store, kind="train", status="running", pid=DEAD_PID):
    with store.write() as db:
        return db["jobs"].insert({"kind": kind, "status": status, "pid": pid, "device": "cpu", "task": "",
                                  "actor": "t", "config": "{}", "progress": "{}", "review_ids": "[]",
                                  "created_at": utc_now(), "resumes": 0}).last_pk


def test_a_dead_running_job_reads_as_interrupted_without_a_write(ctx, store):
    job_id = _row(store)
    assert get_job(store, job_id).status is JobStatus.INTERRUPTED
    assert [j.status for j in list_jobs(store)] == [JobStatus.INTERRUPTED]
    with store.read() as db:  # reading changed nothing in the database
        assert db["jobs"].get(job_id)["status"] == "running"
    dispatch(ctx)  # the explicit refresh records it
    with store.read() as db:
        row = db["jobs"].get(job_id)
    assert row["status"] == "interrupted" and "resume" in row["error"]


def test_audits_and_training_share_one_queue_and_one_status_vocabulary(store):
    train, audit = _row(store, "train", "finished"), _row(store, "heatmap-audit", "failed")
    assert {"train", "heatmap-audit"} <= set(KINDS)
    assert [j.id for j in list_jobs(store, "heatmap-audit")] == [audit]
    assert {j.status for j in list_jobs(store)} == {JobStatus.FINISHED, JobStatus.FAILED}
    assert all(isinstance(j, Job) for j in list_jobs(store)) and get_job(store, train).kind == "train"
    with pytest.raises(JobError, match="does not exist"):
        get_job(store, 999)


def test_the_training_configuration_has_one_definition():
    parsed = TrainConfig.from_args(get_args_parser().parse_args([]))
    assert parsed == TrainConfig()  # the command line's defaults are the dataclass's
    seg = TrainConfig(dataset="hc18", model="unet").resolved()
    defaults = TASKS["segmentation"].defaults
    assert (seg.size, seg.batch_size, seg.epochs) == (defaults.size, defaults.batch_size, defaults.epochs)
    custom = dataclasses.replace(seg, lr=3e-4, augment=False, review_ids=(4, 7), output=None)
    again = TrainConfig.from_args(get_args_parser().parse_args(custom.to_argv()))
    assert again == custom  # argv round trip
    assert TrainConfig.from_dict(json.loads(json.dumps(custom.to_dict()))) == custom  # the job row round trip
    with pytest.raises(JobError, match="is a classification model"):
        TrainConfig(dataset="hc18", model="resnet18").resolved()


