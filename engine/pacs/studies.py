"""Search a PACS and pull a study from it, as a signed-in user (permissions checked here).

Search results name patients: they go back to the caller to show, and the audit row records only the
node, which keys were used and how many studies answered. A pull brings a study into the store: every
instance through the normal ingest (de-identified on arrival; one failing instance fails alone with its
reason), then the study is routed to the models whose scope it is in. Instances are named by their
position only: a UID is an identifier and never a file name or a log entry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from engine.cases.ingest import IngestResult, ingest_files
from engine.context import Context
from engine.errors import EngineError, PacsError
from engine.pacs.nodes import get_node
from engine.pacs.routing import note_arrival, route_cases
from engine.pacs.transports import (
    EchoReport,
    StudyMatch,
    StudyQuery,
    echo,
    find,
    transport,
)

__all__ = ["PullReport", "test_connection", "search", "pull"]

Progress = Callable[[int, int | None, IngestResult], None]  # (done, total if known, the latest result)


@dataclass(frozen=True)
class PullReport:
    node: str
    via: str
    results: list[IngestResult] = field(default_factory=list)
    case_ids: list[int] = field(default_factory=list)
    job_id: int | None = None  # the analysis job the study was routed to (None: no model applies)
    error: str = ""  # set when the PACS went away mid-retrieve: what arrived before it is kept

    @property
    def landed(self) -> int:
        return sum(r.ok for r in self.results)


def _ingest_one(ctx: Context, node, source: str, name: str, data: bytes) -> IngestResult:
    [result] = ingest_files([(name, data)], ctx, source=source, origin_node=node.name)
    if result.status == "ok":  # a new image (a duplicate was analysed when it first came)
        note_arrival(ctx, result.case_id, source)
    return result


def test_connection(ctx: Context, node_name: str) -> EchoReport:
    """C-ECHO and a DICOMweb ping of the node, each "ok" or what is wrong (audited)."""
    ctx.require("pacs.query")
    report = echo(ctx.config, get_node(ctx.store, node_name))
    ctx.log("pacs.echo", "pacs_node", node_name, {"ok": report.ok})
    return report


def search(ctx: Context, node_name: str, query: StudyQuery, via: str | None = None) -> list[StudyMatch]:
    """Studies on the node matching `query` (for display only; never stored)."""
    ctx.require("pacs.query")
    node = get_node(ctx.store, node_name)
    matches = find(ctx.config, node, query, via)
    ctx.log("pacs.find", "pacs_node", node.name, {"via": transport(node, via).name, "keys": sorted(query.keys()),
                                                  "matches": len(matches)})
    return matches


def pull(ctx: Context, node_name: str, study_uid: str, via: str | None = None,
         progress: Progress | None = None, series_uid: str = "") -> PullReport:
    """Retrieve one study, or one series of it (WADO-RS or C-GET), into the store and route it; audited
    without identifiers."""
    ctx.require("pacs.retrieve")
    ctx.require("case.upload")
    node = get_node(ctx.store, node_name)
    chosen = transport(node, via)
    via, source = chosen.name, f"PACS pull: {node.name}"
    results: list[IngestResult] = []

    def on_instance(position: int, total: int | None, data: bytes | EngineError) -> tuple[int, str]:
        name = f"instance {position}" + (f" of {total}" if total else "")  # a UID never names a file or a log line
        result = IngestResult(name, "error", error=f"{type(data).__name__}: {data}") \
            if isinstance(data, EngineError) else _ingest_one(ctx, node, source, name, data)
        results.append(result)
        if progress:
            progress(len(results), total, result)
        return (0, "") if result.ok else (0xC000, result.error)  # C000: cannot understand (failed, not lost)

    error = ""
    try:
        chosen.retrieve(ctx.config, node, study_uid, series_uid, on_instance)
    except PacsError as exc:
        error = str(exc)
    case_ids = sorted({r.case_id for r in results if r.ok and r.case_id})
    new = sorted({r.case_id for r in results if r.status == "ok"})
    job_id = route_cases(ctx, new) if new else None
    ctx.log("pacs.pull", "pacs_node", node.name, {"via": via, "level": "series" if series_uid else "study",
                                                  "instances": len(results),
                                                  "failed": sum(not r.ok for r in results), "cases": case_ids,
                                                  "interrupted": bool(error)})
    if error and not results:
        raise PacsError(error)
    return PullReport(node.name, via, results, case_ids, job_id, error)
