"""`python -m engine pacs ...`, `python -m engine listen` and `python -m engine send`:
PACS nodes, echo, find, pull, push and routing from the shell, the DICOM listener alone, and the program of
the send job (the analysis job's is `python -m engine analyse --run N`)."""

from __future__ import annotations

import argparse
import json
import signal
from dataclasses import asdict

from engine.cases.results import OBJECT_KINDS
from engine.context import Context, User
from engine.errors import InvalidOption
from engine.identity.commands import read_password
from engine.pacs.nodes import PacsNode, list_nodes, remove_node, save_credentials, save_node
from engine.pacs.push import run_send, send_after_review, send_case, set_send_after_review
from engine.pacs.routing import routing_rules, set_routing
from engine.pacs.studies import pull, search, test_connection
from engine.pacs.transports import VIAS, StudyQuery

__all__ = ["add_parsers", "COMMANDS"]


def _add(args, ctx: Context) -> int:
    node = save_node(ctx, PacsNode(args.name, args.url or "", args.ae or "", args.host or "", args.port or 0,
                                   args.allow_plain_http, args.accepts_other_studies, args.tls))
    if args.username:
        save_credentials(ctx, node.name, args.username, read_password(args))
    ways = ([f"DICOMweb {node.dicomweb_url}"] if node.web else []) + \
        ([f"DIMSE {node.ae_title}@{node.host}:{node.port}"] if node.dimse else [])
    print(f"saved {node.name}: {' and '.join(ways)}")
    return 0


def _list(args, ctx: Context) -> int:
    for node in list_nodes(ctx.store):
        print(json.dumps(asdict(node)) if args.json else
              f"{node.name:16} {node.dicomweb_url or '-':40} {node.ae_title or '-':16} "
              f"{f'{node.host}:{node.port}' if node.dimse else '-'}")
    return 0


def _echo(args, ctx: Context) -> int:
    report = test_connection(ctx, args.node)
    for via, result in report.results.items():
        print(f"{via:9} {result}")
    return 0 if report.ok else 1


def _find(args, ctx: Context) -> int:
    query = StudyQuery(args.date_from or "", args.date_to or "", args.modality or "", args.accession or "",
                       args.patient_id or "", args.patient_name or "", args.limit)
    matches = search(ctx, args.node, query, args.via)
    for m in matches:
        print(json.dumps(asdict(m)) if args.json else
              f"{m.study_date:8}  {m.modalities:8}  {m.patient_name[:24]:24}  {m.patient_id[:16]:16}  "
              f"{m.accession[:16]:16}  {m.description[:30]:30}  {m.study_uid}")
    if not args.json:
        print(f"{len(matches)} stud{'y' if len(matches) == 1 else 'ies'} (shown here only; nothing was stored)")
    return 0


def _pull(args, ctx: Context) -> int:
    def progress(done: int, total: int | None, result) -> None:
        if not args.json:
            print(f"{done}/{total or '?'}  {result.status:9} {result.error or f'case {result.case_id}'}", flush=True)

    report = pull(ctx, args.node, args.study, args.via, progress, args.series or "")
    summary = {"node": report.node, "via": report.via, "instances": len(report.results), "landed": report.landed,
               "failed": [r.error for r in report.results if not r.ok], "cases": report.case_ids,
               "analysis_job": report.job_id, "error": report.error}
    print(json.dumps(summary) if args.json else
          f"{report.landed} of {len(report.results)} instances landed in case(s) {report.case_ids}; "
          + (f"analysis job {report.job_id} queued" if report.job_id else "no model applies: stored, not analysed")
          + (f"; stopped early: {report.error}" if report.error else ""))
    return 1 if report.error or report.landed < len(report.results) else 0


def _remove(args, ctx: Context) -> int:
    remove_node(ctx, args.name)
    print(f"removed {args.name}")
    return 0


def _routing(args, ctx: Context) -> int:
    if args.task:
        if args.state is None:
            raise InvalidOption("pacs routing TASK needs on or off")
        set_routing(ctx, args.task, args.state == "on")
    for task, enabled in routing_rules(ctx.store).items():
        print(f"{task:16} {'on' if enabled else 'off'}")
    return 0


def _push(args, ctx: Context) -> int:
    report = send_case(ctx, args.case, args.node, args.via)
    summary = {"case": report.case_id, "node": report.node, "via": report.via, "objects": report.objects,
               "seconds": round(report.seconds, 2)}
    print(json.dumps(summary) if args.json else
          f"sent {', '.join(OBJECT_KINDS[k][0] for k in report.objects)} of case {report.case_id} to {report.node} "
          f"({report.via}, {report.seconds:.1f} s)")
    return 0


def _send_after_review(args, ctx: Context) -> int:
    if args.state:
        set_send_after_review(ctx, args.state == "on")
    print(f"send results to the source PACS after each review: {'on' if send_after_review(ctx.store) else 'off'}")
    return 0


_ACTIONS = {"add": _add, "list": _list, "remove": _remove, "echo": _echo, "find": _find, "pull": _pull,
            "routing": _routing, "push": _push, "send-after-review": _send_after_review}


def _pacs(args, ctx: Context) -> int:
    return _ACTIONS[args.action](args, ctx)


def _listen(args, ctx: Context) -> int:
    from engine.pacs.listener import Listener

    if ctx.config.dicom.port == 0 and args.port is None:
        print("DICOM listener off (RADLENS_DICOM_PORT=0)")
        return 0
    # Audit rows of what arrives name the listener (and, in their detail, the AE title that pushed).
    ctx = ctx.as_user(User(f"dicom-listener:{ctx.config.dicom.ae_title}", "DICOM listener", "system"))
    listener = Listener(ctx).start(port=args.port)
    signal.signal(signal.SIGTERM, lambda *_: listener.stop())
    print(f"DICOM listener: AE title {ctx.config.dicom.ae_title} on {ctx.config.dicom.address}:{listener.port} "
          f"(pushes accepted from configured PACS nodes only)", flush=True)
    try:
        listener.serve_until_parent_exits(args.parent)
    except KeyboardInterrupt:
        listener.stop()
    return 0


def _send(args, ctx: Context) -> int:
    print(json.dumps(run_send(ctx, args.run)))
    return 0


def add_parsers(sub) -> None:
    pacs = sub.add_parser("pacs", help="PACS nodes (add, list, remove), echo, find, pull, routing of arrivals")
    actions = pacs.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add or change a node (DICOMweb URL and/or AE title, host, port)")
    add.add_argument("name")
    add.add_argument("--url", help="DICOMweb root, e.g. http://pacs:8042/dicom-web")
    add.add_argument("--ae", help="the PACS's AE title (DIMSE)")
    add.add_argument("--host", help="DIMSE host")
    add.add_argument("--port", type=int, help="DIMSE port")
    add.add_argument("--username", help="DICOMweb user name; the password is read from stdin or asked")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin's first line")
    add.add_argument("--tls", action="store_true", help="DIMSE with this node over DICOM TLS (RADLENS_DICOM_TLS_CERT, "
                     "_KEY and _CA must be set)")
    add.add_argument("--allow-plain-http", action="store_true",
                     help="let re-identified results go to this node over plain http:// (default: https only, or "
                          "this machine)")
    add.add_argument("--accepts-other-studies", action="store_true",
                     help="let results of studies that came from other nodes be sent here (default: only its own)")
    listing = actions.add_parser("list", help="the configured nodes")
    listing.add_argument("--json", action="store_true")
    actions.add_parser("remove", help="remove a node and its credentials").add_argument("name")
    actions.add_parser("echo", help="C-ECHO and a DICOMweb ping; says what is wrong").add_argument("node")
    finder = actions.add_parser("find", help="search studies (the answers name patients: shown, never stored)")
    finder.add_argument("node")
    for flag, text in (("--date-from", "YYYYMMDD"), ("--date-to", "YYYYMMDD"), ("--modality", "e.g. CR"),
                       ("--accession", "accession number"), ("--patient-id", "patient ID"),
                       ("--patient-name", "e.g. DOE^J*")):
        finder.add_argument(flag, help=text)
    finder.add_argument("--limit", type=int, default=100)
    puller = actions.add_parser("pull", help="retrieve a study into the store (de-identified) and route it")
    puller.add_argument("node")
    puller.add_argument("--study", required=True, help="Study Instance UID (from find)")
    puller.add_argument("--series", help="only this Series Instance UID of the study")
    pusher = actions.add_parser("push", help="send a case's results (SR, secondary capture, SEG) into its original "
                                             "study on the PACS it came from")
    pusher.add_argument("case", type=int)
    pusher.add_argument("--node", help="another configured node (default: the one the study came from)")
    for action in (finder, puller, pusher):
        action.add_argument("--via", choices=VIAS, help="DICOMweb (QIDO/WADO) or DIMSE (C-FIND/C-GET); default: "
                                                        "DICOMweb when the node has a URL")
        action.add_argument("--json", action="store_true")
    route = actions.add_parser("routing", help="show, or turn on/off, automatic analysis of arrivals per task")
    route.add_argument("task", nargs="?")
    route.add_argument("state", nargs="?", choices=["on", "off"])
    after = actions.add_parser("send-after-review", help="show, or turn on/off, sending results to the source "
                                                         "PACS automatically after each review")
    after.add_argument("state", nargs="?", choices=["on", "off"])
    listen = sub.add_parser("listen", help="run the DICOM listener (C-STORE SCP) in the foreground")
    listen.add_argument("--port", type=int, help="default RADLENS_DICOM_PORT (11112)")
    listen.add_argument("--parent", type=int, help=argparse.SUPPRESS)  # `make run`: stop when the dashboard does
    send = sub.add_parser("send", help="run a queued job sending a case's results to a PACS (the job queue's program)")
    send.add_argument("--run", type=int, required=True, help="job id")


COMMANDS = {"pacs": _pacs, "listen": _listen, "send": _send}
