"""PACS round trips against a real Orthanc (Debian's, started as in the tests) and RadLens' listener process:

- find: one study search, QIDO-RS vs C-FIND (p50 over --repeats);
- pull: one CR study (one instance) into the store, WADO-RS vs C-GET (p50; each pull into a fresh home);
- push to analysed: Orthanc pushes one CR study to `python -m engine listen`; time until its prediction row
  exists (quiet period RADLENS_DICOM_QUIET_S=1, then the analysis job's process start, model load, forward);
- scale: 100 instances (4 studies x 25) sent at once over 4 concurrent associations: instances/s, every
  instance stored exactly once, failures, and the worklist query's latency during the push vs idle (the
  dashboard's responsiveness);
- round trip: one CR study pulled (WADO-RS) -> analysed -> its SR + secondary capture sent back (STOW-RS or
  C-STORE) into the original study, each step timed. "dashboard": the classifier already loaded, as in the
  serving process; "job": the product's automatic path, the analysis job's own process (start, model load);
- dciodvfy over every object type sent (errors and warnings per type).

Run: python -m bench.pacs [--repeats 7]   (needs Orthanc + orthanc-dicomweb and $RADLENS_DATA_DIR)
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage

from bench.common import report
from engine.cases.worklist import WorklistQuery, list_worklist
from engine.config import Config, DicomSettings
from engine.context import Context, User
from engine.pacs.nodes import PacsNode, save_credentials, save_node
from engine.pacs.studies import pull
from engine.pacs.transports import StudyQuery, find
from engine.store import open_store
from tests import orthanc as pacs
from tests.orthanc import STUDY_UID, chest_study

ROOT = Path(__file__).resolve().parent.parent


def _ctx(home: Path, listener_port: int) -> Context:
    config = Config(home=home, data_dir=Config.from_env().data_dir, dicom=DicomSettings(port=listener_port))
    return Context(config, open_store(config), User("cli:bench", "bench", "system"))


def _with_node(ctx: Context, server) -> Context:
    save_node(ctx, PacsNode("orthanc", server.dicomweb, pacs.AE_TITLE, "127.0.0.1", server.dicom_port))
    save_credentials(ctx, "orthanc", pacs.USER, pacs.PASSWORD)
    return ctx


def _p50(samples: list[float]) -> dict:
    return {"p50_ms": round(statistics.median(samples) * 1000, 1), "min_ms": round(min(samples) * 1000, 1),
            "max_ms": round(max(samples) * 1000, 1), "n": len(samples)}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _listener(home: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "RADLENS_HOME": str(home), "RADLENS_DICOM_PORT": str(port), "RADLENS_DICOM_QUIET_S": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "engine", "listen"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert "DICOM listener" in proc.stdout.readline()
    return proc


def _wait_for(ctx: Context, sql: str, want: int, seconds: float = 300) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        with ctx.store.read() as db:
            if db.execute(sql).fetchone()[0] >= want:
                return time.perf_counter() - start
        time.sleep(0.05)
    raise TimeoutError(sql)


def _scale(work: Path, server, port: int) -> dict:
    ctx = _with_node(_ctx(work / "scale", port), server)
    listener = _listener(ctx.config.home, port)
    studies = [[pydicom.dcmread(io.BytesIO(b)) for b in chest_study(25, f"1.2.826.0.1.3680043.9.4417.5{k}")]
               for k in range(4)]
    idle = [_timed(lambda: list_worklist(ctx, WorklistQuery())) for _ in range(20)]
    busy, statuses, done = [], [], threading.Event()

    def send(datasets) -> None:
        ae = AE(ae_title=pacs.AE_TITLE)
        ae.add_requested_context(ComputedRadiographyImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title="RADLENS")
        statuses.extend(assoc.send_c_store(ds).Status for ds in datasets)
        assoc.release()

    def poll() -> None:
        while not done.is_set():
            busy.append(_timed(lambda: list_worklist(ctx, WorklistQuery())))
            time.sleep(0.1)

    try:
        watcher = threading.Thread(target=poll)
        watcher.start()
        start = time.perf_counter()
        senders = [threading.Thread(target=send, args=(s,)) for s in studies]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        seconds = time.perf_counter() - start
        done.set()
        watcher.join()
        analysed = _wait_for(ctx, "SELECT COUNT(DISTINCT case_id) FROM predictions", 4)
    finally:
        listener.terminate()
        listener.wait(10)
    with ctx.store.read() as db:
        images, distinct = db.execute("SELECT COUNT(*), COUNT(DISTINCT sha256) FROM images").fetchone()
        cases = db.execute("SELECT COUNT(*) FROM cases").fetchone()[0]
    return {"instances": 100, "associations": 4, "seconds": round(seconds, 2),
            "instances_per_s": round(100 / seconds, 1), "success_statuses": sum(s == 0 for s in statuses),
            "stored_images": images, "distinct_images": distinct, "cases": cases,
            "all_four_studies_analysed_after_s": round(seconds + analysed, 1),
            "worklist_query_idle": _p50(idle), "worklist_query_during_push": _p50(busy)}


def _round_trip(work: Path, server, port: int, via: str, background: bool, classifier, i: int) -> dict:
    from engine.pacs.push import send_case
    from engine.pacs.routing import set_routing
    from engine.stored import get_case
    from engine.tasks.classification import diagnose_image

    ctx = _with_node(_ctx(work / f"trip-{via}-{background}-{i}", port), server)
    if not background:
        set_routing(ctx, "classification", False)  # analysed here, by the loaded classifier
    start = time.perf_counter()
    report_ = pull(ctx, "orthanc", STUDY_UID, "dicomweb", series_uid=f"{STUDY_UID}.1")
    pulled = time.perf_counter()
    if background:
        _wait_for(ctx, "SELECT COUNT(*) FROM predictions", 1)
    else:
        diagnose_image(ctx, classifier, get_case(ctx.store, report_.case_ids[0])["images"][0])
    analysed = time.perf_counter()
    sent = send_case(ctx, report_.case_ids[0], via=via)
    end = time.perf_counter()
    return {"pull": pulled - start, "analyse": analysed - pulled, "send": end - analysed, "total": end - start,
            "objects": sent.objects}


def _round_trips(work: Path, server, port: int, repeats: int) -> dict:
    from engine.tasks.classification import load_classifier

    classifier = load_classifier(_ctx(work / "classifier", port))
    out = {}
    for via in ("dicomweb", "dimse"):
        for background in (False, True):
            runs = [_round_trip(work, server, port, via, background, classifier, i)
                    for i in range(repeats if not background else max(3, repeats // 2))]
            out[f"{'job' if background else 'dashboard'}_send_{via}"] = {
                step: _p50([r[step] for r in runs]) for step in ("pull", "analyse", "send", "total")}
    return out


def _conformance(work: Path, server) -> dict:
    """dciodvfy over the objects as stored in Orthanc (errors, warnings per object type)."""
    import re
    import shutil

    if shutil.which("dciodvfy") is None:
        return {"skipped": "dciodvfy not installed"}
    out = {}
    names = {"1.2.840.10008.5.1.4.1.1.88.33": "comprehensive SR", "1.2.840.10008.5.1.4.1.1.7": "secondary capture",
             "1.2.840.10008.5.1.4.1.1.66.4": "segmentation"}
    for instance in server.rest("GET", "/instances"):
        tags = server.rest("GET", f"/instances/{instance}/simplified-tags")
        kind = names.get(tags.get("SOPClassUID"))
        if not kind or kind in out:
            continue
        path = work / f"{instance}.dcm"
        path.write_bytes(server.raw(f"/instances/{instance}/file"))
        run = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60)
        lines = (run.stdout + run.stderr).splitlines()
        out[kind] = {"errors": sum(line.startswith("Error") for line in lines),
                     "warnings": sum(line.startswith("Warning") for line in lines),
                     "warning_kinds": sorted({re.sub(r"^Warning - </?[^>]*> - ", "", w)[:70] for w in lines
                                              if w.startswith("Warning")})[:6]}
    return out


def _head_measurement_sent(work: Path, server, port: int) -> None:
    """A fetal-head study pulled, segmented and sent back, so its SEG is among the objects checked."""
    from engine.pacs.push import send_case
    from engine.stored import get_case
    from engine.tasks.segmentation import load_segmenter, segment_case_image
    from tests.orthanc import head_study

    data = head_study()
    ds = pydicom.dcmread(io.BytesIO(data))
    server.upload(data)
    ctx = _with_node(_ctx(work / "head", port), server)
    report_ = pull(ctx, "orthanc", ds.StudyInstanceUID, "dicomweb")
    segment_case_image(ctx, load_segmenter(ctx), get_case(ctx.store, report_.case_ids[0])["images"][0])
    send_case(ctx, report_.case_ids[0])


def main(args) -> None:
    port = pacs.free_port()
    server = pacs.Orthanc("RADLENS", port)
    try:
        server.upload(chest_study()[0])
        with tempfile.TemporaryDirectory() as folder:
            work = Path(folder)
            ctx = _with_node(_ctx(work / "find", port), server)
            node = PacsNode("orthanc", server.dicomweb, pacs.AE_TITLE, "127.0.0.1", server.dicom_port)
            finds = {via: _p50([_timed(lambda v=via: find(ctx.config, node, StudyQuery(modality="CR"), v))
                                for _ in range(args.repeats)]) for via in ("dicomweb", "dimse")}
            pulls = {via: _p50([_timed(lambda v=via, i=i: pull(_with_node(_ctx(work / f"pull-{v}-{i}", port), server),
                                                                "orthanc", STUDY_UID, v))
                                for i in range(args.repeats)]) for via in ("dicomweb", "dimse")}
            pushes = []
            for i in range(max(3, args.repeats // 2)):
                pushed = _with_node(_ctx(work / f"push-{i}", port), server)
                listener = _listener(pushed.config.home, port)
                try:
                    [study] = server.rest("POST", "/tools/find", {"Level": "Study", "Query": {}})
                    start = time.perf_counter()
                    server.rest("POST", "/modalities/radlens/store", {"Resources": [study], "Synchronous": True})
                    _wait_for(pushed, "SELECT COUNT(*) FROM predictions", 1)
                    pushes.append(time.perf_counter() - start)
                finally:
                    listener.terminate()
                    listener.wait(10)
            scale = _scale(work, server, port)
            trips = _round_trips(work, server, port, args.repeats)
            _head_measurement_sent(work, server, port)
            conformance = _conformance(work, server)
    finally:
        server.stop()
    report("pacs", {"orthanc": "Debian orthanc 1.10.1 + orthanc-dicomweb, on this machine",
                    "find_one_study": finds, "pull_one_cr_study": pulls,
                    "push_to_analysed_one_cr_study": {**_p50(pushes), "quiet_seconds": 1},
                    "push_100_instances_4_associations": scale,
                    "round_trip_pull_analyse_send_one_cr_study": trips, "dciodvfy_of_objects_sent": conformance,
                    "command": f"python -m bench.pacs --repeats {args.repeats}"})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    main(parser.parse_args())
