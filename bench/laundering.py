"""Synthetic images laundered back in (issue #34, finding 9): how often ingest's two checks refuse a generated
image after each edit the security review tried, and how often they would refuse a real film.

- Generated: the shipped generator's 512 images (256 per class, seed 0) as the page shows and exports them
  (upscaled to 256 px, marked), registered as `synthesise` registers them. Every 4th one is edited.
- Checks: the pixel mark alone (engine.synthetic.mark.has_mark, what ingest had) and the likeness print
  (engine.synthetic.prints, correlation >= LIKENESS_REFUSE with a registered print).
- Real films: every film of cxr_pneumonia (train, val, test) and the full-resolution val/test films, against
  the same 512 prints: the highest correlation, and how many would be refused.

Run: python -m bench.laundering  (about a minute on 2 CPU cores)
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from bench.common import report
from engine.config import Config
from engine.context import Context
from engine.synthetic.export import shown
from engine.synthetic.generator import find_generator, generate, load_generator
from engine.synthetic.mark import LIKENESS_REFUSE, has_mark, thumbnail
from engine.synthetic.prints import closest, register


def _edits(image: np.ndarray) -> dict[str, np.ndarray]:
    h, w = image.shape
    painted = image.copy()
    painted[:h // 12 + 2, :w // 2] = int(image[h // 4:, w // 4:].mean())
    return {
        "none": image, "crop 1 px": image[1:, 1:], "crop 3 %": image[h * 3 // 100:, w * 3 // 100:],
        "crop 10 %": image[h // 10:, w // 10:], "resize 0.5x": cv2.resize(image, (w // 2, h // 2)),
        "resize 2x": cv2.resize(image, (w * 2, h * 2)), "flip left-right": image[:, ::-1],
        "flip up-down": image[::-1], "invert": 255 - image, "16-bit": image.astype(np.uint16) * 257,
        "paint over the mark": painted,
        "JPEG 60": cv2.imdecode(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 60])[1], 0),
        "paint + JPEG 60": cv2.imdecode(cv2.imencode(".jpg", painted, [cv2.IMWRITE_JPEG_QUALITY, 60])[1], 0),
        "noise sd 8": np.clip(image + np.random.default_rng(0).normal(0, 8, image.shape), 0, 255).astype(np.uint8),
        "rotate 90": np.rot90(image),
    }


def _films(data: Path) -> list[Path]:
    out = []
    for folder in ("cxr_pneumonia", "cxr_pneumonia_fullres_eval"):
        with open(data / folder / "manifest.csv", newline="") as f:
            out += [data / folder / (row.get("path") or row["file"]) for row in csv.DictReader(f)]
    return out


def main() -> None:
    config = Config.from_env()
    gen = load_generator(find_generator(config))
    images = [shown(i) for label in gen.labels for i in generate(gen, label, 256, seed=0)]
    with tempfile.TemporaryDirectory() as home:
        ctx = Context.open(Config(home=Path(home), data_dir=None))
        with ctx.store.write() as db:
            register(db, gen.name, "both", 0, np.stack(images))
        rates = {}
        for image in images[::4]:
            for name, edited in _edits(image).items():
                gray8 = edited if edited.dtype == np.uint8 else (edited >> 8).astype(np.uint8)
                entry = rates.setdefault(name, {"n": 0, "mark": 0, "print": 0, "either": 0, "likeness": []})
                likeness = closest(ctx.store, thumbnail(edited))
                marked, printed = has_mark(gray8), likeness >= LIKENESS_REFUSE
                entry["n"] += 1
                entry["mark"] += marked
                entry["print"] += printed
                entry["either"] += marked or printed
                entry["likeness"].append(likeness)
        edits = {name: {"n": e["n"], "refused_by_mark": round(e["mark"] / e["n"], 3),
                        "refused_by_print": round(e["print"] / e["n"], 3),
                        "refused": round(e["either"] / e["n"], 3),
                        "likeness_min": round(min(e["likeness"]), 4)} for name, e in rates.items()}
        started, real = time.perf_counter(), []
        for path in _films(Path(os.environ["RADLENS_DATA_DIR"])):
            gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if gray is not None:
                real.append(closest(ctx.store, thumbnail(gray)))
        seconds = time.perf_counter() - started
    real = np.array(real)
    report("laundering", {
        "generator": gen.name, "registered": len(images), "threshold": LIKENESS_REFUSE, "edits": edits,
        "real_films": {"n": len(real), "refused": int((real >= LIKENESS_REFUSE).sum()),
                       "likeness_max": round(float(real.max()), 4),
                       "likeness_p99": round(float(np.percentile(real, 99)), 4),
                       "likeness_median": round(float(np.median(real)), 4)},
        "check_ms_per_image": round(seconds / len(real) * 1000, 2),
    })


if __name__ == "__main__":
    main()
