"""Worklist queries: filters, text search (FTS5), sort and pagination over the cases table."""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass, field

from engine.context import Context
from engine.store import Store
from engine.writers.spreadsheet import defused

__all__ = ["Column", "COLUMNS", "WorklistQuery", "WorklistPage", "query_worklist", "list_worklist", "facet_values",
           "SORTS", "STATUSES", "search_text", "case_id_of", "matching_cases", "worklist_csv", "MAX_EXPORT"]

SORTS = {
    "Newest first": "c.received_at DESC, c.id DESC",
    "Oldest first": "c.received_at ASC, c.id ASC",
    "Study date (newest)": "c.study_date DESC, c.id DESC",
    "Modality": "c.modality ASC, c.id DESC",
    "Case id": "c.id ASC",
    # Active learning: the cases the latest model is least sure of first (predictive entropy or TTA spread,
    # as recorded with the prediction); cases without a prediction last.
    "Most uncertain first": "(SELECT CASE WHEN x.status = 'not_analysed' THEN NULL ELSE x.uncertainty END "
                            "FROM predictions x WHERE x.case_id = c.id ORDER BY x.id DESC LIMIT 1) DESC NULLS LAST, "
                            "c.id DESC",
}
STATUSES = {
    "All": "",
    "Awaiting prediction": "NOT EXISTS (SELECT 1 FROM predictions p WHERE p.case_id = c.id)",
    "Has prediction": "EXISTS (SELECT 1 FROM predictions p WHERE p.case_id = c.id)",
    "Not analysed (outside the model's scope)": "(SELECT p.status FROM predictions p WHERE p.case_id = c.id "
                                                "ORDER BY p.id DESC LIMIT 1) = 'not_analysed'",
    "Reviewed": "EXISTS (SELECT 1 FROM reviews r WHERE r.case_id = c.id)",
    "Not reviewed": "NOT EXISTS (SELECT 1 FROM reviews r WHERE r.case_id = c.id)",
}
_COLUMNS = ("c.id, c.modality, c.body_part, c.view_position, c.study_description, c.study_date, "
            "c.received_at, c.image_count, c.burned_in_risk, c.source")
# The latest prediction, review and measurement of each case on the page. Asked for the page's ids only: as
# columns of the paged query SQLite would evaluate them for every matching row before sorting.
_NOT_ANALYSED = "'not analysed'"
_LATEST = ("SELECT c.id, "
           f"(SELECT CASE WHEN status = 'not_analysed' THEN {_NOT_ANALYSED} ELSE label END FROM predictions x "
           "WHERE x.case_id = c.id ORDER BY x.id DESC LIMIT 1) AS latest_label, "
           "(SELECT CASE WHEN status = 'not_analysed' THEN NULL ELSE probability END FROM predictions x "
           "WHERE x.case_id = c.id ORDER BY x.id DESC LIMIT 1) AS latest_probability, "
           "(SELECT CASE WHEN status = 'not_analysed' THEN NULL ELSE uncertainty END FROM predictions x "
           "WHERE x.case_id = c.id ORDER BY x.id DESC LIMIT 1) AS latest_uncertainty, "
           "(SELECT verdict FROM reviews x WHERE x.case_id = c.id ORDER BY x.id DESC LIMIT 1) AS latest_review, "
           f"(SELECT CASE WHEN status = 'not_analysed' THEN {_NOT_ANALYSED} WHEN circumference IS NULL THEN NULL "
           "ELSE printf('HC %.1f %s', circumference, unit) END FROM segmentations x WHERE x.case_id = c.id "
           "ORDER BY x.id DESC LIMIT 1) AS latest_measurement "
           "FROM cases c WHERE c.id IN ({ids})")


@dataclass(frozen=True)
class Column:
    """One worklist column: the row key, its title, and what kind of value it holds (how it is shown)."""

    key: str
    title: str
    kind: str  # id, text, probability, decimal, datetime, flag, count
    help: str = ""


# What the worklist shows, in order. The page formats each kind; it adds, drops and renames nothing.
COLUMNS: tuple[Column, ...] = (
    Column("id", "Case", "id"),
    Column("modality", "Modality", "text"),
    Column("body_part", "Body part", "text"),
    Column("study_description", "Description", "text"),
    Column("latest_label", "Model output", "text", "The latest result, or 'not analysed' where the image is "
           "outside what the model was trained on"),
    Column("latest_probability", "Probability", "probability", "Latest calibrated probability of the positive label"),
    Column("latest_uncertainty", "Uncertainty", "decimal", "Of the latest prediction (entropy in bits, or the "
           "spread over test-time augmentation); sort by 'Most uncertain first' to review those cases first"),
    Column("latest_measurement", "Measurement", "text"),
    Column("latest_review", "Review", "text"),
    Column("view_position", "View", "text"),
    Column("study_date", "Study date (shifted)", "text"),
    Column("received_at", "Received (UTC)", "datetime"),
    Column("image_count", "Images", "count"),
    Column("burned_in_risk", "Burned-in text risk", "flag", "Possible text burned into the pixels"),
    Column("source", "Source", "text"),
)


@dataclass(frozen=True)
class WorklistQuery:
    """What the worklist shows. Empty tuples and None mean 'no filter'."""

    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    received_from: str | None = None  # ISO date, inclusive
    received_to: str | None = None  # ISO date, inclusive
    status: str = "All"  # a key of STATUSES
    text: str = ""  # words matched as prefixes in modality, body part and descriptions; or a case id
    sort: str = "Newest first"  # a key of SORTS
    page: int = 1
    page_size: int = 50


@dataclass(frozen=True)
class WorklistPage:
    rows: list[dict] = field(default_factory=list)
    total: int = 0
    page: int = 1
    pages: int = 1


MAX_SEARCH = 200


def search_text(text: str) -> str:
    """Search text as typed, without control characters (a NUL breaks FTS5 queries) and capped in length."""
    return "".join(c for c in (text or "")[:MAX_SEARCH] if c.isprintable()).strip()


def case_id_of(text: str) -> int | None:
    """A case number typed or passed as ?case=: ASCII digits that fit SQLite's integer; else None."""
    text = (text or "").strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def _where(q: WorklistQuery) -> tuple[str, list]:
    clauses, params = [], []
    for column, values in (("c.modality", q.modalities), ("c.body_part", q.body_parts)):
        if values:
            clauses.append(f"{column} IN ({', '.join('?' * len(values))})")
            params += list(values)
    if q.received_from:
        clauses.append("c.received_at >= ?")
        params.append(q.received_from)
    if q.received_to:
        clauses.append("c.received_at < date(?, '+1 day')")
        params.append(q.received_to)
    if STATUSES[q.status]:
        clauses.append(STATUSES[q.status])
    text = search_text(q.text)
    if case_id_of(text) is not None:
        clauses.append("c.id = ?")
        params.append(case_id_of(text))
    elif text:
        clauses.append("c.id IN (SELECT rowid FROM cases_fts WHERE cases_fts MATCH ?)")
        params.append(" ".join('"' + w.replace('"', '""') + '"*' for w in text.split()))
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def query_worklist(store: Store, q: WorklistQuery) -> WorklistPage:
    """One page of cases matching the query, with the total count for pagination."""
    where, params = _where(q)
    with store.read() as db:
        total = db.execute(f"SELECT count(*) FROM cases c{where}", params).fetchone()[0]
        pages = max(1, -(-total // q.page_size))
        page = min(max(1, q.page), pages)
        sql = (f"SELECT {_COLUMNS} FROM cases c{where} ORDER BY {SORTS[q.sort]} LIMIT ? OFFSET ?")
        rows = list(db.query(sql, params + [q.page_size, (page - 1) * q.page_size]))
        ids = [r["id"] for r in rows]
        latest = {r.pop("id"): r for r in db.query(_LATEST.format(ids=",".join("?" * len(ids))), ids)}
    return WorklistPage([{**r, **latest[r["id"]]} for r in rows], total, page, pages)


def list_worklist(ctx: Context, q: WorklistQuery) -> WorklistPage:
    """query_worklist for a person: needs `case.read`."""
    ctx.require("case.read")
    return query_worklist(ctx.store, q)


def facet_values(store: Store, column: str) -> list[str]:
    """Distinct non-empty values of a filterable column (modality or body_part)."""
    if column not in ("modality", "body_part"):
        raise ValueError(column)
    with store.read() as db:
        return [r[0] for r in db.execute(f"SELECT DISTINCT {column} FROM cases WHERE {column} != '' ORDER BY 1")]



MAX_EXPORT = 10_000  # rows of one CSV export


def matching_cases(ctx: Context, q: WorklistQuery, limit: int = MAX_EXPORT) -> WorklistPage:
    """Every case the filter matches (all pages, in its sort order), up to `limit`; `total` says how many
    matched."""
    ctx.require("case.read")
    return query_worklist(ctx.store, dataclasses.replace(q, page=1, page_size=limit))


def worklist_csv(ctx: Context, q: WorklistQuery) -> bytes:
    """The filter's cases as CSV, the worklist's columns and titles (needs `case.export`; audited)."""
    ctx.require("case.export")
    found = matching_cases(ctx, q)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([c.title for c in COLUMNS])
    for row in found.rows:
        writer.writerow([defused(row.get(c.key)) for c in COLUMNS])
    ctx.log("export.csv", "worklist", "", {"cases": len(found.rows), "matched": found.total, "status": q.status,
                                             "modalities": list(q.modalities), "text": bool(q.text)})
    return buffer.getvalue().encode()
