"""What a person does with synthetic images (the Synthetic data page and the CLI): generate a seeded gallery
(permission "synthetic.generate", audited) and export it as marked PNGs with a manifest. An image the
memorisation check flags is withheld from every export: it may be a near copy of a patient's film."""

from __future__ import annotations

import io
import json
import zipfile

import cv2
import numpy as np

from engine.context import Context
from engine.errors import InvalidOption
from engine.synthetic.evaluation import Gallery, References, gallery
from engine.synthetic.generator import MAX_PER_REQUEST, LoadedGenerator
from engine.synthetic.mark import mark, synthetic_png
from engine.synthetic.prints import register
from engine.writers.spreadsheet import SafeDictWriter

__all__ = ["synthesise", "shown", "upscaled", "export_zip", "EXPORT_SIZE", "MANIFEST_COLUMNS"]

EXPORT_SIZE = 256  # pixels: exported and shown images are upscaled (bilinear) so the mark is readable
MANIFEST_COLUMNS = ("file", "label", "seed", "index", "generator", "generator_sha256", "nearest_train_pixels",
                    "pixel_distance_rms", "nearest_train_features", "feature_distance", "flagged", "exported")


def synthesise(ctx: Context, gen: LoadedGenerator, refs: References, label: str, n: int, seed: int) -> Gallery:
    """n seeded images of `label` with their memorisation check (audited as 'synthetic.generate')."""
    ctx.require("synthetic.generate")
    if not 1 <= n <= MAX_PER_REQUEST:
        raise InvalidOption(f"ask for 1 to {MAX_PER_REQUEST} images (got {n})")
    made = gallery(gen, refs, label, n, seed)
    with ctx.store.write() as db:  # what is shown can be saved from the screen: every image is registered
        register(db, gen.name, label, seed, np.stack([shown(image) for image in made.images]))
        ctx.audit(db, "synthetic.generate", "generator", gen.name, {"label": label, "images": n, "seed": seed,
                                                                   "flagged": int(made.check.flagged.sum())})
    return made


def upscaled(image: np.ndarray) -> np.ndarray:
    """An image at the generator's size upscaled (bilinear) to EXPORT_SIZE, as real neighbours are shown too."""
    return cv2.resize(image, (EXPORT_SIZE, EXPORT_SIZE), interpolation=cv2.INTER_LINEAR)


def shown(image: np.ndarray) -> np.ndarray:
    """A synthetic image as the page shows it: upscaled and marked."""
    return mark(upscaled(image))


def export_zip(ctx: Context, gen: LoadedGenerator, made: Gallery) -> bytes:
    """A zip of the gallery's unflagged images as marked PNGs (metadata: generator, class, seed, index) and a
    manifest.csv of every image with its nearest training images and distances (audited as 'synthetic.export')."""
    ctx.require("synthetic.generate")
    buffer, rows = io.BytesIO(), []
    check = made.check
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for i, image in enumerate(made.images):
            name = f"synthetic-{made.label}-seed{made.seed}-{i:04d}.png"
            flagged = bool(check.flagged[i])
            if not flagged:
                about = {"generator": gen.name, "version": gen.card.version, "sha256": gen.sha256,
                         "label": made.label, "seed": made.seed, "index": i}
                archive.writestr(name, synthetic_png(upscaled(image), json.dumps(about)))
            rows.append({"file": "" if flagged else name, "label": made.label, "seed": made.seed, "index": i,
                         "generator": gen.name, "generator_sha256": gen.sha256,
                         "nearest_train_pixels": made.neighbour_names[i],
                         "pixel_distance_rms": round(float(check.pixel_distance[i]), 4),
                         "nearest_train_features": made.feature_neighbour_names[i],
                         "feature_distance": round(float(check.feature_distance[i]), 4),
                         "flagged": flagged, "exported": not flagged})
        text = io.StringIO()
        writer = SafeDictWriter(text, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        archive.writestr("manifest.csv", text.getvalue())
    exported = sum(r["exported"] for r in rows)
    ctx.log("synthetic.export", "generator", gen.name, {"label": made.label, "seed": made.seed,
                                                        "exported": exported, "withheld": len(rows) - exported})
    return buffer.getvalue()
