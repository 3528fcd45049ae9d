"""The CLI of synthetic images: `python -m engine synthetic list | evaluate | generate`."""

from __future__ import annotations

import json
from pathlib import Path

from engine.context import Context
from engine.models.checkpoint import atomic_write, load_model
from engine.models.installed import active_model
from engine.synthetic.evaluation import evaluate, load_references, write_card_metrics
from engine.synthetic.export import export_zip, synthesise
from engine.synthetic.generator import find_generator, installed_generators, load_generator

__all__ = ["add_parsers", "COMMANDS"]


def add_parsers(sub) -> None:
    synthetic = sub.add_parser("synthetic", help="synthetic images from an installed GAN generator: list, evaluate "
                               "(quality and memorisation), generate (marked PNGs + manifest)")
    actions = synthetic.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="installed generators with their card's headline")
    for name, text in (("evaluate", "Fréchet distance and precision/recall/density/coverage in the active "
                                    "classifier's feature spaces, next to real held-out images; memorisation"),
                       ("generate", "seeded images of one class as a zip of marked PNGs and manifest.csv (images "
                                    "the memorisation check flags are withheld)")):
        action = actions.add_parser(name, help=text)
        action.add_argument("--generator", help="installed generator (default: the first)")
        action.add_argument("--seed", type=int, default=0)
        action.add_argument("--json", action="store_true", help="print the result as JSON")
    evaluate_ = actions.choices["evaluate"]
    evaluate_.add_argument("--write", action="store_true", help="store the report in the generator's card")
    generate_ = actions.choices["generate"]
    generate_.add_argument("--label", required=True, help="the class to generate (e.g. normal)")
    generate_.add_argument("--count", type=int, default=16, help="images to generate")
    generate_.add_argument("--out", type=Path, required=True, help="the zip to write")


def _list(args, ctx: Context) -> int:
    for name, path in installed_generators(ctx.config):
        card = load_generator(path).card
        quality = card.metrics.get("quality", {})
        print(f"{name}  {card.version}  {', '.join(card.labels)}  {card.model_args.get('size')} px  "
              f"{'evaluated' if quality else 'not evaluated'}")
    return 0


def _references(args, ctx: Context):
    gen = load_generator(find_generator(ctx.config, args.generator))
    return gen, load_references(ctx.config, gen, load_model(active_model(ctx, "classification").path))


def _evaluate(args, ctx: Context) -> int:
    gen, refs = _references(args, ctx)
    report = evaluate(gen, refs, args.seed)
    if args.write:
        report["sha256_after_write"] = write_card_metrics(gen, report)
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


def _generate(args, ctx: Context) -> int:
    gen, refs = _references(args, ctx)
    made = synthesise(ctx, gen, refs, args.label, args.count, args.seed)
    data = export_zip(ctx, gen, made)
    atomic_write(args.out, lambda tmp: tmp.write_bytes(data))
    flagged = int(made.check.flagged.sum())
    summary = {"zip": str(args.out), "label": args.label, "seed": args.seed, "generated": args.count,
               "exported": args.count - flagged, "withheld_as_memorised": flagged}
    print(json.dumps(summary) if args.json else "\n".join(f"{k}: {v}" for k, v in summary.items()))
    return 0


_ACTIONS = {"list": _list, "evaluate": _evaluate, "generate": _generate}


def _synthetic(args, ctx: Context) -> int:
    return _ACTIONS[args.action](args, ctx)


COMMANDS = {"synthetic": _synthetic}
