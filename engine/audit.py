"""The audit trail's hash chain: each row stores the keyed hash (HMAC-SHA256) of the previous row's hash
and its own content, id included, so an edit, a deletion, an insertion or a reordering done behind the
application's back breaks the chain at that row. The newest row's id and hash are also kept as the head
(in `settings`), so rows cut from the end are detected too. The key lives outside the database
(engine.keys), so whoever can write the database file cannot re-seal a changed chain."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["FIELDS", "GENESIS", "seal", "ChainReport", "verify_chain"]

# The sealed columns, in hash order. `id` is sealed, so moving a row's content to another id breaks it.
FIELDS = ("id", "at", "actor", "actor_name", "role", "action", "target_type", "target_id", "detail")
GENESIS = "0" * 64


def seal(key: bytes, prev_hash: str, row: dict) -> str:
    content = json.dumps([row.get(f) if row.get(f) is not None else "" for f in FIELDS],
                         separators=(",", ":"), ensure_ascii=True)
    return hmac.new(key, f"{prev_hash}\n{content}".encode(), hashlib.sha256).hexdigest()


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
        if row.get("prev_hash") != prev_hash:
            after = f"row {prev_id}" if prev_id is not None else "the start of the log"
            return ChainReport(False, count, f"row {row['id']} does not follow {after}: a row between them was "
                               "deleted or inserted, or the rows were reordered", row["id"])
        if not hmac.compare_digest(row.get("hash") or "", seal(key, prev_hash, row)):
            return ChainReport(False, count, f"row {row['id']} was changed after it was written "
                               "(its content does not match its seal)", row["id"])
        prev_hash, prev_id, count = row["hash"], row["id"], count + 1
    if head and (head.get("id") != prev_id or head.get("hash") != prev_hash):
        return ChainReport(False, count, f"the log ends at row {prev_id} but the last row written was row "
                           f"{head.get('id')}: rows were deleted from the end", prev_id)
    if head is None and count:
        return ChainReport(False, count, "the chain's head record is missing from settings")
    return ChainReport(True, count)
