"""Diagnosis on stored cases: classify and log every inference, record reviews, read a case's history."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from engine.cases.images import get_case, gray_image
from engine.context import Context
from engine.errors import EngineError, InvalidReview, UnknownCase
from engine.inference.classify import Classifier, Prediction
from engine.models.catalog import active_model, find_model
from engine.models.checkpoint import load_model
from engine.models.scope import ANALYSED, Scope, Verdict, shown_as_logged
from engine.store import Store, utc_now

__all__ = ["load_classifier", "CaseResult", "judge", "raw_output", "scope_of", "VERDICTS", "diagnose_image",
           "diagnose_cases", "record_prediction", "add_review", "case_history", "unreviewed_cases", "MAX_COMMENT"]

VERDICTS = ("agree", "disagree", "corrected")


@dataclass(frozen=True)
class CaseResult:
    case_id: int
    image_id: int
    raw: Prediction = field(repr=False)  # the network's output, whether or not it is a result (see raw_output)
    prediction_id: int
    gray: np.ndarray  # the display image the model saw (first frame), for overlays
    verdict: Verdict = Verdict(ANALYSED)

    @property
    def prediction(self) -> Prediction | None:
        """The result; None when the model abstained (outside its scope)."""
        return self.raw if self.verdict.analysed else None


def scope_of(classifier: Classifier) -> Scope:
    return Scope.from_card(classifier.loaded.card)


def judge(classifier: Classifier, image: dict, prediction: Prediction) -> Verdict:
    """Is this output a result? The model's scope (the image's modality and body part) and its OOD gate."""
    return scope_of(classifier).judge(image.get("modality", ""), image.get("body_part", ""), prediction.ood_score,
                                      prediction.ood_threshold)


def raw_output(ctx: Context, result: CaseResult) -> Prediction:
    """The network's output on an image it abstained on, for research; asked for on purpose and audited."""
    ctx.require("case.raw_output")
    if not result.verdict.analysed:
        ctx.log("case.raw_output", "case", result.case_id, {"prediction_id": result.prediction_id})
    return result.raw


def load_classifier(ctx: Context, name: str | None = None) -> Classifier:
    """The named installed model (default: the active one) on CUDA when present, else CPU."""
    import torch

    installed = find_model(ctx.config, name) if name else active_model(ctx, "classification")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return Classifier(load_model(installed.path, device), device)


def record_prediction(ctx: Context, classifier: Classifier, image: dict, prediction: Prediction,
                      verdict: Verdict) -> int:
    """One `predictions` row (and an audit row) with everything that produced the numbers. An abstention
    keeps the network's output for research, under status 'not_analysed' with its reason."""
    ctx.require("case.analyse")
    loaded = classifier.loaded
    row = {
        "status": verdict.status, "status_reason": verdict.reason,
        "case_id": image["case_id"], "image_id": image["id"], "image_sha256": image["sha256"],
        "task": "classification", "model_name": loaded.name, "model_version": loaded.version,
        "weights_sha256": loaded.sha256, "label": prediction.label, "probability": prediction.probability,
        "probabilities": json.dumps(prediction.probabilities), "probability_raw":
            prediction.probabilities_raw[loaded.card.positive_label],
        "probabilities_raw": json.dumps(prediction.probabilities_raw), "threshold": prediction.threshold,
        "uncertainty": prediction.uncertainty, "uncertainty_method": prediction.uncertainty_method,
        "ood_score": prediction.ood_score, "ood_threshold": prediction.ood_threshold,
        "ood_flag": int(prediction.out_of_distribution), "preprocessing": loaded.preprocessing.summary(),
        "cam_method": prediction.cam_method, "device": str(classifier.device),
        "latency_ms": prediction.latency_ms, "actor": ctx.actor, "created_at": utc_now(),
    }
    with ctx.store.write() as db:
        prediction_id = db["predictions"].insert(row).last_pk
        ctx.audit(db, "predict", "case", image["case_id"],
                    {"prediction_id": prediction_id, "model": loaded.name, "version": loaded.version,
                     "label": prediction.label if verdict.analysed else "not analysed",
                     **({} if verdict.analysed else {"reason": verdict.reason})})
    return prediction_id


def diagnose_image(ctx: Context, classifier: Classifier, image: dict, tta: int = 0) -> CaseResult:
    """Decode a stored image, classify it (with its CAM) and log the prediction."""
    gray = gray_image(ctx.config, image)
    prediction = classifier.classify(gray, tta)
    verdict = judge(classifier, image, prediction)
    prediction_id = record_prediction(ctx, classifier, image, prediction, verdict)
    return CaseResult(image["case_id"], image["id"], prediction, prediction_id, gray, verdict)


def diagnose_cases(ctx: Context, classifier: Classifier, case_ids: Iterable[int],
                   progress: Callable[[int, int, str], None] | None = None,
                   batch_size: int = 16) -> tuple[list[CaseResult], dict[int, str]]:
    """Classify the first image of each case, `batch_size` images per forward. A case that cannot be read
    is reported with its reason and the others go on."""
    case_ids = list(case_ids)
    done: list[CaseResult] = []
    failed: dict[int, str] = {}
    for start in range(0, len(case_ids), batch_size):
        batch = []
        for case_id in case_ids[start:start + batch_size]:
            try:
                image = get_case(ctx.store, case_id)["images"][0]
                batch.append((image, gray_image(ctx.config, image)))
            except EngineError as exc:
                failed[case_id] = str(exc)
        predictions = classifier.classify_batch([gray for _, gray in batch]) if batch else []
        for (image, gray), prediction in zip(batch, predictions):
            verdict = judge(classifier, image, prediction)
            prediction_id = record_prediction(ctx, classifier, image, prediction, verdict)
            done.append(CaseResult(image["case_id"], image["id"], prediction, prediction_id, gray, verdict))
        if progress:
            n = min(start + batch_size, len(case_ids))
            progress(n, len(case_ids), f"case #{case_ids[n - 1]}")
    return done, failed


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
