"""Clinicians' reviews of cases and a case's history: every result logged on it and every review."""

from __future__ import annotations

from collections.abc import Callable

from engine.context import Context
from engine.errors import InvalidReview, UnknownCase
from engine.models.scope import shown_as_logged
from engine.store import Store, utc_now

__all__ = ["VERDICTS", "add_review", "review_case", "AFTER_REVIEW", "case_history", "unreviewed_cases", "MAX_COMMENT"]

VERDICTS = ("agree", "disagree", "corrected")

MAX_COMMENT = 4_000


def add_review(ctx: Context, case_id: int, verdict: str, label: str = "", comment: str = "",
               prediction_id: int | None = None) -> int:
    """A clinician's review of a case (agree / disagree / corrected label) with its audit row."""
    ctx.require("case.review")
    if verdict not in VERDICTS:
        raise InvalidReview(f"Unknown verdict {verdict!r}. Use one of: {', '.join(VERDICTS)}")
    if verdict == "corrected" and not label:
        raise InvalidReview("A corrected review needs the correct label: choose it, or record agree / disagree")
    if len(comment) > MAX_COMMENT or len(label) > 64:
        raise InvalidReview(f"A comment holds at most {MAX_COMMENT:,} characters (this one has {len(comment):,}); "
                            "shorten it")
    with ctx.store.write() as db:
        if not db.execute("SELECT 1 FROM cases WHERE id = ?", [case_id]).fetchone():
            raise UnknownCase(f"case {case_id} does not exist; pick one from the worklist")
        review_id = db["reviews"].insert({
            "case_id": case_id, "prediction_id": prediction_id, "reviewer": ctx.user.name or ctx.actor,
            "actor": ctx.actor, "verdict": verdict,
            "label": label, "comment": comment.strip(), "created_at": utc_now(),
        }).last_pk
        ctx.audit(db, "review", "case", case_id,
                  {"review_id": review_id, "verdict": verdict, "label": label, "prediction_id": prediction_id})
    return review_id


# What happens after a review is recorded: hooks (ctx, case id, review id) -> a follow-up job id or None. The PACS
# package adds "send the results back to the study's PACS" (engine.pacs.push) when it is imported.
AFTER_REVIEW: list[Callable[[Context, int, int], int | None]] = []


def review_case(ctx: Context, case_id: int, verdict: str, label: str = "", comment: str = "",
                prediction_id: int | None = None) -> tuple[int, list[int]]:
    """Record a review and run the after-review hooks. Returns (review id, the follow-up jobs they queued)."""
    review_id = add_review(ctx, case_id, verdict, label, comment, prediction_id)
    return review_id, [job for hook in AFTER_REVIEW if (job := hook(ctx, case_id, review_id)) is not None]


def case_history(store: Store, case_id: int) -> dict[str, list[dict]]:
    """Every prediction (newest first, by model version) and every review of a case."""
    with store.read() as db:
        predictions = list(db.query(
            "SELECT id, created_at, status, status_reason, label, probability, uncertainty, uncertainty_method, "
            "ood_score, ood_flag, model_name, model_version, substr(weights_sha256, 1, 12) AS weights, latency_ms, "
            "actor FROM predictions WHERE case_id = ? ORDER BY id DESC", [case_id]))
        reviews = list(db.query(
            "SELECT id, created_at, reviewer, verdict, label, comment, prediction_id "
            "FROM reviews WHERE case_id = ? ORDER BY id DESC", [case_id]))
    return {"predictions": [shown_as_logged(p, "label", ("probability",)) for p in predictions], "reviews": reviews}


def unreviewed_cases(store: Store) -> list[int]:
    with store.read() as db:
        return [r[0] for r in db.execute(
            "SELECT id FROM cases c WHERE NOT EXISTS (SELECT 1 FROM reviews r WHERE r.case_id = c.id) ORDER BY id")]
