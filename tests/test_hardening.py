"""The smaller hostile-input findings, each where it belongs: search and ?case= parsing, a full database,
orphan files, installed models never overwritten, job liveness by pid and start time, terminal output,
training folders, free-text and batch caps, upload limits that agree, `make clean` keeping user data."""

import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from engine.cases.ingest import ingest_files, remove_orphan_files
from engine.cases.reviews import MAX_COMMENT, add_review
from engine.cases.worklist import WorklistQuery, case_id_of, query_worklist
from engine.config import Config, Limits
from engine.context import Context
from engine.errors import DiskFull, InvalidReview, JobError
from engine.jobs.process import alive, start_time
from engine.jobs.queue import get_job
from engine.jobs.training import TrainConfig, TrainingRequest, submit_training
from engine.models.installed import SHIPPED_DIR, install_candidate
from tests.conftest import dicom_bytes

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("text", ["chest\x00", "²", "١٢", "9" * 25, "'\"*", "x" * 5000])
def test_worklist_search_takes_any_text(ctx, store, text):
    ingest_files([("ct.dcm", dicom_bytes("CT_small.dcm"))], ctx)
    page = query_worklist(store, WorklistQuery(text=text))
    assert page.total == 0 and page.rows == []
    assert query_worklist(store, WorklistQuery(text="\x00")).total == 1  # nothing printable: no filter


def test_case_numbers_are_ascii_digits_that_fit():
    assert case_id_of("12") == 12 and case_id_of(" 7 ") == 7
    assert [case_id_of(t) for t in ("²", "١٢", "9" * 19, "-1", "1e3", "")] == [None] * 6


def test_a_full_database_is_reported_as_disk_full_not_masked_by_the_rollback(store):
    with pytest.raises(DiskFull, match="the database could not grow"):
        with store.write() as db:
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            db.execute(f"PRAGMA max_page_count = {pages}")
            db.execute("INSERT INTO settings (key, value) VALUES ('big', ?)", ["x" * 1_000_000])
    assert store.setting("big") is None


def test_files_no_row_points_at_are_swept_and_tracked_ones_kept(ctx, config):
    [kept] = ingest_files([("ct.dcm", dicom_bytes("CT_small.dcm"))], ctx)
    stray = config.home / "files" / "ab" / "left-by-a-crash.dcm"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"half")
    fresh = stray.with_name("being-written.dcm.tmp")
    fresh.write_bytes(b"in flight")
    old = time.time() - 7200
    os.utime(stray, (old, old))
    assert remove_orphan_files(ctx) == [stray]
    assert fresh.exists() and len([p for p in (config.home / "files").rglob("*.dcm")]) == 1


def test_a_finished_job_never_replaces_an_installed_model(config, tmp_path):
    shipped = SHIPPED_DIR / "hc18-unet.safetensors"
    before = shipped.read_bytes()
    weights = tmp_path / "run" / "hc18-unet.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"new weights")
    with pytest.raises(JobError, match="already installed and is kept"):
        install_candidate(config, weights)
    assert shipped.read_bytes() == before and not (config.home / "models" / weights.name).exists()


def test_a_reused_pid_is_not_the_job(ctx, store):
    me = os.getpid()
    assert alive(me, start_time(me)) and not alive(me, start_time(me) - 3600)
    with store.write() as db:
        job_id = db["jobs"].insert({"kind": "train", "status": "running", "pid": me,
                                    "pid_started": start_time(me) - 3600, "created_at": "2026-12-01",
                                    "updated_at": "2026-12-01"}).last_pk
    assert get_job(store, job_id).status.value == "interrupted"  # this process is not the one that started it


def test_the_command_line_never_prints_terminal_control_sequences(tmp_path):
    hostile = tmp_path / "\x1b]0;owned\x07\x1b[31mred.dcm"
    hostile.write_bytes(b"not an image")
    run = subprocess.run([sys.executable, "-m", "engine", "ingest", str(hostile)], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "RADLENS_HOME": str(tmp_path / "home")}, timeout=120)
    assert "red.dcm" in run.stdout and "\x1b" not in run.stdout + run.stderr and "\x07" not in run.stdout


@pytest.mark.parametrize("folder", ["/etc", "-rf", "../../etc", "/"])
def test_training_folders_stay_inside_the_training_roots(ctx, folder):
    request = TrainingRequest(TrainConfig(dataset="folder", model="resnet18", data_path=Path(folder)))
    with pytest.raises(JobError, match="training folders must be inside|no training folder"):
        submit_training(ctx, request, start=False)


def test_an_option_like_value_stays_one_argument():
    argv = TrainConfig(dataset="folder", model="resnet18", data_path=Path("-rf")).to_argv()
    assert "--data-path=-rf" in argv and "-rf" not in argv


def test_free_text_is_capped(ctx):
    [result] = ingest_files([("ct.dcm", dicom_bytes("CT_small.dcm"))], ctx)
    with pytest.raises(InvalidReview, match="at most 4,000 characters"):
        add_review(ctx, result.case_id, "disagree", comment="x" * (MAX_COMMENT + 1))


def test_a_batch_over_its_total_keeps_the_files_before_the_limit(tmp_path):
    ctx = Context.open(Config(home=tmp_path / "home", data_dir=None, limits=Limits(max_batch_mb=1)))
    files = [("a.dcm", dicom_bytes("CT_small.dcm")), ("b.dcm", dicom_bytes("MR_small.dcm")),
             ("big.bin", bytes(1_100_000))]
    results = ingest_files(files, ctx)
    assert [r.status for r in results] == ["ok", "ok", "error"]
    assert results[2].error.startswith("TooLarge: this batch is over 1 MiB")


def test_streamlit_and_the_engine_agree_on_the_upload_limit():
    streamlit = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]["maxUploadSize"]
    assert streamlit == Limits().max_upload_mb
    serve = (ROOT / "dashboard" / "serve.py").read_text()
    assert '"--server.maxUploadSize", str(config.limits.max_upload_mb)' in serve


def test_make_clean_keeps_cases_reviews_audit_and_models():
    dry = subprocess.run(["make", "-n", "clean"], cwd=ROOT, capture_output=True, text=True).stdout
    assert ".venv" in dry and ".radlens" not in dry and "RADLENS_HOME" not in dry
