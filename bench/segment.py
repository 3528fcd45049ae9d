"""Segmentation benchmarks on the HC18 held-out test split (96 images).

quality: Dice, IoU, HD95 (mm) and head-circumference error (mm) of the shipped model, with bootstrap CIs,
  for four ways of getting from the model's 256 x 256 output to the image's mask, in the same run: the
  shipped one (probability resized bilinearly, then thresholded); the simpler one (thresholded at the
  model's size, mask resized nearest-neighbour); the fitted ellipse drawn as the mask; and the shipped
  one on the average of the image's and its mirror image's probabilities (2 forwards). All measure
  with the card's boundary offset. The floor is the same measurement on the ground-truth masks,
  with and without the offset.
latency: one image end to end (preprocess, forward, resize, clean-up, ellipse, measurements) on CPU
  threads, the bare forward alone, and the torchvision LR-ASPP forward at the same size for reference.

Run: python -m bench.segment quality | latency [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time

import cv2
import numpy as np
import torch

from bench.common import report
from engine.config import Config
from engine.data.loaders import load_dataset
from engine.inference.measure import (
    agreement,
    clean_mask,
    ellipse_mask,
    fit_ellipse,
    measure,
    with_spacing,
)
from engine.inference.segment import Segmenter, full_size_mask
from engine.metrics import mean_ci
from engine.models import load_model
from engine.models.installed import SHIPPED_DIR
from engine.models.registry import create_model
from engine.tasks.segmentation import probabilities

WEIGHTS = SHIPPED_DIR / "hc18-unet.safetensors"


def _nearest(prob: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    small = (prob.numpy() > 0.5).astype(np.uint8)
    return clean_mask(cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0)


def _ellipse(prob: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    return ellipse_mask(shape, fit_ellipse(full_size_mask(prob, shape)[1]))


# name -> (use the left-right flip average?, mask maker)
VARIANTS = {"bilinear probability (shipped)": (False, lambda p, s: full_size_mask(p, s)[1]),
            "nearest-neighbour mask": (False, _nearest),
            "fitted ellipse as the mask": (False, _ellipse),
            "bilinear, flip test-time augmentation (2 forwards)": (True, lambda p, s: full_size_mask(p, s)[1])}


def _ci(values: list[float], digits: int) -> dict:
    mean, low, high = mean_ci(np.array(values))
    return {"mean": round(mean, digits), "ci95": [round(low, digits), round(high, digits)],
            "median": round(float(np.median(values)), digits)}


def quality(args) -> None:
    loaded = load_model(WEIGHTS)
    data = load_dataset("hc18", loaded.preprocessing, Config.from_env().data_dir, only=("test",)).sets["test"]
    cpu, offset = torch.device("cpu"), loaded.card.measurement["boundary_offset_px"]
    probs = probabilities(loaded.model, data.images, loaded.preprocessing, cpu)
    flipped = probabilities(loaded.model, data.images.flip(-1), loaded.preprocessing, cpu).flip(-1)
    figures = {}
    for name, (tta, make) in VARIANTS.items():
        rows = []
        chosen = (probs + flipped) / 2 if tta else probs
        for prob, truth, mm, hc in zip(chosen, data.full_masks, data.pixel_mm, data.reference_hc_mm):
            spacing = with_spacing(mm, "manifest")
            mask = make(prob, truth.shape)
            rows.append({**agreement(mask, truth, spacing),
                         "hc_error": measure(mask, spacing, offset).circumference - hc})
        figures[name] = {"dice": _ci([r["dice"] for r in rows], 4), "iou": _ci([r["iou"] for r in rows], 4),
                         "hd95_mm": _ci([r["hd95"] for r in rows], 3),
                         "hc_abs_error_mm": _ci([abs(r["hc_error"]) for r in rows], 3),
                         "hc_signed_error_mm": _ci([r["hc_error"] for r in rows], 3)}
    floor = {f"offset_{d}_px": _ci([abs(measure(clean_mask(t), with_spacing(mm, "m"), d).circumference - hc)
                                    for t, mm, hc in zip(data.full_masks, data.pixel_mm, data.reference_hc_mm)], 3)
             for d in (0.0, offset)}
    report("segment_quality", {"weights": WEIGHTS.name, "weights_sha256": loaded.sha256, "n": len(probs),
                               "boundary_offset_px": offset, "variants": figures,
                               "floor_hc_abs_error_of_truth_fit_mm": floor,
                               "command": "python -m bench.segment quality"})


def _median_ms(fn, images: list, repeats: int) -> float:
    fn(images[0])  # warm-up (allocations, oneDNN primitives)
    times = []
    for _ in range(repeats):
        for image in images:
            start = time.perf_counter()
            fn(image)
            times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 2)


def latency(args) -> None:
    torch.set_num_threads(args.threads)
    config = Config.from_env()
    loaded = load_model(WEIGHTS)
    segmenter = Segmenter(loaded)
    with open(config.data_dir / "hc18" / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"][:24]
    grays = [cv2.imread(str(config.data_dir / "hc18" / r["image"]), cv2.IMREAD_GRAYSCALE) for r in rows]
    spacing = with_spacing(float(rows[0]["pixel_size_mm"]), "manifest")
    rows_px, cols_px = loaded.preprocessing.shape
    lraspp = create_model("lraspp_mobilenet_v3_large").eval()

    def forward(model):
        def run(gray):
            with torch.inference_mode():
                model(loaded.preprocessing(gray))
        return run

    figures = {
        "end_to_end_ms": _median_ms(lambda g: segmenter.segment(g, spacing), grays, args.repeats),
        "unet_forward_ms": _median_ms(forward(segmenter.model), grays, args.repeats),
        "lraspp_forward_ms_untrained_reference": _median_ms(forward(lraspp), grays, args.repeats),
        "region_explanation_gradcam_ms": _median_ms(lambda g: segmenter.explain(g, "gradcam"), grays[:8], 1),
    }
    report("segment_latency", {"threads": args.threads, "input": f"{cols_px}x{rows_px}", "images": len(grays),
                               "repeats": args.repeats, "device": "cpu", **figures,
                               "command": f"python -m bench.segment latency --threads {args.threads}"})


COMMANDS = {"quality": quality, "latency": latency}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=list(COMMANDS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    COMMANDS[args.command](args)


if __name__ == "__main__":
    main()
