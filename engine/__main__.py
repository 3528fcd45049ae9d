"""Command line: python -m engine {init,ingest,render,classify,segment,sequence,audit} ... (see README)."""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from engine.batch import commands as batch_commands
from engine.cases.demo import seed_demo
from engine.cases.ingest import IngestResult, ingest_paths, prepare, remove_orphan_files, render_untrusted
from engine.config import Config
from engine.context import Context
from engine.errors import EngineError
from engine.identity import commands as identity_commands
from engine.io.study import Window
from engine.keys import secret_key
from engine.pacs import commands as pacs_commands
from engine.synthetic import commands as synthetic_commands
from engine.tasks import task_names


def _init(args, ctx: Context) -> int:
    seeded = [] if args.no_demo else seed_demo(ctx)
    print(f"database ready at {ctx.config.db_path}; demo studies added: {sum(r.status == 'ok' for r in seeded)}")
    if orphans := remove_orphan_files(ctx):
        print(f"removed {len(orphans)} stored file(s) no case points at (left by an interrupted upload)")
    if hint := identity_commands.setup_hint(ctx):
        print(hint)
    return 0


def _ingest(args, ctx: Context) -> int:
    failed = 0
    for result in ingest_paths(args.paths, ctx):
        failed += not result.ok
        if args.json:
            print(json.dumps(result.__dict__), flush=True)
        else:
            where = f"case {result.case_id}" if result.ok else result.error
            print(f"{result.status:9} {result.file}  {where}", flush=True)
    return 1 if failed else 0


def _render(args, ctx: Context) -> int:
    data = Path(args.file).read_bytes()
    prepared = prepare(data, secret_key(ctx.config.home, "pseudonym"), ctx.config)
    window = None
    if args.window:
        center, width = (float(v) for v in args.window.split(","))
        window = Window(center, width)
    rendered = render_untrusted(data, ctx.config, args.frame, window)
    Image.fromarray(rendered["image"]).save(args.out)
    if args.json:
        print(json.dumps({
            "out": str(args.out), "steps": rendered["steps"], "shape": list(rendered["image"].shape),
            "frames": rendered["frames"], "spacing": rendered["spacing"], "fields": prepared.fields,
        }, indent=2))
    else:
        print(f"wrote {args.out}: {' -> '.join(rendered['steps'])}")
    return 0


def _landed(paths: list[Path], ctx: Context, failed: list) -> Iterator[tuple[IngestResult, dict]]:
    """Ingest the paths; yield (result, image row) per landed file. A file that did not land prints one
    JSON error line and is appended to `failed`; the others go on."""
    from engine.stored import get_image

    for result in ingest_paths(paths, ctx):
        if result.ok:
            yield result, get_image(ctx.store, result.image_id)
        else:
            failed.append(result)
            print(json.dumps({"file": result.file, "error": result.error}), flush=True)


def _prediction_fields(p) -> dict:
    return {"label": p.label, "probability": round(p.probability, 4), "probabilities": p.probabilities,
            "probabilities_raw": p.probabilities_raw, "threshold": round(p.threshold, 4),
            "uncertainty": round(p.uncertainty, 4), "uncertainty_method": p.uncertainty_method}


def _classify(args, ctx: Context) -> int:
    from engine.draw import overlay
    from engine.tasks.classification import diagnose_image, load_classifier, raw_output

    failed = []
    classifier = load_classifier(ctx, args.model)
    if args.cam_out:
        args.cam_out.mkdir(parents=True, exist_ok=True)
    for result, image in _landed(args.paths, ctx, failed):
        done = diagnose_image(ctx, classifier, image, args.tta)
        p, verdict = done.raw, done.verdict
        record = {
            "file": result.file, "case_id": done.case_id, "prediction_id": done.prediction_id,
            "status": verdict.status, **({"reason": verdict.text} if not verdict.analysed else _prediction_fields(p)),
            "ood_score": round(p.ood_score, 2), "ood_threshold": round(p.ood_threshold, 2),
            "out_of_distribution": p.out_of_distribution, "model": classifier.loaded.name,
            "model_version": classifier.loaded.version, "latency_ms": round(p.latency_ms, 1),
        }
        if args.show_raw and not verdict.analysed:
            record["raw_output_outside_scope"] = _prediction_fields(raw_output(ctx, done))
        if args.cam_out and verdict.analysed:
            record["cam"] = str(args.cam_out / f"case{done.case_id}-image{done.image_id}-{p.cam_method}.png")
            Image.fromarray(overlay(done.gray, p.cam)).save(record["cam"])
        if args.json:
            print(json.dumps(record), flush=True)
        elif verdict.analysed:
            print(f"{result.file}: {p.label} (p={p.probability:.3f}, {p.latency_ms:.0f} ms)", flush=True)
        else:
            print(f"{result.file}: {verdict.text}", flush=True)
    return 1 if failed else 0


def _segment(args, ctx: Context) -> int:
    from engine.data.hc18 import manifest_match
    from engine.tasks.segmentation import load_segmenter, mask_png, raw_segmentation, segment_case_image

    failed = []
    segmenter = load_segmenter(ctx, args.model)
    if args.mask_out:
        args.mask_out.mkdir(parents=True, exist_ok=True)
    for result, image in _landed(args.paths, ctx, failed):
        match = manifest_match(Path(result.file)) if Path(result.file).is_file() else None
        done = segment_case_image(ctx, segmenter, image, args.pixel_size, match)
        raw, verdict, loaded = done.raw, done.verdict, segmenter.loaded
        record = {
            "file": result.file, "case_id": done.case_id, "segmentation_id": done.segmentation_id,
            "status": verdict.status, **({"reason": verdict.text} if not verdict.analysed else _segment_fields(done)),
            "spacing_mm": done.spacing.row_mm, "spacing_source": done.spacing.source,
            "latency_ms": round(raw.latency_ms, 1), "model": loaded.name, "model_version": loaded.version,
        }
        if args.show_raw and not verdict.analysed:
            raw_segmentation(ctx, done)
            record["raw_output_outside_scope"] = _segment_fields(done)
        if args.mask_out and verdict.analysed:
            record["mask"] = str(args.mask_out / f"case{done.case_id}-image{done.image_id}-mask.png")
            Path(record["mask"]).write_bytes(mask_png(raw.mask))
        m = raw.measurement
        if args.json:
            print(json.dumps(record), flush=True)
        elif not verdict.analysed:
            print(f"{result.file}: {verdict.text}", flush=True)
        elif m:
            print(f"{result.file}: HC {m.circumference:.1f} {m.unit}, area {m.area:.0f} {m.unit}2 "
                  f"(spacing: {done.spacing.describe()}; {raw.latency_ms:.0f} ms)", flush=True)
        else:
            print(f"{result.file}: no head found (empty mask)", flush=True)
    return 1 if failed else 0


def _sequence(args, ctx: Context) -> int:
    from engine.tasks.sequence import analyse_sequence, load_sequence_classifier

    failed = []
    classifier = load_sequence_classifier(ctx, args.model)
    loaded = classifier.loaded
    for result, image in _landed(args.paths, ctx, failed):
        try:
            done = analyse_sequence(ctx, classifier, image)
        except EngineError as error:
            failed.append(result)
            print(json.dumps({"file": result.file, "case_id": result.case_id, "error": str(error)}), flush=True)
            continue
        p, verdict = done.raw, done.verdict
        record = {
            "file": result.file, "case_id": done.case_id, "prediction_id": done.prediction_id,
            "status": verdict.status, "slices": done.volume.n_slices,
            **({"reason": verdict.text} if not verdict.analysed else {
                "label": p.label, "probability": round(p.probability, 4), "threshold": round(p.threshold, 4),
                "contribution": [round(float(w), 4) for w in p.contribution] if p.contribution is not None
                else None}),
            "ood_score": round(p.ood_score, 2), "ood_threshold": round(p.ood_threshold, 2),
            "model": loaded.name, "model_version": loaded.version, "latency_ms": round(p.latency_ms, 1),
        }
        if args.json:
            print(json.dumps(record), flush=True)
        elif verdict.analysed:
            top = f", most weight on slice {int(p.contribution.argmax()) + 1}" if p.contribution is not None else ""
            print(f"{result.file}: {p.label} (p={p.probability:.3f}, {done.volume.n_slices} slices{top}, "
                  f"{p.latency_ms:.0f} ms)", flush=True)
        else:
            print(f"{result.file}: {verdict.text}", flush=True)
    return 1 if failed else 0


def _analyse(args, ctx: Context) -> int:
    """Any task's active (or named) model on stored cases: one line per case, from the row it logged."""
    from engine.stored import get_case
    from engine.tasks import get_task
    from engine.tasks.analysis import analyse, load

    if args.run is not None:
        from engine.cases.analysis import run_analysis

        print(json.dumps(run_analysis(ctx, args.run)))
        return 0
    if not args.task or not args.cases:
        raise EngineError("name the cases and --task (or --run JOB for a queued analysis job)")
    task, failed = get_task(args.task), 0
    model = load(ctx, task, args.model)
    for case_id in args.cases:
        try:
            done = analyse(ctx, task, task.analysis.images(get_case(ctx.store, case_id))[0], model)
        except EngineError as error:
            failed += 1
            print(json.dumps({"case_id": case_id, "task": task.name, "error": str(error)}), flush=True)
            continue
        row = ctx.store.row(task.analysis.table, done.record_id)
        text = task.analysis.report(row, model.loaded.card)[0].text if done.verdict.analysed else done.verdict.text
        record = {"case_id": case_id, "task": task.name, "status": done.verdict.status,
                  f"{task.analysis.table[:-1]}_id": done.record_id, "result": text, "model": model.loaded.name,
                  "model_version": model.loaded.version}
        print(json.dumps(record) if args.json else f"case #{case_id}: {text}", flush=True)
    return 1 if failed else 0


def _segment_fields(done) -> dict:
    m = done.raw.measurement
    return {"head_circumference": round(m.circumference, 2) if m else None,
            "area": round(m.area, 1) if m else None, "unit": m.unit if m else None, "bbox": m.bbox if m else None,
            "mask_pixels": int(done.raw.mask.sum()),
            **({"dice": round(done.scores["dice"], 4), "hd95": round(done.scores["hd95"], 3)} if done.scores else {})}


def _audit(args, ctx: Context) -> int:
    from engine.cases.heatmap_audit import run_audit, start_audit
    from engine.models.installed import active_model

    if args.run is None:  # a new audit in the foreground
        name = args.model or active_model(ctx, "classification").name
        args.run = start_audit(ctx, name, args.method, args.dataset, args.split, args.layer, args.limit,
                               background=False)
    summary = run_audit(ctx, args.run)
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "images"}, indent=2))
    else:
        print(f"audit {args.run}: {summary['n']} images; heatmap mass in the outer border "
              f"{summary['border_share'][0]:.1%} (uniform {summary['uniform']['border_share']:.0%}), in the top "
              f"corners {summary['corner_share'][0]:.1%} (uniform {summary['uniform']['corner_share']:.1%}); "
              f"mean ROAD {summary['road'][0]:+.3f}")
    return 0


def _report(args, ctx: Context) -> int:
    from engine.cases.report import case_report

    args.out.write_bytes(case_report(ctx, args.cases))
    print(f"wrote {args.out} ({len(args.cases)} case(s))")
    return 0


def _export(args, ctx: Context) -> int:
    from engine.cases.results import OBJECT_KINDS, result_objects

    args.out.mkdir(parents=True, exist_ok=True)
    for obj in result_objects(ctx, args.case):
        (args.out / f"case{args.case}-{obj.filename}").write_bytes(obj.data)
        print(f"{args.out / f'case{args.case}-{obj.filename}'}: {OBJECT_KINDS[obj.kind][0]}")
    return 0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="RadLens engine commands")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create/migrate the database and seed the demo studies")
    init.add_argument("--no-demo", action="store_true", help="do not seed demo studies")
    ingest = sub.add_parser("ingest", help="ingest files, zips or folders into the store")
    ingest.add_argument("paths", nargs="+", type=Path)
    ingest.add_argument("--json", action="store_true", help="one JSON object per line")
    rend = sub.add_parser("render", help="write the 8-bit display image exactly as the viewer shows it")
    rend.add_argument("file", type=Path)
    rend.add_argument("--frame", type=int, default=0, help="frame index (0-based)")
    rend.add_argument("--window", help="CENTER,WIDTH in modality units (default: the file's own window)")
    rend.add_argument("--out", type=Path, required=True)
    rend.add_argument("--json", action="store_true", help="print display steps, shape, spacing, stored fields")
    classify = sub.add_parser("classify", help="ingest images and classify them (JSON per image with --json)")
    classify.add_argument("paths", nargs="+", type=Path)
    classify.add_argument("--model", help="installed model name (default: the active one)")
    classify.add_argument("--cam-out", type=Path, help="folder for Grad-CAM overlay PNGs")
    classify.add_argument("--tta", type=int, default=0, help="test-time augmentation views for uncertainty")
    classify.add_argument("--json", action="store_true", help="one JSON object per line")
    classify.add_argument("--show-raw", action="store_true", help="research: also print the model's raw output "
                          "on images outside its scope (marked raw_output_outside_scope; audited)")
    segment = sub.add_parser("segment", help="ingest images, segment them and measure the head circumference")
    segment.add_argument("paths", nargs="+", type=Path)
    segment.add_argument("--model", help="installed segmentation model (default: the active one)")
    segment.add_argument("--pixel-size", type=float, help="pixel size in mm (default: the DICOM's own, else "
                         "the manifest of the dataset folder the file sits in, else measure in pixels)")
    segment.add_argument("--mask-out", type=Path, help="folder for mask PNGs (255 = head)")
    segment.add_argument("--json", action="store_true", help="one JSON object per line")
    segment.add_argument("--show-raw", action="store_true", help="research: also print the mask measurements on "
                         "images outside the model's scope (marked raw_output_outside_scope; audited)")
    sequence = sub.add_parser("sequence", help="ingest volumes or cine loops (multi-frame DICOM, NIfTI, .npy/.npz) "
                              "and classify each as one sequence, with each slice's contribution")
    sequence.add_argument("paths", nargs="+", type=Path)
    sequence.add_argument("--model", help="installed sequence model (default: the active one)")
    sequence.add_argument("--json", action="store_true", help="one JSON object per line")
    audit = sub.add_parser("heatmap-audit", help="where the model looks across a dataset split (explanation audit)")
    audit.add_argument("--model", help="installed classifier (default: the active one)")
    audit.add_argument("--method", default="gradcam", help="explanation method (default: gradcam)")
    audit.add_argument("--layer", help="target layer (default: the architecture's last stage)")
    audit.add_argument("--dataset", default="cxr_pneumonia")
    audit.add_argument("--split", default="test")
    audit.add_argument("--limit", type=int, help="N images spread evenly over the split")
    audit.add_argument("--run", type=int, help="execute an audit the dashboard queued (its id)")
    audit.add_argument("--json", action="store_true", help="print the summary as JSON")
    analyse = sub.add_parser("analyse", help="run a task's model on stored cases (the same analysis as the pages and "
                             "the PACS routing job); one line per case")
    analyse.add_argument("cases", nargs="*", type=int, help="case ids")
    analyse.add_argument("--task", choices=task_names())
    analyse.add_argument("--run", type=int, help="execute a queued analysis job (the job queue's program)")
    analyse.add_argument("--model", help="an installed model of the task (default: its active one)")
    analyse.add_argument("--json", action="store_true", help="one JSON object per line")
    report = sub.add_parser("report", help="PDF case report: one page per case (image, evidence, result, model "
                            "card summary, review)")
    report.add_argument("cases", nargs="+", type=int, help="case ids")
    report.add_argument("--out", type=Path, required=True, help="the PDF to write")
    export = sub.add_parser("export", help="a case's result as DICOM objects (SR, secondary capture, SEG) over its "
                            "de-identified image")
    export.add_argument("case", type=int)
    export.add_argument("--out", type=Path, required=True, help="folder to write the .dcm files to")
    identity_commands.add_parsers(sub)
    pacs_commands.add_parsers(sub)
    batch_commands.add_parsers(sub)
    synthetic_commands.add_parsers(sub)
    return parser


COMMANDS = {"init": _init, "ingest": _ingest, "render": _render, "classify": _classify, "segment": _segment,
            "sequence": _sequence, "analyse": _analyse, "heatmap-audit": _audit, "report": _report, "export": _export,
            **identity_commands.COMMANDS, **pacs_commands.COMMANDS, **batch_commands.COMMANDS,
            **synthetic_commands.COMMANDS}


# C0/C1 control characters (ESC starts terminal escape sequences) and bidirectional overrides: a value from
# a file or a user printed as is could move the cursor, retitle the window or reorder what a reader sees.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


class _PlainTerminal(io.TextIOBase):
    """A text stream that writes through to `stream` with control characters shown as '?'."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(_CONTROL.sub("?", text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def main(argv: list[str] | None = None) -> int:
    sys.stdout, sys.stderr = _PlainTerminal(sys.stdout), _PlainTerminal(sys.stderr)
    args = get_args_parser().parse_args(argv)
    config = Config.from_env()
    try:
        ctx = Context.open(config)  # first: from here on files are created for this user only (0600 / 0700)
        config.log_dir.mkdir(parents=True, exist_ok=True)
        logging.basicConfig(filename=config.log_dir / "radlens.log", level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s %(message)s")
        return COMMANDS[args.command](args, ctx)
    except (EngineError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
