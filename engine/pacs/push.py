"""Send a case's results (SR, secondary captures, SEG) to the PACS its study came from, into that study.

Only a study that arrived from a PACS has an original-study link (engine.deid.link, sealed at ingest). The
push step opens it in memory, puts the original Patient/Study identity and the source image's UIDs back on a
copy of the stored image, builds the objects over that copy (engine.cases.results), sends them by STOW-RS
or C-STORE and forgets them: nothing identifying is written to the store, the files or the logs. The audit
row says who sent which kinds of object for which case to which node, and whether it worked.

After a review, a case is sent automatically when "send after review" is on (an administrator's setting):
a "send" job of the job machinery does it, so a slow PACS never holds up the reviewer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from engine.cases.results import OBJECT_KINDS, build_objects, case_results
from engine.cases.reviews import AFTER_REVIEW
from engine.context import Context
from engine.deid.link import reidentify, unseal
from engine.errors import NoStudyLink, PacsError, SendRefused, short_reason
from engine.jobs.queue import JobRun, run_job, submit
from engine.keys import secret_key
from engine.pacs.nodes import PacsNode, get_node, is_loopback_url
from engine.pacs.transports import choose_via, study_patient_ids, transport
from engine.store import Store
from engine.stored import stored_source

__all__ = ["SendReport", "send_case", "has_link", "send_after_review", "set_send_after_review",
           "queue_send_after_review", "install_after_review_hook",
           "run_send"]

_SETTING = "pacs_send_after_review"


@dataclass(frozen=True)
class SendReport:
    case_id: int
    node: str
    via: str
    objects: list[str]  # kinds sent (keys of engine.cases.results.OBJECT_KINDS)
    seconds: float


def has_link(store: Store, case_id: int) -> bool:
    """Whether the case came from a PACS (so its results can go back there)."""
    with store.read() as db:
        return db.execute("SELECT 1 FROM study_links l JOIN images i ON i.id = l.image_id WHERE i.case_id = ?",
                          [case_id]).fetchone() is not None


def _link(ctx: Context, image: dict) -> tuple[str, dict[str, str]]:
    with ctx.store.read() as db:
        row = db.execute("SELECT node, sealed FROM study_links WHERE image_id = ?", [image["id"]]).fetchone()
    if row is None:
        raise NoStudyLink(f"case {image['case_id']} was not retrieved from or pushed by a PACS, so there is no "
                          "original study to send its results to; download the DICOM objects instead")
    return row[0], unseal(secret_key(ctx.config.home, "pseudonym"), image["sha256"], row[1])


def _check_destination(ctx: Context, node: PacsNode, origin: str, via: str, original: dict[str, str]) -> None:
    """SendRefused unless the node may receive this study's re-identified results: it is the study's own node
    (or an administrator let it take other nodes' studies), the way there is not plain HTTP off this machine
    (unless allowed), and the node holds the study under the same patient right now."""
    if node.name != origin and not node.accepts_other_studies:
        raise SendRefused(f"the study came from {origin}; results go back only there (an administrator can let "
                          f"{node.name} take other nodes' studies)")
    if via == "dicomweb" and node.dicomweb_url.startswith("http://") and not is_loopback_url(node.dicomweb_url) \
            and not node.allow_plain_http:
        raise SendRefused(f"{node.name}'s DICOMweb URL is plain http://: re-identified results are sent over https "
                          "only (or an administrator allows plain HTTP for this node)")
    patients = study_patient_ids(ctx.config, node, original.get("StudyInstanceUID", ""), via)
    if not patients:
        raise SendRefused(f"{node.name} does not hold this case's original study: nothing was sent")
    if original.get("PatientID", "") not in patients:
        raise SendRefused(f"{node.name} holds this case's study under another patient: nothing was sent")


def send_case(ctx: Context, case_id: int, node_name: str | None = None, via: str | None = None) -> SendReport:
    """Build the case's result objects in its original study and store them on the PACS (default: the node
    the study came from). Audited, success or failure (a refusal too)."""
    ctx.require("pacs.send")
    started = time.perf_counter()
    results = case_results(ctx.store, case_id)
    origin, original = _link(ctx, results.image)
    node = get_node(ctx.store, node_name or origin)
    via = choose_via(node, via)
    detail = {"node": node.name, "via": via, "reviewed": results.review is not None}
    try:
        _check_destination(ctx, node, origin, via, original)
    except (SendRefused, PacsError) as error:
        ctx.log("pacs.send", "case", case_id, {**detail, "ok": False, "error": short_reason(error)})
        raise
    objects = build_objects(ctx.config, results, reidentify(stored_source(ctx.config, results.image), original))
    kinds = [o.kind for o in objects]
    detail["objects"] = kinds
    try:
        transport(node, via).store(ctx.config, node, [(OBJECT_KINDS[o.kind][0].lower(), o.dataset) for o in objects])
    except PacsError as error:
        ctx.log("pacs.send", "case", case_id, {**detail, "ok": False, "error": short_reason(error)})
        raise
    ctx.log("pacs.send", "case", case_id, {**detail, "ok": True})
    return SendReport(case_id, node.name, via, kinds, time.perf_counter() - started)


def send_after_review(store: Store) -> bool:
    return store.setting(_SETTING) == "on"


def set_send_after_review(ctx: Context, enabled: bool) -> None:
    ctx.require("pacs.configure")
    with ctx.store.write() as db:
        db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", [_SETTING, "on" if enabled else "off"])
        ctx.audit(db, "pacs.send_after_review", "setting", _SETTING, {"enabled": bool(enabled)})


def queue_send_after_review(ctx: Context, case_id: int, review_id: int) -> int | None:
    """After a review (engine.cases.reviews.AFTER_REVIEW): when "send after review" is on and the case came from a
    PACS, queue the sending of its results; returns the send job's id, or None."""
    if not (send_after_review(ctx.store) and has_link(ctx.store, case_id)):
        return None
    return submit(ctx, "send", config={"case_id": case_id}, detail={"case": case_id, "review": review_id})


def install_after_review_hook() -> None:
    """Send reviewed results back from now on (engine.cases.reviews.AFTER_REVIEW); once per process."""
    if queue_send_after_review not in AFTER_REVIEW:
        AFTER_REVIEW.append(queue_send_after_review)


def run_send(ctx: Context, job_id: int) -> dict:
    """Execute a send job in this process (its program: `python -m engine send --run JOB`)."""

    def work(run: JobRun) -> dict:
        case_id = run.job.config["case_id"]
        run.progress(phase=f"sending case #{case_id}", done=0, total=1)
        report = send_case(ctx.as_user(run.job.actor or ctx.actor), case_id)
        summary = {"case": case_id, "node": report.node, "via": report.via, "objects": report.objects}
        run.finish(summary)
        return summary

    return run_job(ctx, job_id, "send", work)
