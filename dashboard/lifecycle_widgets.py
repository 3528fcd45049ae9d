"""Models page lifecycle pieces: promote, roll back, compare two versions on one held-out split, history."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import model_widgets, resources, state
from dashboard.text import md
from engine.errors import EngineError
from engine.models import InstalledModel, activation_log
from engine.store import Store
from engine.tasks import get_task

__all__ = ["promote_button", "confirm_activation", "pending_activation", "rollback_buttons", "compare",
           "side_by_side", "history"]


def promote_button(model: InstalledModel, active_name: str) -> bool:
    """Whether the user asked to make `model` the active one of its task."""
    return model.name != active_name and st.button(f"Promote {model.name} to active {model.task} model",
                                                   icon=":material/upgrade:", type="primary")


def confirm_activation(candidate: InstalledModel, active: InstalledModel, action: str) -> str | None:
    """The confirmation a promotion or roll back needs: the candidate against the active model on the same
    held-out test split, and a reason. Returns the reason when confirmed; clears the request on Cancel."""
    verb = "Roll back to" if action == "model.rollback" else "Promote"
    with st.container(border=True):
        st.markdown(md("**Confirm: {verb} {name} as the active {task} model** (replacing {old}). Every clinician's "
                       "next case uses it.", verb=verb, name=candidate.name, task=candidate.task, old=active.name))
        try:
            side_by_side(active.name, candidate.name, candidate.task)
        except EngineError as error:
            st.warning(md("The held-out comparison cannot run here ({error}); compare the cards' own test "
                          "results instead:", error=error))
            st.dataframe(pd.DataFrame([{"Model": m.name, "Test split (its card)": model_widgets.headline(m.card)}
                                       for m in (active, candidate)]), hide_index=True)
        with st.form("confirm.activation"):
            reason = st.text_area("Reason (kept in the audit trail with your name)", max_chars=500,
                                  placeholder="e.g. higher specificity on the held-out split, reviewed with the lead")
            c1, c2 = st.columns([1, 4])
            confirmed = c1.form_submit_button(f"Confirm: {verb.lower()} {candidate.name}", type="primary")
            cancelled = c2.form_submit_button("Cancel")
    if cancelled:
        st.session_state.pop(state.CONFIRM, None)
        st.rerun()
    return reason if confirmed else None


def pending_activation(models: list[InstalledModel], active: dict[str, str]
                       ) -> tuple[str, InstalledModel, str] | None:
    """(action, model, reason) once the promotion or roll back the user asked for is confirmed."""
    if not (pending := st.session_state.get(state.CONFIRM)):
        return None
    action, name = pending
    by_name = {m.name: m for m in models}
    target = by_name[name]
    reason = confirm_activation(target, by_name[active[target.task]], action)
    return None if reason is None else (action, target, reason)  # the page clears the request once it is done


def rollback_buttons(active: dict[str, str], targets: dict[str, InstalledModel | None], allowed: bool) -> str | None:
    """The active model per task with a roll-back button where there is an earlier one; returns the task
    whose roll back was asked for."""
    asked = None
    for task, name in active.items():
        target = targets.get(task)
        c1, c2 = st.columns([3, 2])
        c1.text(f"Active {task} model: {name}")
        if allowed and target and target.name != name and c2.button(
                f"Roll back to {target.name}", key=f"rollback.{task}", icon=":material/undo:"):
            asked = task
    return asked


def _confusions(reports: dict[str, dict]) -> None:
    for column, (name, report) in zip(st.columns(len(reports)), reports.items()):
        c = report["confusion"]
        figure = go.Figure(go.Heatmap(z=[[c["tn"], c["fp"]], [c["fn"], c["tp"]]], x=["predicted negative",
                           "predicted positive"], y=["truly negative", "truly positive"], text=[[c["tn"], c["fp"]],
                           [c["fn"], c["tp"]]], texttemplate="%{text}", colorscale="Blues", showscale=False))
        figure.update_layout(title=f"{name}: confusion at its threshold", height=280, margin=dict(l=0, r=0, t=40, b=0))
        column.plotly_chart(figure, width="stretch", key=f"confusion.{name}")


def compare(models: list[InstalledModel], active: dict[str, str], chosen: InstalledModel) -> None:
    """Pick two versions of one task; on request, both are evaluated on the first one's held-out test split."""
    same_task = [m.name for m in models if m.task == chosen.task]
    c1, c2 = st.columns(2)
    first = c1.selectbox("Version A", same_task, index=same_task.index(active[chosen.task]), key="compare.a")
    second = c2.selectbox("Version B", same_task, index=same_task.index(chosen.name),
                          key=f"compare.b.{chosen.name}")  # follows the model card chosen above
    if first == second:
        st.caption("Choose two different versions to compare them.")
        return
    if not st.toggle("Evaluate both on the held-out test split", key="compare.run",
                     help="Runs both models on the same images now (seconds on a CPU); results are cached"):
        return
    side_by_side(first, second, chosen.task)


def side_by_side(first: str, second: str, task: str) -> None:
    """Both models on the first one's held-out test split, with the paired difference (EngineError when that
    split's dataset is not here)."""
    result = resources.comparison(resources.context(), (first, second))
    reports = result["reports"]
    st.caption("Each model with its own threshold / calibration (or boundary offset), on version A's dataset's "
               "test split; 95 % bootstrap CIs.")
    st.markdown(md("**B - A, paired over the same {n} images:** ", n=next(iter(reports.values()))["n"]) + "; ".join(
        md("{name} {d:+.4f} (95 % CI {lo:+.4f} to {hi:+.4f}, " + ("excludes 0" if lo > 0 or hi < 0 else
           "includes 0: no difference established") + ")", name=name, d=d, lo=lo, hi=hi)
        for name, (d, lo, hi) in result["difference"].items()))
    COMPARISON_VIEWS[get_task(task).analysis.kind](reports)


def _classification_comparison(reports: dict[str, dict]) -> None:
    model_widgets.card_metrics(reports)
    c1, c2 = st.columns(2)
    with c1:
        model_widgets.roc_chart(reports)
    with c2:
        model_widgets.reliability_overlay(reports)
    _confusions(reports)


# How two models' reports are drawn side by side, per kind of result (a task's `analysis.kind`).
COMPARISON_VIEWS = {"probability": _classification_comparison, "mask": model_widgets.seg_card_metrics}


def history(store: Store) -> None:
    rows = activation_log(store)
    if not rows:
        st.caption("No promotion or roll back yet: the shipped models are active.")
        return
    frame = pd.DataFrame(rows)[["at", "actor", "role", "action", "task", "model", "version", "replaced", "reason"]]
    frame["at"] = frame["at"].str.slice(0, 19).str.replace("T", " ")
    st.dataframe(frame.rename(columns={"at": "When (UTC)", "actor": "Who", "role": "Role", "action": "Action",
                                       "task": "Task", "model": "Model", "version": "Version", "replaced": "Replaced",
                                       "reason": "Reason"}),
                 hide_index=True, width="stretch")
