"""Renderers for model outputs: CAM overlay, probability bars, review form, history, model cards."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from dashboard import links, state, widgets
from dashboard.text import md, plain
from dashboard.widgets import image_view
from engine.cases import MAX_COMMENT, VERDICTS, case_history, review_case
from engine.context import Context
from engine.draw import COLORMAPS, DISPLAY_MAX_SIDE, overlay
from engine.inference import (
    OOD_WARNING,
    Classifier,
    Prediction,
    ood_in_words,
    operating_point_in_words,
    uncertainty_in_words,
)
from engine.io import Rendered
from engine.models import ModelCard, Preprocessing, Scope
from engine.tasks import CaseResult, get_task, raw_output

__all__ = ["overlay_controls", "result_panel", "plain_view", "cam_view", "prediction_panel", "review_form",
           "saved_reading", "history", "card_metrics", "roc_chart", "reliability_chart", "reliability_overlay",
           "prep_text", "card_details", "headline", "card_summary", "seg_card_metrics"]


def overlay_controls() -> tuple[bool, float, str]:
    c1, c2, c3 = st.columns([1, 2, 1])
    show = c1.toggle("Overlay", value=True, help="Grad-CAM heatmap of the model's evidence")
    opacity = c2.slider("Opacity", 0.0, 1.0, 0.4, 0.05, disabled=not show)
    colormap = c3.selectbox("Colormap", list(COLORMAPS), disabled=not show)
    return show, opacity, colormap


def result_panel(ctx: Context, classifier: Classifier, result: CaseResult) -> Prediction | None:
    """The model's result and the review form, or, outside the model's scope, the abstention (the raw output
    behind a switch for a role that may see it, fetched and logged once). Returns what the image may show."""
    card, prediction = classifier.loaded.card, result.prediction
    if prediction is None and widgets.abstention(result.verdict, ctx.user.may("case.raw_output"),
                                                 f"diagnosis.raw.{result.prediction_id}"):
        prediction = widgets.once_per_opening(state.RAW_OUTPUT, (result.prediction_id,),
                                              lambda: raw_output(ctx, result))
        widgets.raw_output_banner()
    if prediction is not None:
        prediction_panel(prediction, card)
    if result.prediction is None:
        return prediction  # nothing to review: the model gave no result
    if not ctx.user.may("case.review"):
        st.caption("Reviews are recorded by clinicians: your role can read results but not review them.")
    else:
        reading = st.container()
        if submitted := review_form(classifier.loaded.labels, key=f"review.{result.case_id}"):
            _, jobs = review_case(ctx, result.case_id, *submitted, prediction_id=result.prediction_id)
            st.success("Review saved." + (f" Its results are being sent to the source PACS (job {jobs[0]})."
                                          if jobs else ""), icon=":material/check:")
        with reading:
            saved_reading(ctx.store, result.case_id)
    return prediction


def plain_view(gray) -> None:
    """The image the model saw, without any overlay (an abstained case)."""
    image_view(Rendered(gray, (), None), height=640)


def cam_view(gray, prediction: Prediction, show: bool, opacity: float, colormap: str) -> None:
    image = overlay(gray, prediction.cam, opacity, colormap, DISPLAY_MAX_SIDE) if show else gray
    image_view(Rendered(image, (), None), height=640)
    if show:
        st.caption(md("Grad-CAM ({method}) of **{label}**: warm colours mark the regions that raised that "
                      "class's score most. It shows where the model looked, not a lesion outline. Shown at up to "
                      "{side} px; the Viewer has the full resolution.", method=prediction.cam_method,
                      label=prediction.label, side=DISPLAY_MAX_SIDE))


def prediction_panel(prediction: Prediction, card: ModelCard) -> None:
    model_name, model_version, positive = card.name, card.version, card.positive_label
    if prediction.out_of_distribution:
        st.warning(md(OOD_WARNING + " (OOD score {score:.1f} > threshold {threshold:.1f})",
                      score=prediction.ood_score, threshold=prediction.ood_threshold), icon=":material/warning:")
    flagged = prediction.label == positive
    caveat = " (unreliable for this image)" if prediction.out_of_distribution else ""
    st.metric(md("Calibrated probability of {positive}" + caveat, positive=positive),
              percent(prediction.probability))
    side = ":orange-badge[Above" if flagged else ":green-badge[Below"
    st.markdown(md(side + " the operating threshold {threshold:.1%}: **{label}**]", threshold=prediction.threshold,
                   label=prediction.label))
    if meaning := operating_point_in_words(card):
        st.caption(plain(meaning))
    spread = ("± {:.1%} (spread over test-time augmentation)" if prediction.uncertainty_method.startswith("tta")
              else "{:.2f} bits (predictive entropy; 0 = certain, 1 = coin toss)").format(prediction.uncertainty)
    st.markdown(md("**Uncertainty:** {spread}, {uncertainty}  \n**OOD score:** {score:.1f} (threshold "
                   "{threshold:.1f}), {ood}", spread=spread, uncertainty=uncertainty_in_words(prediction),
                   score=prediction.ood_score, threshold=prediction.ood_threshold, ood=ood_in_words(prediction)))
    probability_bars(prediction)
    if card.limitations:
        with st.expander("What this model is for, and its limits (from its card)"):
            st.text("\n".join(f"- {line}" for line in card.limitations))
    st.caption(md("Model **{name}** v{version} - {ms:.0f} ms (preprocess + forward + Grad-CAM)",
                  name=model_name, version=model_version, ms=prediction.latency_ms))
    links.page_link("models", label="Model card", icon=":material/description:",
                 query_params={"model": model_name})


def percent(p: float) -> str:
    """A probability as a percentage that never rounds to a false 0 % or 100 %."""
    return "> 99.9%" if p > 0.999 else "< 0.1%" if p < 0.001 else f"{p:.1%}"


def probability_bars(prediction: Prediction) -> None:
    labels = list(prediction.probabilities)
    figure = go.Figure([
        go.Bar(y=labels, x=[prediction.probabilities[k] for k in labels], orientation="h", name="calibrated",
               text=[percent(prediction.probabilities[k]) for k in labels], textposition="auto"),
        go.Bar(y=labels, x=[prediction.probabilities_raw[k] for k in labels], orientation="h", name="raw",
               opacity=0.45),
    ])
    figure.add_vline(x=prediction.threshold, line_dash="dash", line_color="orange",
                     annotation_text=f"threshold {prediction.threshold:.2f}", annotation_position="top")
    figure.update_layout(height=190, margin=dict(l=0, r=0, t=24, b=0), xaxis=dict(range=[0, 1], tickformat=".0%"),
                         barmode="group", legend=dict(orientation="h", y=-0.3))
    st.plotly_chart(figure, config={"displayModeBar": False}, width="stretch")


VERDICT_NAMES = {"agree": "Agree", "disagree": "Disagree", "corrected": "Corrected label"}


def review_form(labels: list[str], key: str) -> tuple[str, str, str] | None:
    """Agree / disagree / corrected label + comment; returns (verdict, label, comment) when submitted. Nothing is
    chosen beforehand: a preselected verdict invites agreeing with the model by default."""
    with st.form(key, clear_on_submit=True, border=True):
        verdict = st.radio("Your reading", VERDICTS, index=None, horizontal=True, format_func=VERDICT_NAMES.get)
        label = st.selectbox("Correct label (for a corrected label)", ["", *labels])
        comment = st.text_area("Comment", placeholder="What you saw, why you disagree, follow-up...",
                               max_chars=MAX_COMMENT)
        if st.form_submit_button("Save review", type="primary", icon=":material/rate_review:"):
            if verdict is None:
                st.error("Choose your reading first (agree, disagree or a corrected label): nothing was saved.",
                         icon=":material/error:")
                return None
            return verdict, label, comment
    return None


def _minute(iso: str) -> str:
    return dt.datetime.fromisoformat(iso).astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def saved_reading(store, case_id: int) -> None:
    """The case's latest review, in place above the form (the full history is further down)."""
    reviews = case_history(store, case_id)["reviews"]
    if not reviews:
        st.caption("Not reviewed yet.")
        return
    latest = reviews[0]
    corrected = f" to {latest['label']}" if latest["verdict"] == "corrected" and latest["label"] else ""
    st.info(plain(f"Saved reading: {VERDICT_NAMES.get(latest['verdict'], latest['verdict'])}{corrected}, by "
                  f"{latest['reviewer']} at {_minute(latest['created_at'])}" +
                  (f". Comment: {latest['comment']}" if latest["comment"] else "") +
                  (f" ({len(reviews)} readings in all: see the history below)" if len(reviews) > 1 else "")),
            icon=":material/rate_review:")


def history(records: dict[str, list[dict]]) -> None:
    c1, c2 = st.columns(2)
    c1.markdown("**Predictions** (every model version that ran on this case)")
    c1.dataframe(pd.DataFrame(records["predictions"]), hide_index=True, width="stretch",
                 column_config={"probability": st.column_config.NumberColumn(format="%.3f"),
                                "uncertainty": st.column_config.NumberColumn(format="%.3f"),
                                "ood_score": st.column_config.NumberColumn(format="%.1f"),
                                "latency_ms": st.column_config.NumberColumn(format="%.0f")})
    c2.markdown("**Reviews**")
    if records["reviews"]:
        c2.dataframe(pd.DataFrame(records["reviews"]), hide_index=True, width="stretch")
    else:
        c2.caption("No review yet.")


_METRICS = (("auc", "AUC"), ("accuracy", "Accuracy"), ("accuracy_at_0.5", "Accuracy at p >= 0.5"),
            ("sensitivity", "Sensitivity"), ("specificity", "Specificity"),
            ("precision", "Precision"), ("f1", "F1"), ("sensitivity_at_specificity_0.90", "Sensitivity @ spec 0.90"),
            ("specificity_at_sensitivity_0.95", "Specificity @ sens 0.95"),
            ("negatives_above_0.9", "Negatives called positive at p >= 0.9 (count)"),
            ("ece_before_calibration", "ECE before calibration"), ("ece", "ECE after calibration"),
            ("ece_if_calibrated", "ECE a perfectly calibrated model would show (noise floor)"))


def _metric_text(m: dict, key: str) -> str:
    value = m.get(key)
    if value is None:
        return ""  # a card written before this metric existed
    if isinstance(value, dict):  # {"mean", "ci95"}
        return f"{value['mean']:.3f} ({value['ci95'][0]:.3f}-{value['ci95'][1]:.3f})"
    if isinstance(value, int):
        return str(value)
    ci = f" ({m['ci95'][key][0]:.3f}-{m['ci95'][key][1]:.3f})" if key in m.get("ci95", {}) else ""
    return f"{value:.3f}{ci}"


def card_metrics(metrics: dict) -> None:
    """A classifier's metrics per split (or per model), with their 95 % CIs."""
    rows = []
    for key, name in _METRICS:
        if not any(key in m for m in metrics.values()):
            continue
        rows.append({"Metric": name, **{f"{split} (n={m['n']})": _metric_text(m, key) for split, m in metrics.items()}})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def roc_chart(metrics: dict) -> None:
    figure = go.Figure([go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line_dash="dot", name="chance")])
    for split, m in metrics.items():
        figure.add_scatter(x=m["roc"]["fpr"], y=m["roc"]["tpr"], mode="lines", name=f"{split} AUC {m['auc']:.3f}")
    figure.update_layout(title="ROC", xaxis_title="1 - specificity", yaxis_title="sensitivity", height=380,
                         margin=dict(l=0, r=0, t=40, b=0))
    st.plotly_chart(figure, width="stretch")


def reliability_chart(metrics: dict, split: str = "test") -> None:
    m = metrics[split]
    frames = []
    for name, bins in (("before", m["reliability_before_calibration"]), ("after", m["reliability"])):
        frames += [{"calibration": name, "predicted": c, "observed": o, "images": n} for c, o, n in bins if n]
    figure = px.scatter(pd.DataFrame(frames), x="predicted", y="observed", size="images", color="calibration",
                        title=f"Reliability ({split}): ECE {m['ece_before_calibration']:.3f} -> {m['ece']:.3f}")
    figure.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line_dash="dot", name="perfect")
    figure.update_layout(height=380, margin=dict(l=0, r=0, t=40, b=0))
    st.plotly_chart(figure, width="stretch")


def reliability_overlay(reports: dict[str, dict]) -> None:
    """The calibrated reliability curves of several models (or splits) on one chart."""
    frames = [{"model": f"{name} (ECE {m['ece']:.3f})", "predicted": c, "observed": o, "images": n}
              for name, m in reports.items() for c, o, n in m["reliability"] if n]
    figure = px.line(pd.DataFrame(frames), x="predicted", y="observed", color="model", markers=True,
                     title="Reliability, calibrated (test)")
    figure.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line_dash="dot", name="perfect")
    figure.update_layout(height=380, margin=dict(l=0, r=0, t=40, b=0))
    st.plotly_chart(figure, width="stretch")


_SEG_METRICS = (("dice", "Dice", 3), ("iou", "IoU", 3), ("hd95_mm", "HD95 (mm)", 2),
                ("hc_abs_error_mm", "HC absolute error (mm)", 2), ("hc_error_mm", "HC error, signed (mm)", 2),
                ("hc_abs_error_of_truth_fit_mm", "Floor: HC error of the truth masks (mm)", 2))


def seg_card_metrics(metrics: dict) -> None:
    """Mean (95 % CI) [median, 90th percentile] per split, at the images' own size."""
    rows = []
    for key, name, digits in _SEG_METRICS:
        row = {"Metric": name}
        for split, m in metrics.items():
            v = m[key]
            row[f"{split} (n={m['n']})"] = (f"{v['mean']:.{digits}f} "
                                            f"({v['ci95'][0]:.{digits}f}-{v['ci95'][1]:.{digits}f})"
                                            f"  [median {v['median']:.{digits}f}, p90 {v['p90']:.{digits}f}]")
        rows.append(row)
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def headline(card: ModelCard) -> str:
    """The one-line test result the models table shows, as the card's task words it."""
    return get_task(card.task).headline(card.test_metrics) if card.test_metrics else "not evaluated"


def _classification_charts(metrics: dict) -> None:
    card_metrics(metrics)
    c1, c2 = st.columns(2)
    with c1:
        roc_chart(metrics)
    with c2:
        reliability_chart(metrics)


# How each kind of result's held-out metrics are drawn (a task's `analysis.kind`; its rules come from the task).
CARD_VIEWS = {"probability": _classification_charts, "mask": seg_card_metrics}


def card_summary(card: ModelCard) -> None:
    """The card's decision rules and its metrics, as the task defines them."""
    if not card.metrics:
        st.warning("This card has no held-out metrics: compare the model below before trusting it.",
                   icon=":material/warning:")
        return
    st.text(get_task(card.task).rules(card))
    CARD_VIEWS[get_task(card.task).analysis.kind](card.metrics)


def prep_text(card: ModelCard) -> str:
    return Preprocessing.from_dict(card.preprocessing).summary()


def plain_cv(cv: dict) -> str:
    return f"Cross-validation: {cv['folds']} {cv['grouping']}-grouped folds over {cv['images']} images; {cv['note']}."


def card_details(card: ModelCard) -> None:
    """Data counts, training record and limitations: the rest of the card, as written."""
    if not card.training or not card.data:
        st.caption("This card does not record its data or training.")
        return
    c1, c2 = st.columns(2)
    c1.markdown("**Images per split and label**")
    c1.dataframe(pd.DataFrame(card.data["counts"]).T, width="stretch")
    training = card.training
    c2.markdown("**Training**")
    c2.code(training["command"], language="bash")
    c2.text(f"{training['hardware']}; {training['wall_time_s'] / 60:.1f} min; {training['epochs_run']} epochs "
            f"(best {training['best_epoch'] + 1}); {training['optimizer']}; {training['loss']}; "
            f"augmentation: {training['augmentation']}; weights {training['weights_dtype']}")
    if card.data.get("cross_validation"):
        c2.text(plain_cv(card.data["cross_validation"]))
    scope = Scope.from_card(card)
    c2.markdown(md("**Scope**: {description}. Modalities {modalities}; body parts {parts}. Outside it the model "
                   "answers \"not analysed\".", description=scope.description,
                   modalities=", ".join(scope.modalities) or "any", parts=", ".join(scope.body_parts) or "any"))
    if training.get("fine_tuned_from"):
        base = training["fine_tuned_from"]
        c2.markdown(md("Fine-tuned from **{name}** v{version} ({sha})", name=base["name"], version=base["version"],
                       sha=base["weights_sha256"][:12]))
    reviews = card.data.get("reviews")
    if reviews:
        st.markdown(md("**Clinician reviews used for training** ({n}): review ids {ids}; cases {cases}; {how} the "
                       "dataset's training split.", n=len(reviews["used"]), ids=", ".join(map(str, reviews["used"])),
                       cases=", ".join(map(str, reviews["cases"])),
                       how="added to" if reviews["with_base_train"] else "instead of"))
        if reviews.get("reviewers"):
            st.text("Reviewed by: " + ", ".join(f"{who} ({n})" for who, n in reviews["reviewers"].items()))
        if reviews["left_out"]:
            st.text("Left out: " + "; ".join(f"review {k}: {v}" for k, v in reviews["left_out"].items()))
    st.markdown("**Known limitations**\n" + "\n".join("- " + plain(item) for item in card.limitations))
