"""Batch runs over real chest films: every item exactly once (a corrupt file fails alone; a worker or the whole
job killed and resumed), the same numbers as `classify`, the Ray backend equal to the local one, sources."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest

from engine.batch.backends import Shard, run_ray
from engine.batch.run import BatchRequest, batch_rows, batch_summary, run_batch, start_batch, worker_options
from engine.batch.sources import open_source
from engine.batch.work import Item
from engine.cases.ingest import ingest_files
from engine.context import Context, User
from engine.errors import BatchSourceError, JobError, PermissionDenied
from engine.jobs.queue import JobStatus, cancel_job, get_job, resume_job
from engine.stored import get_image
from engine.tasks.classification import diagnose_image, load_classifier
from tests.conftest import DATA_DIR, dicom_bytes, dicom_path, needs_data
from tests.hostile import deflate_bomb

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, needs_data]


def _films(n: int) -> list[Path]:
    with open(DATA_DIR / "cxr_pneumonia" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [DATA_DIR / "cxr_pneumonia" / r["path"] for r in rows[:n]]


def _folder(tmp_path: Path, n: int, corrupt: bool = False) -> Path:
    """n distinct real films (nested folders, as an archive is), plus three broken files when asked."""
    folder = tmp_path / "archive"
    for i, film in enumerate(_films(n)):
        target = folder / f"part{i % 3}" / f"film{i:04d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(film, target)
    if corrupt:
        (folder / "part0" / "broken-truncated.jpg").write_bytes(_films(1)[0].read_bytes()[:300])
        (folder / "part1" / "broken-noise.dcm").write_bytes(os.urandom(4096))
        (folder / "part2" / "broken-bomb.dcm").write_bytes(deflate_bomb(600 << 20))
    (folder / ".hidden").write_text("not an image, and hidden: never listed")
    return folder


def _rows(store, sql: str, params=()) -> list[tuple]:
    with store.read() as db:
        return db.execute(sql, list(params)).fetchall()


def _cli(*args: str, home: Path, wait: bool = True, **kw):
    env = {**os.environ, "RADLENS_HOME": str(home), "RADLENS_DATA_DIR": str(DATA_DIR), "TQDM_DISABLE": "1"}
    argv = [sys.executable, "-m", "engine", *args]
    if not wait:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, **kw)
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kw)


def _loaded_shards(store, job_id: int) -> int:
    return _rows(store, "SELECT count(*) FROM batch_shards WHERE job_id = ? AND status = 'loaded'", [job_id])[0][0]


def _wait(condition, seconds: float = 240.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _exactly_once(ctx: Context, job_id: int, n: int) -> None:
    """Every item once in the run's Parquet files, once in SQLite, with the same input hashes in both."""
    items = list(batch_rows(ctx, job_id))
    assert sorted(r["item"] for r in items) == list(range(n))
    stored = _rows(ctx.store, "SELECT item, input_sha256 FROM batch_results WHERE job_id = ?", [job_id])
    assert len(stored) == len({h for _, h in stored}) == n
    assert dict(stored) == {r["item"]: r["input_sha256"] for r in items}
    assert _rows(ctx.store, "SELECT count(*), sum(stop - start) FROM batch_shards WHERE job_id = ? AND status = "
                            "'loaded'", [job_id])[0][1] == n


def test_a_batch_with_corrupt_files_lands_the_rest_with_the_numbers_classify_gives(ctx, tmp_path):
    folder = _folder(tmp_path, 297, corrupt=True)
    job_id = start_batch(ctx, BatchRequest(str(folder), shard_size=64, workers=2), background=False)
    summary = run_batch(ctx, job_id)

    assert summary["status"] == "finished" and summary["items"] == 300 and summary["shards"] == 5
    assert summary["analysed"] + summary["not_analysed"] == 297 and summary["failed"] == 3
    assert _rows(ctx.store, "SELECT count(*) FROM batch_results")[0][0] == 297
    reasons = _rows(ctx.store, "SELECT reason FROM batch_failures WHERE job_id = ?", [job_id])
    assert len(reasons) == 3 and all(r[0] and "\n" not in r[0] and "Traceback" not in r[0] for r in reasons)
    assert any("TooLarge" in r[0] or "stopped" in r[0] for r in reasons), reasons  # the bomb, refused alone

    # No path or file name reaches the store: items are known by index, files by content.
    dump = "\n".join((ctx.config.home / "radlens.db").read_bytes().decode("latin-1").split("\0"))
    assert "film0001" not in dump and "broken-noise" not in dump and "part1" not in dump

    # The same images through the case path (ingest + diagnose, what `classify` does) give the same result.
    classifier = load_classifier(ctx)
    by_item = {r["item"]: r for r in batch_rows(ctx, job_id, with_paths=True)}
    checked = 0
    for item in range(0, 300, 20):
        row = by_item[item]
        if row["status"] == "error":
            continue
        landed = ingest_files([(row["path"], Path(row["path"]).read_bytes())], ctx)[0]
        case = diagnose_image(ctx, classifier, get_image(ctx.store, landed.image_id))
        assert row["label"] == case.raw.label and case.verdict.status == row["status"]
        assert row["probability"] == pytest.approx(case.raw.probability, abs=1e-5)
        assert row["ood_score"] == pytest.approx(case.raw.ood_score, rel=1e-4)
        checked += 1
    assert checked >= 12

    # A second run over the same archive adds no row: the results are keyed by content and weights.
    again = run_batch(ctx, start_batch(ctx, BatchRequest(str(folder), shard_size=100, workers=1), background=False))
    assert again["new_rows"] == 0 and again["already_known"] == 297 and again["failed"] == 3
    assert _rows(ctx.store, "SELECT count(*) FROM batch_results")[0][0] == 297


def test_a_worker_killed_mid_shard_leaves_every_image_exactly_once(ctx, tmp_path):
    folder = _folder(tmp_path, 120)
    job_id = start_batch(ctx, BatchRequest(str(folder), shard_size=10, workers=2, batch_size=4), background=True)
    _wait(lambda: get_job(ctx.store, job_id).pid and _loaded_shards(ctx.store, job_id) >= 1)
    driver = psutil.Process(get_job(ctx.store, job_id).pid)
    workers = [p for p in driver.children() if "engine.io.sandbox" not in " ".join(p.cmdline())
               and "resource_tracker" not in " ".join(p.cmdline())]
    assert workers, "the local backend runs its workers as child processes"
    workers[0].send_signal(signal.SIGKILL)  # mid-shard: each of its shards takes seconds
    _wait(lambda: not get_job(ctx.store, job_id).active)

    assert get_job(ctx.store, job_id).status is JobStatus.FINISHED
    _exactly_once(ctx, job_id, 120)
    assert "a worker process died" in (ctx.config.log_dir / "radlens.log").read_text()  # it died and was replaced


def test_the_whole_job_killed_then_resumed_keeps_what_it_loaded_and_finishes_exactly_once(ctx, tmp_path):
    folder = _folder(tmp_path, 120)
    run = _cli("batch", str(folder), "--shard-size", "10", "--workers", "2", "--batch-size", "4",
               home=ctx.config.home, wait=False)
    _wait(lambda: _rows(ctx.store, "SELECT count(*) FROM jobs")[0][0] and _loaded_shards(ctx.store, 1) >= 2)
    os.killpg(run.pid, signal.SIGKILL)  # the driver and its workers, as a power cut would
    run.wait()
    before = dict(_rows(ctx.store, "SELECT shard, loaded_at FROM batch_shards WHERE status = 'loaded'"))
    assert get_job(ctx.store, 1).status is JobStatus.INTERRUPTED and 2 <= len(before) < 12

    done = _cli("batch", "--resume", "1", "--json", home=ctx.config.home)
    assert done.returncode == 0, done.stdout + done.stderr
    after = dict(_rows(ctx.store, "SELECT shard, loaded_at FROM batch_shards WHERE status = 'loaded'"))
    assert len(after) == 12 and all(after[s] == t for s, t in before.items())  # loaded shards were not redone
    _exactly_once(ctx, 1, 120)


def test_cancel_stops_the_workers_and_resume_completes_the_run(ctx, tmp_path):
    folder = _folder(tmp_path, 60)
    job_id = start_batch(ctx, BatchRequest(str(folder), shard_size=10, workers=2, batch_size=4), background=True)
    _wait(lambda: get_job(ctx.store, job_id).pid and _loaded_shards(ctx.store, job_id) >= 1)
    driver = psutil.Process(get_job(ctx.store, job_id).pid)
    family = [driver, *driver.children(recursive=True)]
    cancel_job(ctx, job_id)
    _wait(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family), 60)
    assert get_job(ctx.store, job_id).status is JobStatus.CANCELLED
    resume_job(ctx, job_id)
    _wait(lambda: not get_job(ctx.store, job_id).active)
    assert get_job(ctx.store, job_id).status is JobStatus.FINISHED
    _exactly_once(ctx, job_id, 60)


def test_the_ray_backend_gives_the_same_rows_as_the_local_one(ctx, tmp_path):
    folder = _folder(tmp_path, 40, corrupt=True)
    local = start_batch(ctx, BatchRequest(str(folder), shard_size=16, workers=2, cam=True), background=False)
    run_batch(ctx, local)
    distributed = start_batch(ctx, BatchRequest(str(folder), shard_size=16, workers=2, cam=True, backend="ray"),
                              background=False)
    summary = run_batch(ctx, distributed)
    assert summary["status"] == "finished" and summary["failed"] == 3 and summary["new_rows"] == 0

    a, b = list(batch_rows(ctx, local)), list(batch_rows(ctx, distributed))
    assert [r["item"] for r in a] == [r["item"] for r in b] == list(range(43))
    for x, y in zip(a, b):
        assert (x["status"], x["label"], x["input_sha256"], x["status_reason"]) == \
            (y["status"], y["label"], y["input_sha256"], y["status_reason"])
        if x["probability"] is not None:
            assert x["probability"] == pytest.approx(y["probability"], abs=1e-6)
    overlays = _rows(ctx.store, "SELECT overlay_png FROM batch_results WHERE status = 'analysed'")
    assert overlays and all(o[0][:8] == b"\x89PNG\r\n\x1a\n" for o in overlays)  # --cam keeps each overlay

    # The GPU layout (decoding in CPU tasks, the model in actors), here on CPUs: the same rows again.
    job = get_job(ctx.store, local)
    source = open_source(folder)
    shards = [Shard(n, tuple(Item(n, i, source.names[i]) for i in range(a, b)))
              for n, a, b in _rows(ctx.store, "SELECT shard, start, stop FROM batch_shards WHERE job_id = ?", [local])]
    split = sorted((r for s in run_ray(shards, worker_options(job.config, ctx), 2, split=True) for r in s.rows),
                   key=lambda r: r["item"])
    def key(r):  # batch_rows shows an abstention without its label; the raw rows keep it
        return r["item"], r["status"], r["label"] if r["status"] == "analysed" else None, r["input_sha256"]
    assert [key(r) for r in split] == [key(r) for r in a]


def test_a_ray_actor_killed_mid_run_is_restarted_and_every_image_lands_once(ctx, tmp_path):
    folder = _folder(tmp_path, 96)
    run = _cli("batch", str(folder), "--backend", "ray", "--shard-size", "8", "--workers", "2", "--batch-size",
               "4", home=ctx.config.home, wait=False)
    _wait(lambda: _rows(ctx.store, "SELECT count(*) FROM jobs")[0][0] and _loaded_shards(ctx.store, 1) >= 1)
    actors = [p for p in psutil.process_iter(["cmdline"]) if "_RayAnalyser" in " ".join(p.info["cmdline"] or [])]
    assert actors, "Ray runs the model in actor processes"
    actors[0].send_signal(signal.SIGKILL)
    assert run.wait(timeout=300) == 0, run.stdout.read().decode()[-2000:]
    assert get_job(ctx.store, 1).status is JobStatus.FINISHED
    _exactly_once(ctx, 1, 96)


def test_a_segmentation_batch_measures_each_head(ctx, tmp_path):
    with open(DATA_DIR / "hc18" / "manifest.csv", newline="") as f:
        chosen = [r for r in csv.DictReader(f) if r["split"] == "test"][:6]
    archive = tmp_path / "heads.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for r in chosen:
            z.write(DATA_DIR / "hc18" / r["image"], f"us/{Path(r['image']).name}")
    # A pixel size of 1 mm: the circumference comes out in the images' own pixels, comparable across images.
    summary = run_batch(ctx, start_batch(ctx, BatchRequest(str(archive), task="segmentation", pixel_mm=1.0,
                                                           workers=1), background=False))
    assert summary["analysed"] == 6
    rows = _rows(ctx.store, "SELECT item, circumference, unit, spacing_source FROM batch_results ORDER BY item")
    errors = [abs(c / (float(r["head_circumference_mm"]) / float(r["pixel_size_mm"])) - 1)
              for (_, c, _, _), r in zip(rows, chosen)]
    assert sorted(errors)[3] < 0.05 and max(errors) < 0.15, errors  # the model's error on held-out images
    assert {(u, s) for _, _, u, s in rows} == {("mm", "entered by the user")}


def test_on_request_the_analysed_images_become_cases_with_their_result_logged_once(ctx, tmp_path):
    folder = _folder(tmp_path, 6, corrupt=True)
    researcher = Context(ctx.config, ctx.store, User("local:r", "R", "researcher"))
    with pytest.raises(PermissionDenied):  # a researcher may run batches, not add cases
        start_batch(researcher, BatchRequest(str(folder), cases=True))
    job_id = start_batch(ctx, BatchRequest(str(folder), workers=1, cases=True), background=False)
    summary = run_batch(ctx, job_id)
    assert summary["analysed"] + summary["not_analysed"] == 6 and summary["failed"] == 3
    logged = _rows(ctx.store, "SELECT p.case_id, p.label, p.probability, b.label, b.probability FROM predictions p "
                              "JOIN batch_results b ON b.image_id = p.image_id")
    assert len(logged) == 6 and len({r[0] for r in logged}) == 6
    assert all(r[1] == r[3] and r[2] == pytest.approx(r[4]) for r in logged)
    assert _rows(ctx.store, "SELECT count(*) FROM cases")[0][0] == 6  # the broken files did not become cases
    # Run again over the same files: no second case, no second logged result.
    run_batch(ctx, start_batch(ctx, BatchRequest(str(folder), workers=1, cases=True), background=False))
    assert _rows(ctx.store, "SELECT count(*) FROM predictions")[0][0] == 6
    assert _rows(ctx.store, "SELECT count(*) FROM cases")[0][0] == 6


def test_sources_list_in_a_fixed_order_and_a_changed_source_is_refused(ctx, tmp_path):
    folder = _folder(tmp_path, 5)
    source = open_source(folder)
    assert source.kind == "folder" and len(source) == 5 and ".hidden" not in source.names
    assert open_source(folder).fingerprint == source.fingerprint

    table = pa.table({"path": [str(folder / n) for n in source.names], "label": ["x"] * 5})
    pq.write_table(table, tmp_path / "m.parquet")
    assert open_source(tmp_path / "m.parquet").kind == "manifest"
    (tmp_path / "bad.csv").write_text("file,label\na.png,x\n")
    with pytest.raises(BatchSourceError, match="no 'path' column"):
        open_source(tmp_path / "bad.csv")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("a/b.jpg", _films(1)[0].read_bytes())
    (tmp_path / "a.zip").write_bytes(buffer.getvalue())
    assert open_source(tmp_path / "a.zip").names == ("a/b.jpg",)

    job_id = start_batch(ctx, BatchRequest(str(folder), shard_size=2), background=False)
    shutil.copyfile(_films(6)[5], folder / "part0" / "new.jpg")
    with pytest.raises(Exception, match="the source changed"):
        run_batch(ctx, job_id)


def test_who_may_run_a_batch_and_where(ctx, tmp_path):
    folder = _folder(tmp_path, 3)
    admin = Context(ctx.config, ctx.store, User("local:root", "Root", "admin"))
    with pytest.raises(PermissionDenied):
        start_batch(admin, BatchRequest(str(folder)))
    researcher = Context(ctx.config, ctx.store, User("local:r", "R", "researcher"))
    with pytest.raises(BatchSourceError, match="RADLENS_BATCH_ROOTS"):
        start_batch(researcher, BatchRequest(str(folder)))  # a signed-in user reads only under the batch roots
    inbox = ctx.config.home / "batch" / "archive"
    shutil.copytree(folder, inbox)
    assert start_batch(researcher, BatchRequest(str(inbox)), background=False) > 0
    (tmp_path / "escape.csv").write_text(f"path\n{folder / 'part0' / 'film0000.jpg'}\n")
    shutil.copyfile(tmp_path / "escape.csv", ctx.config.home / "batch" / "escape.csv")
    with pytest.raises(BatchSourceError, match="outside the folders"):
        start_batch(researcher, BatchRequest(str(ctx.config.home / "batch" / "escape.csv")))


def test_links_out_of_the_batch_folders_repeated_manifest_rows_and_oversized_runs_are_refused(ctx, tmp_path):
    outside = _folder(tmp_path, 2)
    researcher = Context(ctx.config, ctx.store, User("local:r", "R", "researcher"))
    inbox = ctx.config.home / "batch" / "linked"
    inbox.mkdir(parents=True)
    shutil.copyfile(outside / "part0" / "film0000.jpg", inbox / "mine.jpg")
    (inbox / "theirs.jpg").symlink_to(outside / "part1" / "film0001.jpg")  # a link inside, to a file outside
    with pytest.raises(BatchSourceError, match="links to such files"):
        start_batch(researcher, BatchRequest(str(inbox)))
    (inbox / "theirs.jpg").unlink()
    job_id = start_batch(researcher, BatchRequest(str(inbox), workers=1), background=False)
    (inbox / "mine.jpg").unlink()  # replaced by a link out after the listing: refused when read
    (inbox / "mine.jpg").symlink_to(outside / "part1" / "film0001.jpg")
    from engine.batch.work import Decoder

    with pytest.raises(BatchSourceError, match="outside the folders"):
        Decoder(worker_options(get_job(ctx.store, job_id).config, ctx)).decode(Item(0, 0, "mine.jpg"), {})
    manifest = ctx.config.home / "batch" / "same.csv"
    manifest.write_text("path\n" + "linked/mine.jpg\n" * 100_000)  # one file named 100,000 times
    assert open_source(manifest).names == ("linked/mine.jpg",)
    many = ctx.config.home / "batch" / "many"
    many.mkdir()
    for i in range(4):
        shutil.copyfile(outside / "part0" / "film0000.jpg", many / f"{i}.jpg")
    small = Context(dataclasses.replace(ctx.config, batch_max_items=3), ctx.store, ctx.user)
    with pytest.raises(BatchSourceError, match="at most 3 .*RADLENS_BATCH_MAX_ITEMS"):
        start_batch(small, BatchRequest(str(many)))


def test_files_replaced_under_the_same_names_never_get_the_old_results(ctx, tmp_path):
    """Cancel, replace the files, resume: the run refuses the changed source; and a result is landed on a case
    only for the very input it was computed on."""
    from engine.batch.cases import land_as_cases

    folder = _folder(tmp_path, 2)
    job_id = start_batch(ctx, BatchRequest(str(folder), workers=1, cases=True), background=False)
    films = _films(4)
    for name in ("part0/film0000.jpg", "part1/film0001.jpg"):  # same names, other films (other sizes)
        shutil.copyfile(films[2 if name.startswith("part0") else 3], folder / name)
    with pytest.raises(JobError, match="the source changed .* replaced"):
        run_batch(ctx, job_id)
    assert _rows(ctx.store, "SELECT count(*) FROM cases")[0][0] == 0

    fresh = start_batch(ctx, BatchRequest(str(folder), workers=1), background=False)
    run_batch(ctx, fresh)
    rows = [{**r, "overlay_png": None} for r in batch_rows(ctx, fresh)]
    job = get_job(ctx.store, fresh)
    shutil.copyfile(films[0], folder / "part0" / "film0000.jpg")  # replaced again after the analysis
    landed = land_as_cases(ctx, fresh, job.config, open_source(folder).names, rows)
    assert landed == 1  # only the file that is still what was analysed
    assert _rows(ctx.store, "SELECT count(*) FROM predictions")[0][0] == 1


def test_cli_batch_writes_results_with_paths(ctx, tmp_path):
    folder = _folder(tmp_path, 8, corrupt=True)
    shutil.copyfile(dicom_path("CT_small.dcm"), folder / "part0" / "ct.dcm")  # outside the classifier's scope
    done = _cli("batch", str(folder), "--workers", "1", home=ctx.config.home)
    assert done.returncode == 1, done.stdout + done.stderr  # three files failed: the exit code says so
    assert "12 items, 8 analysed, 1 not analysed" in done.stdout and "3 failed" in done.stdout
    out = tmp_path / "results.csv"
    assert _cli("batch", "--results", "1", "--out", str(out), home=ctx.config.home).returncode == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12 and {r["status"] for r in rows} == {"analysed", "not_analysed", "error"}
    assert all(Path(r["path"]).is_file() for r in rows) and batch_summary(ctx.store, 1)["failed"] == 3
    (ct,) = [r for r in rows if r["path"].endswith("ct.dcm")]
    assert (ct["status"], ct["label"], ct["probability"]) == ("not_analysed", "", "")  # no result outside scope
    assert ct["status_reason"].startswith("not analysed: outside what this model was trained on (modality CT")


def test_the_gpu_check_runs_its_code_on_a_cpu(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench.gpu", "--device", "cpu", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "RADLENS_DATA_DIR": str(DATA_DIR), "OUT": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report == json.loads((tmp_path / "gpu.json").read_text())
    checks = report["checks"]
    assert checks["device_selection"]["ok"] and checks["channels_last"]["ok"], checks
    assert all(checks[c]["detail"] == "skipped: no CUDA" for c in ("amp", "oom_message", "ddp_nccl"))
    assert report["classification"]["cam_batch_8"]["images_per_s"] > 0
    assert report["segmentation"]["gpu_forward_only_batch_64"]["images_per_s"] > 0
    assert report["training"]["images_per_s"] > 0
    assert report["batch_engine"]["failed"] == 0 and report["batch_engine"]["films"] == 32


def test_batch_results_csv_is_defused_and_paths_are_shown_to_the_owner_and_clinicians_only(ctx, tmp_path):
    from engine.batch.run import HIDDEN_PATH, write_results_csv

    folder = ctx.config.home / "batch" / "Doe_Jane_chest"  # under the batch folders a signed-in user may use
    folder.mkdir(parents=True)
    hostile = pydicom.dcmread(io.BytesIO(dicom_bytes("CT_small.dcm")))
    hostile.BodyPartExamined = '=HYPERLINK("http://example.invalid","x")'
    hostile.save_as(folder / "Doe_Jane.dcm", enforce_file_format=True)
    owner = ctx.as_user(User("local:rita", "Rita", "researcher"))
    job_id = start_batch(owner, BatchRequest(str(folder), workers=1), background=False)
    run_batch(owner, job_id)

    def exported(who: Context) -> str:
        buffer = io.StringIO()
        assert write_results_csv(who, job_id, buffer) == 1
        return buffer.getvalue()

    mine = exported(owner)
    assert "'=HYPERLINK" in mine and ",=HYPERLINK" not in mine  # a spreadsheet shows it as text
    assert "Doe_Jane.dcm" in mine and "Doe_Jane.dcm" in exported(ctx.as_user(User("local:c", "C", "clinician")))
    other = exported(ctx.as_user(User("local:r2", "R2", "researcher")))
    assert "Doe_Jane" not in other and HIDDEN_PATH in other
