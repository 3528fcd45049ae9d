"""The sequence task: one label for a whole image sequence (the slices of a volume, the frames of a cine loop).

It is a calibrated two-label classifier like the classification task (operating threshold, OOD gate, test
split reported once, AUC comparison), over (1, D, H, W) inputs. What differs: the volume augmentation, vector
scaling as the calibrator (fitted on validation), the per-slice contribution (attention weights) on the card,
and one more reported number, accuracy at a calibrated probability of 0.5, the convention of the MedMNIST
benchmarks it is compared with. `evaluate --write` refits the card's rules (weights unchanged).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field

import numpy as np

from engine.config import Config
from engine.context import Context
from engine.data.loaders import VolumeShift
from engine.errors import NotAnalysed, TooLarge
from engine.inference.predict import predict
from engine.inference.sequence import SequenceClassifier, SequencePrediction
from engine.io.series import assemble_series
from engine.io.volume import Volume, read_volume
from engine.metrics import Calibrator, bootstrap_ci
from engine.models.card import ModelCard
from engine.models.checkpoint import LoadedModel
from engine.models.registry import cam_layer
from engine.models.scope import ANALYSED, Scope, Verdict
from engine.store import Store
from engine.stored import get_case, load_image
from engine.tasks import classification
from engine.tasks.analysis import Analysis, Contribution, Line, Outcome, load, record
from engine.tasks.base import FormDefaults, Scored
from engine.tasks.classification import _classifier_scores, _describe_classifier

__all__ = ["TASK", "with_accuracy_at_half", "CONTRIBUTION", "load_sequence_classifier", "SequenceResult", "volume_of",
           "analyse_sequence", "sequence_cases", "sequence_images", "raw_sequence_output"]

# How each architecture says which slices mattered (an architecture not listed has no per-slice output).
CONTRIBUTION = {"slice_rnn": {"method": "attention weights over slices", "module": "attention",
                              "meaning": "the share of the pooled sequence vector each slice provides (sums to 1)"}}


def _accuracy(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {"accuracy_at_0.5": float(((p >= 0.5) == (y == 1)).mean())}


def with_accuracy_at_half(report: dict, labels: np.ndarray, p: np.ndarray) -> dict:
    """A split's report plus the accuracy at a calibrated probability of 0.5, with its bootstrap 95 % CI."""
    return {**report, **_accuracy(labels, p),
            "ci95": {**report["ci95"], **bootstrap_ci(labels, p, _accuracy)}}


def _scores(loaded: LoadedModel, data) -> Scored:
    scored = _classifier_scores(loaded, data)
    return Scored(with_accuracy_at_half(scored.report, scored.truth, scored.per_image), scored.truth,
                  scored.per_image)


def _describe(model, arch, splits, prep, device) -> dict:
    # Vector scaling (a scale and a bias per class), not temperature alone: the class-weighted loss moves the
    # decision boundary towards the minority class, and only a bias moves it back, so that a calibrated
    # probability of 0.5 means even odds (the MedMNIST accuracy is read there).
    card = _describe_classifier(model, arch, splits, prep, device, calibrator="vector scaling")
    calibrator = Calibrator.from_card(card["calibration"])
    for split in ("val", "test"):
        data = splits.sets[split]
        logits, _ = predict(model, data.images, prep, cam_layer(model, arch), device)
        card["metrics"][split] = with_accuracy_at_half(card["metrics"][split], data.labels.numpy(),
                                                       calibrator.probabilities(logits)[:, 1].numpy())
    card.update(task="sequence", cam={}, contribution=CONTRIBUTION.get(arch))
    return card


# ---- Analysis of stored cases: a multi-frame image (a volume's slices, a cine loop's frames) or a series of
# slices read as one sequence, classified with the active sequence model, judged against its scope, logged.

@dataclass(frozen=True)
class SequenceResult(Outcome):
    id_field = "prediction_id"

    case_id: int
    image_id: int
    raw: SequencePrediction = field(repr=False)  # the network's output, whether or not it is a result
    prediction_id: int
    volume: Volume = field(repr=False)  # what the model read
    verdict: Verdict = Verdict(ANALYSED)

    @property
    def prediction(self) -> SequencePrediction | None:
        return self.result


def load_sequence_classifier(ctx: Context | Config, name: str | None = None) -> SequenceClassifier:
    """The named installed sequence model (default: the active one), loaded once on the chosen device."""
    return load(ctx, TASK, name)


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
    values = {
        "status": verdict.status, "status_reason": verdict.reason, "task": TASK.name, "label": raw.label,
        "probability": raw.probability, "probability_raw": raw.probabilities_raw[loaded.card.positive_label],
        "probabilities_raw": json.dumps(raw.probabilities_raw), "threshold": raw.threshold,
        "ood_score": raw.ood_score, "ood_threshold": raw.ood_threshold, "ood_flag": int(raw.out_of_distribution),
        "cam_method": "attention" if contribution else "", "device": str(classifier.device),
        "latency_ms": raw.latency_ms, "result": json.dumps({"slices": volume.n_slices, "contribution": contribution}),
    }
    prediction_id = record(ctx, TASK, image, loaded, values, {
        "task": TASK.name, "label": raw.label if verdict.analysed else "not analysed",
        **({} if verdict.analysed else {"reason": verdict.reason})})
    return SequenceResult(image["case_id"], image["id"], raw, prediction_id, volume, verdict)


def raw_sequence_output(ctx: Context, done: SequenceResult) -> SequencePrediction:
    """The network's output on a sequence it abstained on, for research; asked for on purpose and audited."""
    ctx.require("case.raw_output")
    if not done.verdict.analysed:
        ctx.log("case.raw_output", "case", done.case_id, {"prediction_id": done.prediction_id, "task": TASK.name})
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


def _report(p: dict, card: ModelCard | None) -> list:
    """The calibrated label of the whole sequence, and the slices that contributed most to it."""
    lines = classification.probability_lines(p, card)
    result = json.loads(p.get("result") or "{}")
    weights = result.get("contribution")
    if weights:
        top = sorted(range(len(weights)), key=lambda k: -weights[k])[:3]
        lines.append(Line(f"Read as one sequence of {result.get('slices', len(weights))} slices; the slices the "
                          "model drew most on (attention weights): "
                          + ", ".join(f"{k + 1} ({weights[k]:.0%})" for k in top), 8.5, muted=True))
    else:
        lines.append(Line(f"Read as one sequence of {result.get('slices', '?')} slices.", 8.5, muted=True))
    return lines


def _evidence(config: Config, p: dict, gray) -> tuple:
    """The slice the model drew most on (its attention weight), drawn as it is stored: the first frame of a
    volume is often empty (a mask's first slice), the slice that weighed most shows what was read."""
    weights = json.loads(p.get("result") or "{}").get("contribution")
    image = Store(config.db_path).row("images", p["image_id"])
    if not weights or not image or (image.get("frames") or 1) < 2:
        return None, ""
    k = max(range(len(weights)), key=weights.__getitem__)
    voxels = read_volume((config.home / image["path"]).read_bytes(), config.limits).voxels
    if k >= len(voxels):
        return None, ""
    return voxels[k], f"Slice {k + 1} of {len(voxels)}: the one the model drew most on ({weights[k]:.0%} of the weight)"


def _card_metrics(test: dict) -> list[str]:
    lines = classification.card_metrics(test)
    if "accuracy_at_0.5" in test:
        lines.append(f"Accuracy at a calibrated probability of 0.5: {test['accuracy_at_0.5']:.3f}"
                     f"{classification.ci_text(test, 'accuracy_at_0.5')}")
    return lines


def _objects(config: Config, p: dict, source, gray) -> Contribution:
    """The SR's finding (no capture: the model's evidence is per slice, listed in the report)."""
    card = classification.verified_model(config, TASK, p).loaded.card
    return Contribution([], classification.finding(p, card, "attention weights over slices" if p["cam_method"]
                                                      else "none"))


def _batch_rows(model: SequenceClassifier, scope: Scope, batch: list, options, timings: dict[str, float]) -> list[dict]:
    out = []
    for d in batch:
        start = time.perf_counter()
        p = model.classify(d.gray)
        timings["forward"] = timings.get("forward", 0.0) + time.perf_counter() - start
        verdict = scope.judge(d.modality, d.body_part, p.ood_score, p.ood_threshold)
        contribution = [round(float(w), 5) for w in p.contribution] if p.contribution is not None else None
        out.append({
            "status": verdict.status, "status_reason": verdict.reason, "label": p.label,
            "probability": p.probability, "probabilities_raw": json.dumps(p.probabilities_raw),
            "threshold": p.threshold, "ood_score": p.ood_score, "ood_threshold": p.ood_threshold,
            "ood_flag": int(p.out_of_distribution), "cam_method": "attention" if contribution else "",
            "result": json.dumps({"slices": int(d.gray.shape[0]), "contribution": contribution}),
            "latency_ms": p.latency_ms})
    return out


def _batch_record(row: dict, card: ModelCard) -> dict:
    raw = json.loads(row["probabilities_raw"] or "{}")
    return {"task": TASK.name, "label": row["label"], "probability": row["probability"],
            "probability_raw": raw.get(card.positive_label), "probabilities_raw": row["probabilities_raw"],
            "threshold": row["threshold"], "ood_score": row["ood_score"], "ood_threshold": row["ood_threshold"],
            "ood_flag": row["ood_flag"], "cam_method": row["cam_method"], "result": row["result"]}


ANALYSIS = Analysis(
    kind="probability", table="predictions", audit_action="predict", page="pages/sequence.py",
    runner=SequenceClassifier,
    images=sequence_images, run=lambda ctx, model, image: analyse_sequence(ctx, model, image),
    report=_report, evidence=_evidence, card_metrics=_card_metrics, objects=_objects,
    batch_rows=_batch_rows, batch_record=_batch_record, batch_input="volume", batch_columns={"result": str},
    owns=lambda row: row.get("task") == "sequence",
)


# The classification task with what differs for a sequence (reviews and cross-validation are not wired here).
TASK = dataclasses.replace(
    classification.TASK, name="sequence", title="Sequence (volume / cine) classification",
    defaults=FormDefaults(size=32, batch_size=32, epochs=40, depth=32), augmentation=VolumeShift,
    augmentation_text="random shift of up to 8 % along each axis, zero-filled; no flips or rotations",
    describe=_describe, scores=_scores,
    headline_numbers=lambda m: {"auc": m["auc"], "accuracy_at_0.5": m["accuracy_at_0.5"]},
    uses_reviews=False, cross_validates=False, synthetic_images=False, refit_on_rewrite=True, analysis=ANALYSIS,
)
