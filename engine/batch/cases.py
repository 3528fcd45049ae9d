"""On request (`--cases`), a batch run's analysed images become cases: each file goes through the normal ingest
(decoded in the sandbox, de-identified, stored) and its batch result is logged as the case's prediction or
segmentation, as if it had been analysed on the Diagnosis or Segmentation page. Nothing is computed twice."""

from __future__ import annotations

import logging
from pathlib import Path

from engine.batch.sources import read_item
from engine.batch.work import Decoder
from engine.cases.ingest import ingest_files
from engine.context import Context
from engine.errors import EngineError
from engine.models.checkpoint import read_card
from engine.models.preprocess import Preprocessing
from engine.store import utc_now
from engine.tasks import get_task

__all__ = ["land_as_cases"]

log = logging.getLogger("radlens.batch")


def land_as_cases(ctx: Context, job_id: int, config: dict, names: tuple[str, ...], rows: list[dict]) -> int:
    """Ingest the files of the rows that have a result and log each result on its case; returns how many landed.
    A row whose result is already on a case is skipped (its case id is set in the same transaction as the logged
    result), so a resumed run never logs one twice. A file that does not land now (changed since, disk full) is
    left out; its batch result stays. A file is landed only if it still decodes to the input its result was
    computed on (its row's input hash): a file replaced under the same name never gets the old result."""
    from engine.batch.run import worker_options  # run.py imports this module when a run lands its cases

    ctx.require("case.upload")
    card = read_card(Path(config["model_path"]))
    preprocessing = Preprocessing.from_dict(card.preprocessing).summary()
    decoder = Decoder(worker_options(config, ctx))
    landed = 0
    for row in rows:
        if not row.get("input_sha256") or _on_a_case(ctx, row["input_sha256"], config["weights_sha256"]):
            continue
        try:
            data = read_item(config["source_kind"], Path(config["source"]), names[row["item"]], ctx.config.limits,
                             decoder.options.roots)
            if decoder.input_hash(data) != row["input_sha256"]:  # replaced since it was analysed
                log.warning("batch %d item %d changed since it was analysed: not landed", job_id, row["item"])
                continue
        except EngineError:
            continue
        result = ingest_files([(f"batch {job_id} item {row['item']}", data)], ctx, source="batch")[0]
        if not result.ok:
            continue
        analysis = get_task(config["task"]).analysis
        with ctx.store.write() as db:
            sha = db.execute("SELECT sha256 FROM images WHERE id = ?", [result.image_id]).fetchone()[0]
            record_id = db[analysis.table].insert({
                **analysis.batch_record(row, card), "status": row["status"],
                "status_reason": row["status_reason"] or "",
                "case_id": result.case_id, "image_id": result.image_id, "image_sha256": sha,
                "model_name": config["model"], "model_version": config["model_version"],
                "weights_sha256": config["weights_sha256"], "preprocessing": preprocessing,
                "device": config["device"], "latency_ms": row["latency_ms"], "actor": ctx.actor,
                "created_at": utc_now()}).last_pk
            db.execute("UPDATE batch_results SET case_id = ?, image_id = ? WHERE input_sha256 = ? AND "
                       "weights_sha256 = ?", [result.case_id, result.image_id, row["input_sha256"],
                                              config["weights_sha256"]])
            ctx.audit(db, analysis.audit_action, "case", result.case_id,
                      {f"{analysis.table[:-1]}_id": record_id, "model": config["model"],
                       "version": config["model_version"], "batch": job_id})
        landed += 1
    return landed


def _on_a_case(ctx: Context, input_sha256: str, weights_sha256: str) -> bool:
    with ctx.store.read() as db:
        return db.execute("SELECT case_id IS NOT NULL FROM batch_results WHERE input_sha256 = ? AND "
                          "weights_sha256 = ?", [input_sha256, weights_sha256]).fetchone() in ((1,),)
