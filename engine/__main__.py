"""Command line: python -m engine {init,ingest,render} ... (see README)."""

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
    return parser


COMMANDS = {"init": _init, "ingest": _ingest, "render": _render}


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
