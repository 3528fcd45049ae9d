"""Background training jobs on a 48-film subset: lifecycle and queue, cancel, kill -9 and resume, NaN and
disk-full failures, torchrun with two CPU processes, and the store staying consistent meanwhile."""

import dataclasses
import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from engine.cases.worklist import WorklistQuery, query_worklist
from engine.errors import TrainingDiverged
from engine.jobs.queue import cancel_job, get_job, job_metrics, list_jobs, resume_job
from engine.jobs.training import TrainConfig, TrainingRequest, submit_training
from engine.models.checkpoint import load_state
from engine.models.installed import find_model
from engine.tasks import TASKS
from engine.train import run as training
from tests.conftest import needs_data, write_cxr_subset

ROOT = pathlib.Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, needs_data]


@pytest.fixture
def tiny(tmp_path):
    folder = write_cxr_subset(tmp_path / "home" / "datasets" / "cxr")
    return lambda **kw: TrainingRequest(TrainConfig(**{"dataset": "folder", "model": "resnet18", "size": 48,
                                                       "epochs": 3, "batch_size": 8, "data_path": folder, **kw}))


def _wait(store, job_id, until, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get_job(store, job_id)
        if until(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} stuck: {get_job(store, job_id)}")


def _ended(job):
    return job.status not in ("queued", "running")


def _epochs(config, job_id):
    lines = (config.home / "jobs" / str(job_id) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_job_runs_in_the_background_queues_the_next_and_installs_a_candidate(config, store, ctx, tiny):
    first = submit_training(ctx, tiny())
    second = submit_training(ctx, tiny(epochs=2))
    assert get_job(store, first).status == "running" and get_job(store, second).status == "queued"

    # The dashboard's own reads and writes go on while the job writes its metrics.
    for i in range(40):
        store.log_action("tester", "test.concurrent", "test", i)
        query_worklist(store, WorklistQuery())
    job = _wait(store, first, _ended)
    assert job.status == "finished", job.error
    assert _wait(store, second, _ended).status == "finished"  # the queue moved on by itself

    names = {m["name"] for m in job_metrics(store, first)}
    assert {"loss", "images_per_s", "train_loss", "val_loss", "val_auc", "epoch_seconds", "cpu_percent"} <= names
    assert [m["epoch"] for m in job_metrics(store, first) if m["name"] == "val_auc"] == [0, 1, 2]
    candidate = find_model(config, job.model_name)
    assert not candidate.shipped and candidate.card.version == f"job{first}"
    assert candidate.card.training["job"] == first
    assert candidate.card.training["command"].startswith("python -m engine.train.run --dataset folder")
    assert "--job" not in candidate.card.training["command"]
    with store.read() as db:
        actions = [r["action"] for r in db.query("SELECT action FROM audit_log WHERE target_type = 'job'")]
        concurrent = db.execute("SELECT count(*) FROM audit_log WHERE action = 'test.concurrent'").fetchone()[0]
    assert actions.count("job.start") == 2 and actions.count("job.finish") == 2
    assert concurrent == 40


def test_cancel_stops_the_process_and_leaves_no_partial_file(config, store, ctx, tiny):
    job_id = submit_training(ctx, tiny(epochs=200))
    waiting = submit_training(ctx, tiny(epochs=200))
    pid = _wait(store, job_id, lambda j: j.progress.get("step")).pid
    cancel_job(ctx, job_id)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _pid_runs(pid):
        time.sleep(0.2)
    assert not _pid_runs(pid)
    job = get_job(store, job_id)
    assert job.status == "cancelled" and "cancelled by" in job.error
    assert not list((config.home / "jobs" / str(job_id)).glob(".*.tmp"))
    assert get_job(store, waiting).status == "running"  # the device went to the next job
    cancel_job(ctx, waiting)
    with pytest.raises(Exception, match="only queued or running"):
        cancel_job(ctx, job_id)


def _pid_runs(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return pathlib.Path(f"/proc/{pid}").exists() and "zombie" not in pathlib.Path(f"/proc/{pid}/status").read_text()


def test_kill_9_mid_epoch_then_resume_matches_an_uninterrupted_run(config, store, ctx, tiny):
    reference = submit_training(ctx, tiny(epochs=4))
    assert _wait(store, reference, _ended).status == "finished"
    job_id = submit_training(ctx, tiny(epochs=4))
    running = _wait(store, job_id, lambda j: j.progress.get("last_epoch") == 1)
    os.kill(running.pid, signal.SIGKILL)  # the real thing: no handler runs
    deadline = time.monotonic() + 30
    while _listed(store, job_id).status == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _listed(store, job_id).status == "interrupted"  # what the Training page shows
    assert load_state(config.home / "jobs" / str(job_id) / "state.pt")["epoch"] >= 1  # intact, loadable

    resume_job(ctx, job_id)
    assert _wait(store, job_id, _ended).status == "finished"
    # Same seed, RNG and optimizer/scheduler state restored: the resumed epochs equal the uninterrupted ones.
    resumed, uninterrupted = _epochs(config, job_id), _epochs(config, reference)
    assert [r["epoch"] for r in resumed] == [0, 1, 2, 3]
    for a, b in zip(resumed, uninterrupted):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
        assert a["val_auc"] == pytest.approx(b["val_auc"], abs=1e-4)
    final = {n: load_state(config.home / "jobs" / str(n) / "state.pt")["model"] for n in (job_id, reference)}
    for key, value in final[reference].items():
        assert torch.allclose(final[job_id][key].float(), value.float(), atol=1e-5), key
    with store.read() as db:
        assert db.execute("SELECT count(*) FROM audit_log WHERE action = 'job.resume'").fetchone()[0] == 1


def _listed(store, job_id):
    return next(j for j in list_jobs(store) if j.id == job_id)


def _config(argv):
    return TrainConfig.from_args(training.get_args_parser().parse_args(argv))


def _args(tmp_path, tiny_folder, *extra):
    return (
        ["--dataset", "folder", "--data-path", str(tiny_folder), "--size", "48", "--batch-size", "8", "--threads", "1",
         "--output", str(tmp_path / "run"), "--name", "t", *extra])


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    folder = write_cxr_subset(tmp_path / "home" / "datasets" / "cxr")
    monkeypatch.setenv("RADLENS_HOME", str(tmp_path / "home"))
    real = TASKS["classification"]
    calls = {"n": 0}

    class Poisoned(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, logits, target):
            calls["n"] += 1  # 3 steps per epoch: the loss turns NaN at the second epoch's second step
            value = self.inner(logits, target)
            return value * float("nan") if calls["n"] == 5 else value

    monkeypatch.setitem(TASKS, "classification", dataclasses.replace(
        real, loss=lambda train, cfg: Poisoned(real.loss(train, cfg))))
    args = _args(tmp_path, folder, "--epochs", "3")
    with pytest.raises(TrainingDiverged, match=r"became nan at step 2 of 3 of epoch 2.*epoch 1 \(kept\).*lower "
                                                r"learning rate"):
        training.cli(args)
    assert load_state(tmp_path / "run" / "state.pt")["epoch"] == 0
    assert not (tmp_path / "run" / "t.safetensors").exists()


def test_disk_full_while_checkpointing_fails_cleanly(tmp_path, monkeypatch):
    folder = write_cxr_subset(tmp_path / "home" / "datasets" / "cxr")
    monkeypatch.setenv("RADLENS_HOME", str(tmp_path / "home"))
    real_write = pathlib.Path.write_bytes
    writes = {"n": 0}

    def full_disk(self, data):
        if self.name.startswith(".state.pt."):
            writes["n"] += 1
            if writes["n"] == 2:  # the second epoch's checkpoint: half of it lands, then the disk is full
                real_write(self, bytes(memoryview(data)[: len(data) // 2]))
                raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", full_disk)
    args = _args(tmp_path, folder, "--epochs", "3")
    with pytest.raises(OSError) as caught:
        training.cli(args)
    message = training.failure_message(caught.value, _config(args))
    assert "disk is full" in message and "last complete checkpoint is intact" in message
    assert load_state(tmp_path / "run" / "state.pt")["epoch"] == 0  # the previous checkpoint, whole
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_a_real_full_disk_fails_the_job_cleanly_and_resume_finishes_it(config, store, ctx, tiny, small_disk):
    # room for one epoch's checkpoint (state.pt ~180 MB + weights ~46 MB), not for the next one's temp file
    jobs_folder = small_disk(config.home / "jobs", "320m")
    job_id = submit_training(ctx, tiny())
    job = _wait(store, job_id, _ended)
    assert job.status == "failed"
    folder = config.home / "jobs" / str(job_id)
    assert job.error == (f"the disk is full (writing to {folder}): the job stopped and the last complete "
                            "checkpoint is intact; free space there and resume")
    assert load_state(folder / "state.pt")["epoch"] == 0  # the first epoch's checkpoint, whole
    assert not list(folder.glob(".*.tmp"))  # the half-written one is gone

    small_disk(jobs_folder, "1g")  # the user frees space, then resumes
    resume_job(ctx, job_id)
    job = _wait(store, job_id, _ended)
    assert job.status == "finished", job.error
    assert [e["epoch"] for e in _epochs(config, job_id)] == [0, 1, 2]
    assert find_model(config, job.model_name).card.version == f"job{job_id}"


def test_cuda_out_of_memory_suggests_a_smaller_batch(tmp_path):
    args = _config(["--batch-size", "64", "--size", "512"])
    message = training.failure_message(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
                                       args)
    assert "batch size 64" in message and "batch size of 32 or smaller" in message


def test_torchrun_two_cpu_processes_write_the_same_checkpoint_shape(tmp_path):
    folder = write_cxr_subset(tmp_path / "home" / "datasets" / "cxr")
    env = {**os.environ, "RADLENS_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    common = ["-m", "engine.train.run", "--dataset", "folder", "--data-path", str(folder), "--size", "48",
              "--batch-size", "4", "--epochs", "1", "--device", "cpu", "--threads", "1", "--name", "t"]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *common,
                    "--output", str(tmp_path / "ddp")], cwd=ROOT, env=env, check=True, timeout=300)
    subprocess.run([sys.executable, *common, "--output", str(tmp_path / "single")], cwd=ROOT, env=env, check=True,
                   timeout=300)
    ddp, single = (load_file(str(tmp_path / run / "t.safetensors")) for run in ("ddp", "single"))
    assert {k: v.shape for k, v in ddp.items()} == {k: v.shape for k, v in single.items()}
    card = json.loads((tmp_path / "ddp" / "t.json").read_text())
    assert card["training"]["processes"] == 2 and card["training"]["command"].startswith("torchrun --nproc-per-node=2")
    assert len(_lines(tmp_path / "ddp")) == 1  # rank 0 alone wrote the metrics


def _lines(folder):
    return (folder / "metrics.jsonl").read_text().splitlines()
