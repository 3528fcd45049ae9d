"""The audit trail's hash chain: each row stores the keyed hash (HMAC-SHA256) of the previous row's hash
and its own content, id included, so an edit, a deletion, an insertion or a reordering done behind the
application's back breaks the chain at that row. The newest row's id and hash are also kept as the head
(in `settings`) with its own keyed seal, so rows cut from the end are detected too, and a head rewritten to
point at a shorter chain is itself a break. A row is sealed in the transaction that writes it and never later:
an unsealed row is a break, never something to repair. The key lives outside the database (engine.keys), so
whoever can write the database file cannot seal a row, re-seal a changed chain or move the head.

Not detected: a whole earlier copy of the database put back (rows and head together, a rollback); keep the
database's backups where its writers cannot reach them."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["FIELDS", "GENESIS", "seal", "seal_head", "ChainReport", "verify_chain"]

# The sealed columns, in hash order. `id` is sealed, so moving a row's content to another id breaks it.
FIELDS = ("id", "at", "actor", "actor_name", "role", "action", "target_type", "target_id", "detail")
GENESIS = "0" * 64


def seal(key: bytes, prev_hash: str, row: dict) -> str:
    content = json.dumps([row.get(f) if row.get(f) is not None else "" for f in FIELDS],
                         separators=(",", ":"), ensure_ascii=True)
    return hmac.new(key, f"{prev_hash}\n{content}".encode(), hashlib.sha256).hexdigest()


def seal_head(key: bytes, row_id: int | None, digest: str) -> str:
    """The head's own seal: a head copied from another row, or rewritten after a cut, does not match it."""
    return hmac.new(key, f"head\n{row_id}\n{digest}".encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    rows: int
    problem: str = ""  # one line naming the first broken row
    row_id: int | None = None

    def describe(self) -> str:
        if self.ok:
            return f"audit trail intact: {self.rows:,} rows, every hash and the head match"
        return f"audit trail BROKEN after checking {self.rows:,} rows: {self.problem}"


def verify_chain(key: bytes, rows: Iterable[dict], head: dict | None) -> ChainReport:
    """Check rows (in id order) against their seals and the recorded head {"id", "hash"}."""
    prev_hash, prev_id, count = GENESIS, None, 0
    for row in rows:
        if not row.get("hash"):
            return ChainReport(False, count, f"row {row['id']} is not sealed: it was written behind the "
                               "application's back (every row is sealed when it is written)", row["id"])
        if row.get("prev_hash") != prev_hash:
            after = f"row {prev_id}" if prev_id is not None else "the start of the log"
            return ChainReport(False, count, f"row {row['id']} does not follow {after}: a row between them was "
                               "deleted or inserted, or the rows were reordered", row["id"])
        if not hmac.compare_digest(row.get("hash") or "", seal(key, prev_hash, row)):
            return ChainReport(False, count, f"row {row['id']} was changed after it was written "
                               "(its content does not match its seal)", row["id"])
        prev_hash, prev_id, count = row["hash"], row["id"], count + 1
    if head and not hmac.compare_digest(str(head.get("mac") or ""), seal_head(key, head.get("id"), head.get("hash"))):
        return ChainReport(False, count, "the chain's head record was rewritten (its seal does not match): rows "
                           "were cut from the end or the head was moved", prev_id)
    if head and (head.get("id") != prev_id or head.get("hash") != prev_hash):
        return ChainReport(False, count, f"the log ends at row {prev_id} but the last row written was row "
                           f"{head.get('id')}: rows were deleted from the end", prev_id)
    if head is None and count:
        return ChainReport(False, count, "the chain's head record is missing from settings")
    return ChainReport(True, count)
