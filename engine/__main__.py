"""Command line: python -m engine {init,ingest,render,classify,audit} ... (see README)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from PIL import Image

from engine.config import Config
from engine.demo import seed_demo
from engine.errors import EngineError
from engine.ingest import ingest_paths, open_store, prepare
from engine.io import render
from engine.io.study import Window


def _init(args, config: Config) -> int:
    store = open_store(config)
    seeded = [] if args.no_demo else seed_demo(config, store)
    print(f"database ready at {config.db_path}; demo studies added: {sum(r.status == 'ok' for r in seeded)}")
    return 0


def _ingest(args, config: Config) -> int:
    store, failed = open_store(config), 0
    for result in ingest_paths(args.paths, config, store):
        failed += not result.ok
        if args.json:
            print(json.dumps(result.__dict__), flush=True)
        else:
            where = f"case {result.case_id}" if result.ok else result.error
            print(f"{result.status:9} {result.file}  {where}", flush=True)
    return 1 if failed else 0


def _render(args, config: Config) -> int:
    store = open_store(config)
    prepared = prepare(Path(args.file).read_bytes(), store.setting("uid_salt") or "", config)
    window = None
    if args.window:
        center, width = (float(v) for v in args.window.split(","))
        window = Window(center, width)
    rendered = render(prepared.study, args.frame, window)
    Image.fromarray(rendered.image).save(args.out)
    if args.json:
        print(json.dumps({
            "out": str(args.out), "steps": list(rendered.steps), "shape": list(rendered.image.shape),
            "frames": prepared.study.n_frames, "spacing": prepared.study.spacing.describe(),
            "fields": prepared.fields,
        }, indent=2))
    else:
        print(f"wrote {args.out}: {' -> '.join(rendered.steps)}")
    return 0


def _classify(args, config: Config) -> int:
    from engine.diagnosis import diagnose_image, get_image, load_classifier
    from engine.explain import overlay

    store, failed = open_store(config), 0
    classifier = load_classifier(config, store, args.model)
    if args.cam_out:
        args.cam_out.mkdir(parents=True, exist_ok=True)
    for result in ingest_paths(args.paths, config, store):
        if not result.ok:
            failed += 1
            print(json.dumps({"file": result.file, "error": result.error}), flush=True)
            continue
        done = diagnose_image(config, store, classifier, get_image(store, result.image_id), args.tta)
        p = done.prediction
        record = {
            "file": result.file, "case_id": done.case_id, "prediction_id": done.prediction_id, "label": p.label,
            "probability": round(p.probability, 4), "probabilities": p.probabilities,
            "probabilities_raw": p.probabilities_raw, "threshold": round(p.threshold, 4),
            "uncertainty": round(p.uncertainty, 4), "uncertainty_method": p.uncertainty_method,
            "ood_score": round(p.ood_score, 2), "ood_threshold": round(p.ood_threshold, 2),
            "out_of_distribution": p.out_of_distribution, "model": classifier.loaded.name,
            "model_version": classifier.loaded.version, "latency_ms": round(p.latency_ms, 1),
        }
        if args.cam_out:
            record["cam"] = str(args.cam_out / f"case{done.case_id}-image{done.image_id}-{p.cam_method}.png")
            Image.fromarray(overlay(done.gray, p.cam)).save(record["cam"])
        if args.json:
            print(json.dumps(record), flush=True)
        else:
            flag = "  OUT OF DISTRIBUTION" if p.out_of_distribution else ""
            print(f"{result.file}: {p.label} (p={p.probability:.3f}, {p.latency_ms:.0f} ms){flag}", flush=True)
    return 1 if failed else 0


def _audit(args, config: Config) -> int:
    from engine.audit import run_audit, start_audit
    from engine.models.catalog import active_model

    store = open_store(config)
    if args.run is None:  # a new audit in the foreground
        name = args.model or active_model(config, store, "classification").name
        args.run = start_audit(config, store, name, args.method, args.dataset, args.split, args.layer, args.limit,
                               background=False)
    summary = run_audit(config, store, args.run)
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "images"}, indent=2))
    else:
        print(f"audit {args.run}: {summary['n']} images; heatmap mass in the outer border "
              f"{summary['border_share'][0]:.1%} (uniform {summary['uniform']['border_share']:.0%}), in the top "
              f"corners {summary['corner_share'][0]:.1%} (uniform {summary['uniform']['corner_share']:.1%}); "
              f"mean ROAD {summary['road'][0]:+.3f}")
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
    audit = sub.add_parser("audit", help="where the model looks across a dataset split (explanation audit)")
    audit.add_argument("--model", help="installed classifier (default: the active one)")
    audit.add_argument("--method", default="gradcam", help="explanation method (default: gradcam)")
    audit.add_argument("--layer", help="target layer (default: the architecture's last stage)")
    audit.add_argument("--dataset", default="cxr_pneumonia")
    audit.add_argument("--split", default="test")
    audit.add_argument("--limit", type=int, help="N images spread evenly over the split")
    audit.add_argument("--run", type=int, help="execute an audit the dashboard queued (its id)")
    audit.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


COMMANDS = {"init": _init, "ingest": _ingest, "render": _render, "classify": _classify, "audit": _audit}


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    config = Config.from_env()
    config.log_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=config.log_dir / "radlens.log", level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return COMMANDS[args.command](args, config)
    except (EngineError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
