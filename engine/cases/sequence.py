"""Sequence classification of stored cases: a multi-frame image (a volume's slices, a cine loop's frames) read
as one sequence, classified with the active sequence model, judged against its scope and logged."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from engine.cases.images import get_case, load_image
from engine.context import Context
from engine.errors import NotAnalysed, TooLarge
from engine.inference.sequence import SequenceClassifier, SequencePrediction
from engine.io.series import assemble_series
from engine.io.volume import Volume, read_volume
from engine.models.catalog import active_model, find_model
from engine.models.checkpoint import load_model
from engine.models.scope import ANALYSED, Scope, Verdict
from engine.store import Store, utc_now

__all__ = ["TASK", "load_sequence_classifier", "SequenceResult", "volume_of", "analyse_sequence", "sequence_cases",
           "sequence_images", "raw_sequence_output"]

TASK = "sequence"


@dataclass(frozen=True)
class SequenceResult:
    case_id: int
    image_id: int
    raw: SequencePrediction = field(repr=False)  # the network's output, whether or not it is a result
    prediction_id: int
    volume: Volume = field(repr=False)  # what the model read
    verdict: Verdict = Verdict(ANALYSED)

    @property
    def prediction(self) -> SequencePrediction | None:
        """The result; None when the model abstained (outside its scope)."""
        return self.raw if self.verdict.analysed else None


def load_sequence_classifier(ctx: Context, name: str | None = None) -> SequenceClassifier:
    """The named installed sequence model (default: the active one) on CUDA when present, else CPU."""
    import torch

    installed = find_model(ctx.config, name) if name else active_model(ctx, TASK)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return SequenceClassifier(load_model(installed.path, device), device)


def volume_of(ctx: Context, image: dict) -> Volume:
    """The volume an image row stands for: its own frames (a multi-frame file), or, for a single-frame
    slice, the slices of its series in this case, stacked in order (engine.io.series)."""
    if (image.get("frames") or 1) > 1:
        return read_volume((ctx.config.home / image["path"]).read_bytes(), ctx.config.limits)
    singles = [i for i in get_case(ctx.store, image["case_id"])["images"] if (i.get("frames") or 1) == 1]
    # The stored rows bound the stack before a slice is decoded (a 0.5 MiB zip of 600 slices once took the
    # serving process 463 MiB up before the voxel limit refused it).
    voxels, limit = sum((i.get("rows") or 0) * (i.get("cols") or 0) for i in singles), ctx.config.limits.max_pixels
    if voxels > limit:
        raise TooLarge(f"the {len(singles)} slices of this case hold {voxels:,} voxels, over the limit of {limit:,} "
                       "(RADLENS_MAX_PIXELS); nothing was decoded")
    studies = {i["id"]: load_image(ctx.config, i) for i in singles}  # the chosen slice is one of them: decoded once
    series = getattr(studies[image["id"]].dataset, "SeriesInstanceUID", None)
    same = [s for s in studies.values()
            if s.dataset is not None and getattr(s.dataset, "SeriesInstanceUID", None) == series]
    if len(same) < 2:
        raise NotAnalysed(f"image {image['id']} is a single image, not a volume, a cine loop or a series of slices")
    return assemble_series(same, ctx.config.limits)


def sequence_images(case: dict) -> list[dict]:
    """The images of a case a sequence model can read: its multi-frame files, else its first slice (standing
    for its series)."""
    return [i for i in case["images"] if (i.get("frames") or 1) > 1] or case["images"][:1]


def analyse_sequence(ctx: Context, classifier: SequenceClassifier, image: dict) -> SequenceResult:
    """Classify a stored multi-frame image as one sequence and log the prediction (with each slice's
    contribution); outside the model's scope the output is kept for research under 'not_analysed'."""
    ctx.require("case.analyse")
    volume = volume_of(ctx, image)
    raw = classifier.classify(volume.voxels)
    verdict = Scope.from_card(classifier.loaded.card).judge(image.get("modality", ""), image.get("body_part", ""),
                                                             raw.ood_score, raw.ood_threshold)
    loaded = classifier.loaded
    contribution = [round(float(w), 5) for w in raw.contribution] if raw.contribution is not None else None
    row = {
        "status": verdict.status, "status_reason": verdict.reason, "case_id": image["case_id"],
        "image_id": image["id"], "image_sha256": image["sha256"], "task": TASK, "model_name": loaded.name,
        "model_version": loaded.version, "weights_sha256": loaded.sha256, "label": raw.label,
        "probability": raw.probability, "probability_raw": raw.probabilities_raw[loaded.card.positive_label],
        "probabilities_raw": json.dumps(raw.probabilities_raw), "threshold": raw.threshold,
        "ood_score": raw.ood_score, "ood_threshold": raw.ood_threshold, "ood_flag": int(raw.out_of_distribution),
        "preprocessing": loaded.preprocessing.summary(), "cam_method": "attention" if contribution else "",
        "device": str(classifier.device), "latency_ms": raw.latency_ms, "actor": ctx.actor, "created_at": utc_now(),
        "result": json.dumps({"slices": volume.n_slices, "contribution": contribution}),
    }
    with ctx.store.write() as db:
        prediction_id = db["predictions"].insert(row).last_pk
        ctx.audit(db, "predict", "case", image["case_id"],
                  {"prediction_id": prediction_id, "model": loaded.name, "version": loaded.version, "task": TASK,
                   "label": raw.label if verdict.analysed else "not analysed",
                   **({} if verdict.analysed else {"reason": verdict.reason})})
    return SequenceResult(image["case_id"], image["id"], raw, prediction_id, volume, verdict)


def raw_sequence_output(ctx: Context, done: SequenceResult) -> SequencePrediction:
    """The network's output on a sequence it abstained on, for research; asked for on purpose and audited."""
    ctx.require("case.raw_output")
    if not done.verdict.analysed:
        ctx.log("case.raw_output", "case", done.case_id, {"prediction_id": done.prediction_id, "task": TASK})
    return done.raw


def sequence_cases(store: Store, limit: int = 200) -> dict[int, str]:
    """Cases with a multi-frame image (a volume, a cine loop) or with several slices, newest first, as
    {id: one-line label}."""
    sql = ("SELECT c.id, c.modality, c.body_part, c.study_description, max(i.frames), count(i.id) FROM cases c "
           "JOIN images i ON i.case_id = c.id GROUP BY c.id HAVING max(i.frames) > 1 OR count(i.id) > 2 "
           "ORDER BY c.received_at DESC, c.id DESC LIMIT ?")
    with store.read() as db:
        return {r[0]: " ".join(f"#{r[0]} {r[1]} {r[2] or ''} {r[3] or ''} "
                               f"({f'{r[4]} frames' if r[4] > 1 else f'{r[5]} slices'})".split())
                for r in db.execute(sql, [limit])}


