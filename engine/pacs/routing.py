"""Which model analyses what arrives from a PACS, and the background analysis of arrivals.

A task routes a study when routing is on for it (the default; an administrator can turn a task off) and
the study's header lies inside its active model's scope (the card's modalities and body parts): CR/DX
chest -> the classifier, US -> the fetal-head segmenter. A study no model applies to is stored and listed,
not analysed. Arrivals are recorded per case; pushed studies are routed once no instance of them arrived
for the quiet period (RADLENS_DICOM_QUIET_S), pulled ones as soon as the pull ends. Routed cases are
analysed by an "analyse" job (engine.cases.analysis), never in the listener or the dashboard.
"""

from __future__ import annotations

import json
import time

from engine.context import Context
from engine.errors import EngineError, UnknownModel
from engine.jobs.queue import submit
from engine.models.installed import InstalledModel, active_model
from engine.models.scope import Scope
from engine.store import Store, utc_now
from engine.tasks import task_names

__all__ = ["routing_rules", "set_routing", "route_descriptions", "routed_scopes", "routes_for", "note_arrival",
           "route_ready", "route_cases"]

_SETTING = "pacs_routing"


def routing_rules(store: Store) -> dict[str, bool]:
    """task -> whether arriving studies inside its active model's scope are analysed (default: yes)."""
    saved = json.loads(store.setting(_SETTING) or "{}")
    return {task: bool(saved.get(task, True)) for task in task_names()}


def set_routing(ctx: Context, task: str, enabled: bool) -> None:
    ctx.require("pacs.configure")
    if task not in task_names():
        raise EngineError(f"unknown task {task!r}: use one of {', '.join(task_names())}")
    rules = {**routing_rules(ctx.store), task: bool(enabled)}
    with ctx.store.write() as db:
        db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", [_SETTING, json.dumps(rules)])
        ctx.audit(db, "pacs.routing", "task", task, {"enabled": bool(enabled)})


def _active_models(ctx: Context) -> dict[str, InstalledModel]:
    """task -> its active model, for the tasks that have one."""
    models = {}
    for task in task_names():
        try:
            models[task] = active_model(ctx, task)
        except UnknownModel:
            continue
    return models


def routed_scopes(ctx: Context) -> dict[str, Scope]:
    """task -> its active model's scope, for the tasks routing is on for."""
    rules = routing_rules(ctx.store)
    return {task: Scope.from_card(model.card) for task, model in _active_models(ctx).items() if rules[task]}


def routes_for(scopes: dict[str, Scope], case: dict) -> list[str]:
    """The tasks whose scope takes this case's header (positively: an image whose header does not name a
    modality the model was trained on is not routed to it)."""
    modality = (case.get("modality") or "").strip().upper()
    return [task for task, scope in scopes.items()
            if (not scope.modalities or modality in scope.modalities)
            and scope.outside(modality, case.get("body_part") or "") is None]


def note_arrival(ctx: Context, case_id: int, origin: str) -> None:
    """One more instance of this case arrived (its quiet period starts again; a routed case routes again)."""
    now = utc_now()
    with ctx.store.write() as db:
        updated = db.execute("UPDATE arrivals SET instances = instances + 1, origin = ?, last_at = ?, last_seen = ?, "
                             "routed_at = NULL, job_id = NULL WHERE case_id = ?", [origin, now, time.time(), case_id])
        if not updated.rowcount:
            db["arrivals"].insert({"case_id": case_id, "origin": origin, "instances": 1, "first_at": now,
                                   "last_at": now, "last_seen": time.time()})


def route_ready(ctx: Context, quiet_seconds: float) -> int | None:
    """Route every pushed arrival quiet for `quiet_seconds` (a pull routes its own study when it ends);
    returns the analysis job's id, if one was needed."""
    with ctx.store.read() as db:
        ready = [r[0] for r in db.execute("SELECT case_id FROM arrivals WHERE routed_at IS NULL AND last_seen <= ? "
                                          "AND origin LIKE 'pushed by %' ORDER BY case_id",
                                          [time.time() - quiet_seconds])]
    return route_cases(ctx, ready) if ready else None


def route_cases(ctx: Context, case_ids: list[int]) -> int | None:
    """Queue one analysis job for the cases some model applies to; mark every one routed (those no model
    applies to stay stored and listed). Returns the job id, or None when nothing needed analysing."""
    plan: dict[str, list[int]] = {}
    with ctx.store.read() as db:
        cases = {r["id"]: r for r in db.query(
            f"SELECT id, modality, body_part FROM cases WHERE id IN ({','.join('?' * len(case_ids))})", case_ids)}
    scopes = routed_scopes(ctx)
    for case_id in case_ids:
        for task in routes_for(scopes, cases.get(case_id, {})):
            plan.setdefault(task, []).append(case_id)
    job_id = submit(ctx, "analyse", task=",".join(plan), config={"plan": plan},
                    detail={"cases": sum(map(len, plan.values())), "tasks": list(plan)}) if plan else None
    with ctx.store.write() as db:
        db.execute(f"UPDATE arrivals SET routed_at = ?, job_id = ? WHERE case_id IN "
                   f"({','.join('?' * len(case_ids))})", [utc_now(), job_id, *case_ids])
    return job_id


def route_descriptions(ctx: Context) -> dict[str, str]:
    """task -> what its active model analyses (the card's scope), for the routing form."""
    return {task: f"{model.name} ({Scope.from_card(model.card).description})"
            for task, model in _active_models(ctx).items()}
