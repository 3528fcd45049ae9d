"""The classification task: a calibrated two-label classifier with an operating threshold and an OOD gate.

Training: class-weighted cross-entropy, validation AUC for early stopping. The card: calibrator,
operating threshold (specificity >= 0.90) and OOD threshold fitted on validation, or with --folds K on
out-of-fold predictions over train + val (the calibrator, temperature or vector scaling, chosen by its
cross-validated ECE); the test split reported once. Comparison: the AUC difference with a paired bootstrap CI."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.config import Config
from engine.context import Context
from engine.data.loaders import augmentation
from engine.draw import fast_png, overlay, with_banner
from engine.errors import EngineError, ExportError, UnknownModel
from engine.inference.classify import Classifier, Prediction
from engine.inference.predict import predict
from engine.metrics import (
    CALIBRATORS,
    Calibrator,
    auc,
    bootstrap_ci,
    ece,
    fit_calibrator,
    split_report,
    threshold_for_specificity,
)
from engine.models.card import ModelCard
from engine.models.checkpoint import LoadedModel
from engine.models.installed import find_model
from engine.models.ood import fit_gaussian, mahalanobis
from engine.models.registry import cam_layer, get_spec
from engine.models.scope import ANALYSED, Scope, Verdict
from engine.stored import get_case, gray_image, single_frame
from engine.tasks.analysis import Analysis, Bar, Contribution, Line, Outcome, algorithm_of, load, load_path, record
from engine.tasks.base import FormDefaults, Scored, Task
from engine.writers import derived
from engine.writers.derived import BURNED_IN

__all__ = ["TASK", "class_weights", "OOD_QUANTILE", "OutOfFold", "out_of_fold_reports", "CaseResult", "scope_of",
           "judge", "raw_output", "record_prediction", "diagnose_image", "diagnose_cases", "load_classifier",
           "verified_model", "card_metrics", "probability_lines", "finding", "percent"]

OOD_QUANTILE = 0.99  # validation images above the threshold: 1 %


def _positive_prob(logits: torch.Tensor, calibrator: Calibrator | None = None) -> np.ndarray:
    return (calibrator.probabilities(logits) if calibrator else torch.softmax(logits.float(), dim=1))[:, 1].numpy()


def _validate_classifier(model, val, prep, device, arch) -> dict:
    logits, _ = predict(model, val.images, prep, cam_layer(model, arch), device)
    val_auc = auc(val.labels.numpy(), _positive_prob(logits))
    return {"score": val_auc, "val_loss": round(float(torch.nn.functional.cross_entropy(logits, val.labels)), 5),
            "val_auc": round(val_auc, 5)}


@dataclass
class OutOfFold:
    """Predictions of train + val images by the fold model that did not train on them."""

    logits: torch.Tensor  # (N, 2)
    labels: torch.Tensor  # (N,)
    fold: np.ndarray  # (N,) which fold held the image out
    in_val: np.ndarray  # (N,) bool: the image is in the dataset's validation split
    ood: np.ndarray  # (N,) Mahalanobis distance to the fold model's own training features

    def extras(self) -> dict[str, torch.Tensor]:
        return {"oof_logits": self.logits, "oof_labels": self.labels.float(),
                "oof_fold": torch.from_numpy(self.fold).float(), "oof_in_val": torch.from_numpy(self.in_val).float(),
                "oof_ood": torch.from_numpy(self.ood).float()}

    @classmethod
    def from_extras(cls, extras: dict[str, torch.Tensor]) -> OutOfFold | None:
        if "oof_logits" not in extras:
            return None
        return cls(extras["oof_logits"].float().cpu(), extras["oof_labels"].long().cpu(),
                   extras["oof_fold"].long().cpu().numpy(), extras["oof_in_val"].cpu().numpy() > 0.5,
                   extras["oof_ood"].cpu().numpy().astype(np.float64))


def out_of_fold_reports(loaded: LoadedModel) -> dict[str, dict] | None:
    """A cross-validated card's "val" and "cv" metrics recomputed from the out-of-fold predictions stored
    beside its weights (the shipped model itself trained on those images, so they cannot come from it)."""
    oof = OutOfFold.from_extras(loaded.extras)
    if oof is None:
        return None
    calibrator, threshold = Calibrator.from_card(loaded.card.calibration), loaded.card.operating_point["threshold"]
    return {"val": split_report(oof.logits[oof.in_val], oof.labels[oof.in_val].numpy(), calibrator, threshold),
            "cv": split_report(oof.logits, oof.labels.numpy(), calibrator, threshold)}


def _calibration_rules(method: str, logits: torch.Tensor, labels: torch.Tensor) -> tuple[Calibrator, float]:
    """(calibrator, operating threshold) fitted on these predictions."""
    calibrator = fit_calibrator(method, logits, labels)
    return calibrator, threshold_for_specificity(labels.numpy(), _positive_prob(logits, calibrator), 0.90)


def _cross_validated_ece(oof) -> dict[str, dict[str, float]]:
    """ECE of the out-of-fold predictions when each fold is calibrated without it, by each calibrator, fitted
    on all other folds (this method's data) or on the other folds' validation-split images only (the
    previous method's data). Same images, same predictions: only the calibration differs."""
    data = {"train + val": lambda held: ~held, "val split only": lambda held: ~held & oof.in_val}
    out: dict[str, dict[str, float]] = {}
    for method in CALIBRATORS:
        for data_name, rows in data.items():
            p = np.zeros(len(oof.labels))
            for k in np.unique(oof.fold):
                held = oof.fold == k
                use = rows(held)
                p[held] = _positive_prob(oof.logits[held], fit_calibrator(method, oof.logits[use], oof.labels[use]))
            out.setdefault(method, {})[data_name] = ece(oof.labels.numpy(), p)
    return out


def _describe_classifier(model, arch, splits, prep, device, oof=None, calibrator: str = "temperature scaling") -> dict:
    """The calibrator (`calibrator`), operating threshold and OOD threshold fitted on validation, or, after
    cross-validation (`oof`), on the out-of-fold predictions over train + val; the test split reported once."""
    sets, feature_layer = splits.sets, cam_layer(model, arch)
    outputs = {s: predict(model, sets[s].images, prep, feature_layer, device) for s in ("train", "test")}
    mean, precision = fit_gaussian(outputs["train"][1])
    if oof is None:
        outputs["val"] = predict(model, sets["val"].images, prep, feature_layer, device)
        fit_logits, fit_labels = outputs["val"][0], sets["val"].labels
        val_ood = mahalanobis(outputs["val"][1], mean, precision).numpy()
        fitted_on, ood_on = "val", "validation images"
        extras = {}
    else:
        outputs["val"] = (oof.logits[oof.in_val], None)
        fit_logits, fit_labels, val_ood = oof.logits, oof.labels, oof.ood
        folds = len(np.unique(oof.fold))
        fitted_on = f"out-of-fold predictions over train + val ({len(oof.labels)} images, {folds} folds)"
        ood_on = "out-of-fold images (each scored against its fold model's training features)"
        extras = oof.extras()
    compared = _cross_validated_ece(oof) if oof is not None else None
    # After cross-validation the calibrator is chosen by its cross-validated ECE; else the original method.
    method = min(compared, key=lambda m: compared[m]["train + val"]) if compared else calibrator
    calibrator, threshold = _calibration_rules(method, fit_logits, fit_labels)
    ood_threshold = float(np.quantile(val_ood, OOD_QUANTILE))
    labels = {"val": oof.labels[oof.in_val].numpy() if oof is not None else sets["val"].labels.numpy(),
              "test": sets["test"].labels.numpy()}
    metrics = {s: split_report(outputs[s][0], labels[s], calibrator, threshold) for s in ("val", "test")}
    calibration = {**calibrator.to_card(), "fitted_on": fitted_on}
    if oof is not None:
        metrics["cv"] = split_report(oof.logits, oof.labels.numpy(), calibrator, threshold)
        calibration["cross_validated_ece"] = compared
        calibration["rule"] = "the calibrator with the lowest cross-validated ECE when fitted on train + val"
    return {
        "task": "classification", "positive_label": splits.label_names[1],
        "calibration": calibration,
        "operating_point": {"threshold": threshold, "applies_to": f"calibrated probability of {splits.label_names[1]}",
                            "rule": f"most sensitive threshold with specificity >= 0.90 on the {fitted_on}, "
                                    "midway between the two scores around it"},
        "ood": {"method": "Mahalanobis distance of pooled CAM-layer features to the training set",
                "layer": get_spec(arch).cam_layer, "threshold": ood_threshold,
                "rule": f"{OOD_QUANTILE:.0%} quantile of the {ood_on}' scores"},
        "cam": {"method": "gradcam", "layer": get_spec(arch).cam_layer, "target": "predicted class"},
        "metrics": metrics,
        "_extras": {"ood_mean": mean, "ood_precision": precision, **extras},
    }


def _classifier_scores(loaded: LoadedModel, data) -> Scored:
    card, device = loaded.card, next(loaded.model.parameters()).device
    logits, _ = predict(loaded.model, data.images, loaded.preprocessing, cam_layer(loaded.model, card.arch), device)
    calibrator, labels = Calibrator.from_card(card.calibration), data.labels.numpy()
    return Scored(split_report(logits, labels, calibrator, card.operating_point["threshold"]), labels,
                  _positive_prob(logits, calibrator))


def _auc_difference(a: Scored, b: Scored) -> dict[str, list[float]]:
    both = np.stack([a.per_image, b.per_image], axis=1)
    point = auc(a.truth, b.per_image) - auc(a.truth, a.per_image)
    ci = bootstrap_ci(a.truth, both, lambda y, p: {"d": auc(y, p[:, 1]) - auc(y, p[:, 0])})["d"]
    return {"AUC": [float(point), *ci]}


def class_weights(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights for the loss (n / (k * n_c)): the minority class counts as much in total."""
    counts = torch.bincount(labels, minlength=n_classes).float().clamp_min(1)
    return counts.sum() / (n_classes * counts)


def _headline(metrics: dict) -> str:
    return f"AUC {metrics['auc']:.3f}"


def _rules(card: ModelCard) -> str:
    return (f"Operating threshold {card.operating_point['threshold']:.3f} ({card.operating_point['rule']}); "
            f"calibration: {Calibrator.from_card(card.calibration).summary()}; "
            f"OOD threshold {card.ood['threshold']:.1f}")


# ---- Analysis of stored cases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseResult(Outcome):
    id_field = "prediction_id"

    case_id: int
    image_id: int
    raw: Prediction = field(repr=False)  # the network's output, whether or not it is a result (see raw_output)
    prediction_id: int
    gray: np.ndarray  # the display image the model saw (first frame), for overlays
    verdict: Verdict = Verdict(ANALYSED)

    @property
    def prediction(self) -> Prediction | None:
        return self.result


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


def record_prediction(ctx: Context, classifier: Classifier, image: dict, prediction: Prediction,
                      verdict: Verdict) -> int:
    """One `predictions` row (and an audit row) with everything that produced the numbers. An abstention
    keeps the network's output for research, under status 'not_analysed' with its reason."""
    loaded = classifier.loaded
    values = {
        "status": verdict.status, "status_reason": verdict.reason, "task": TASK.name, "label": prediction.label,
        "probability": prediction.probability, "probabilities": json.dumps(prediction.probabilities),
        "probability_raw": prediction.probabilities_raw[loaded.card.positive_label],
        "probabilities_raw": json.dumps(prediction.probabilities_raw), "threshold": prediction.threshold,
        "uncertainty": prediction.uncertainty, "uncertainty_method": prediction.uncertainty_method,
        "ood_score": prediction.ood_score, "ood_threshold": prediction.ood_threshold,
        "ood_flag": int(prediction.out_of_distribution), "cam_method": prediction.cam_method,
        "device": str(classifier.device), "latency_ms": prediction.latency_ms,
    }
    return record(ctx, TASK, image, loaded, values, {
        "label": prediction.label if verdict.analysed else "not analysed",
        **({} if verdict.analysed else {"reason": verdict.reason})})


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


def load_classifier(ctx: Context | Config, name: str | None = None) -> Classifier:
    """The named installed classifier (default: the active one), loaded once on the chosen device."""
    return load(ctx, TASK, name)


def verified_model(config: Config, task: Task, row: dict):
    """The model with the very weights that produced a logged row (ExportError when they are gone)."""
    try:
        model = load_path(task, find_model(config, row["model_name"]).path)
    except UnknownModel:
        model = None
    if model is None or model.loaded.sha256 != row["weights_sha256"]:
        raise ExportError(f"the weights of {row['model_name']} v{row['model_version']} that produced this result "
                          "are no longer installed; run the case again to export its result")
    return model


def percent(p: float) -> str:
    return "> 99.9 %" if p > 0.999 else "< 0.1 %" if p < 0.001 else f"{p:.1%}".replace("%", " %")


def ci_text(metrics: dict, key: str) -> str:
    low_high = (metrics.get("ci95") or {}).get(key)
    return f" (95 % CI {low_high[0]:.3f}-{low_high[1]:.3f})" if low_high else ""


def card_metrics(test: dict) -> list[str]:
    return [f"AUC {test['auc']:.3f}{ci_text(test, 'auc')}",
            f"Sensitivity {test['sensitivity']:.3f}{ci_text(test, 'sensitivity')}, "
            f"specificity {test['specificity']:.3f}{ci_text(test, 'specificity')}",
            f"ECE {test['ece']:.3f}{ci_text(test, 'ece')} after calibration; n = {test['n']}"]


def probability_lines(p: dict, card: ModelCard | None) -> list:
    """A calibrated prediction: the label against the threshold, its calibration and its OOD check."""
    positive = card.positive_label if card else "the positive label"
    flagged = p["label"] == positive
    calibrator = Calibrator.from_card(card.calibration) if card and card.calibration else None
    summary = calibrator.summary() if calibrator else "none"
    calibration = summary if not calibrator or summary.startswith(calibrator.method) else \
        f"{calibrator.method} ({summary})"
    ood = p["ood_score"] > p["ood_threshold"]
    return [Line(f"{p['label'].capitalize()}: calibrated probability of {positive} {percent(p['probability'])}, "
                 f"{'above' if flagged else 'below'} the operating threshold {percent(p['threshold'])}", 11,
                 warn=flagged, bold=True),
            Bar(p["probability"], p["threshold"]),
            Line(f"Calibration: {calibration}; uncalibrated probability {percent(p['probability_raw'])}.", 8.5,
                 muted=True),
            Line(f"Out-of-distribution check: {'UNLIKE the training images' if ood else 'in distribution'} "
                 f"(score {p['ood_score']:.1f}, threshold {p['ood_threshold']:.1f})", warn=ood)]


def _report(p: dict, card: ModelCard | None) -> list:
    lines = probability_lines(p, card)
    spread = (f"+/- {p['uncertainty']:.1%} (spread over test-time augmentation)"
              if p["uncertainty_method"].startswith("tta") else
              f"{p['uncertainty']:.2f} bits (predictive entropy; 0 = certain, 1 = coin toss)")
    return [*lines[:3], Line(f"Uncertainty: {spread}"), *lines[3:]]


_CAMS: dict[tuple, np.ndarray] = {}  # (home, prediction id, weights) -> overlay; a logged row never changes


def _evidence(config: Config, p: dict, gray: np.ndarray) -> tuple[np.ndarray, str]:
    """The Grad-CAM of the prediction, recomputed from its own weights (deterministic; not worth a BLOB), once per
    logged prediction in a process: the report, the DICOM download and the push of one case share it."""
    key = (str(config.home), p["id"], p["weights_sha256"])
    if key not in _CAMS:
        if len(_CAMS) >= 16:
            _CAMS.pop(next(iter(_CAMS)))
        _CAMS[key] = overlay(gray, verified_model(config, TASK, p).classify(gray).cam)
    return _CAMS[key], "Grad-CAM: where the model looked, not a lesion outline"


def finding(p: dict, card: ModelCard | None, explanation: str) -> derived.Finding:
    return derived.Finding(p["label"], p["probability"], card.positive_label if card else "", p["threshold"],
                           p["uncertainty"], p["uncertainty_method"] or "", p["ood_score"], p["ood_threshold"],
                           explanation)


def _objects(config: Config, p: dict, source, gray: np.ndarray) -> Contribution:
    """A Secondary Capture of the Grad-CAM overlay (banner burned in) and the SR finding that references it."""
    single_frame(source)
    card = verified_model(config, TASK, p).loaded.card
    evidence, _ = _evidence(config, p, gray)
    rgb = with_banner(evidence, BURNED_IN, [
        f"RadLens {p['model_name']} v{p['model_version']}: {p['label']}. Calibrated probability of "
        f"{card.positive_label} {p['probability']:.1%} (operating threshold {p['threshold']:.1%})",
        f"Grad-CAM ({p['cam_method'] or 'gradcam'}): where the model looked, not a lesion outline"])
    capture = derived.secondary_capture(source, rgb, "RadLens Grad-CAM (research use only)", algorithm_of(p),
                                        "Grad-CAM heat map of the model's evidence over the source image")
    return Contribution([("sc-cam", capture)], finding(p, card, p["cam_method"] or "gradcam"))


OVERLAY_MAX_SIDE = 512  # a CAM overlay kept by a batch run: a screen's worth (the CAM itself is 1/32 of the input)


def _batch_rows(model: Classifier, scope: Scope, batch: list, options, timings: dict[str, float]) -> list[dict]:
    predictions = model.classify_batch([d.gray for d in batch], cam=options.cam, timings=timings)
    out = []
    for d, p in zip(batch, predictions):
        verdict = scope.judge(d.modality, d.body_part, p.ood_score, p.ood_threshold)
        start = time.perf_counter()
        cam_png = fast_png(overlay(d.gray, p.cam, max_side=OVERLAY_MAX_SIDE)) \
            if p.cam is not None and verdict.analysed else None
        timings["encode"] = timings.get("encode", 0.0) + time.perf_counter() - start
        out.append({
            "status": verdict.status, "status_reason": verdict.reason, "label": p.label,
            "probability": p.probability, "probabilities": json.dumps(p.probabilities),
            "probabilities_raw": json.dumps(p.probabilities_raw), "threshold": p.threshold,
            "uncertainty": p.uncertainty, "uncertainty_method": p.uncertainty_method,
            "ood_score": p.ood_score, "ood_threshold": p.ood_threshold, "ood_flag": int(p.out_of_distribution),
            "cam_method": p.cam_method if p.cam is not None else "", "overlay_png": cam_png,
            "latency_ms": p.latency_ms})
    return out


def _batch_record(row: dict, card: ModelCard) -> dict:
    raw = json.loads(row["probabilities_raw"] or "{}")
    return {"task": TASK.name, "label": row["label"], "probability": row["probability"],
            "probabilities": row["probabilities"], "probability_raw": raw.get(card.positive_label),
            "probabilities_raw": row["probabilities_raw"], "threshold": row["threshold"],
            "uncertainty": row["uncertainty"], "uncertainty_method": row["uncertainty_method"],
            "ood_score": row["ood_score"], "ood_threshold": row["ood_threshold"], "ood_flag": row["ood_flag"],
            "cam_method": row["cam_method"]}


BATCH_COLUMNS = {"label": str, "probability": float, "probabilities": str, "probabilities_raw": str, "threshold": float,
                 "uncertainty": float, "uncertainty_method": str, "ood_score": float, "ood_threshold": float,
                 "ood_flag": int, "cam_method": str}

ANALYSIS = Analysis(
    kind="probability", table="predictions", audit_action="predict", page="pages/diagnosis.py", runner=Classifier,
    run=lambda ctx, model, image, tta=0: diagnose_image(ctx, model, image, tta),
    run_cases=lambda ctx, model, case_ids, progress: diagnose_cases(ctx, model, case_ids, progress)[1],
    report=_report, evidence=_evidence, card_metrics=card_metrics, objects=_objects,
    batch_rows=_batch_rows, batch_record=_batch_record, batch_columns=BATCH_COLUMNS,
    owns=lambda row: (row.get("task") or "classification") == "classification",
)


TASK = Task(
    name="classification", title="Classification", defaults=FormDefaults(size=224, batch_size=32, epochs=10),
    loss=lambda train, cfg: torch.nn.CrossEntropyLoss(
        weight=class_weights(train.labels, 2) if cfg.balance == "weights" else None,
        label_smoothing=cfg.label_smoothing),
    loss_text="cross-entropy with inverse-frequency class weights",
    augmentation=augmentation,
    augmentation_text="affine (rotate <= 7 deg, shift <= 5 %, scale 0.92-1.08), brightness/contrast 0.15; no flips",
    validate=_validate_classifier, score="val_auc", describe=_describe_classifier,
    scores=_classifier_scores, difference=_auc_difference, headline=_headline,
    headline_numbers=lambda m: {"auc": m["auc"]}, rules=_rules, class_balancing=True, uses_reviews=True,
    cross_validates=True, label_smoothing=True, synthetic_images=True,
    analysis=ANALYSIS,
)
