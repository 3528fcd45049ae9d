"""One case end to end on the CPU: stored file -> decode -> display image -> preprocess -> classify +
Grad-CAM -> overlay -> prediction row in SQLite. RadLens's single pass against the typical pattern
(a plain forward for the prediction, then grad-cam's GradCAM with its own forward and full backward,
then grad-cam's show_cam_on_image), interleaved in the same run.

Run: python -m bench.case_latency [--repeats 21] [--threads 2]
Inputs: a full-resolution JPEG from $RADLENS_DATA_DIR/cxr_pneumonia_fullres and pydicom-data's RG1 (CR).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from pydicom.data import get_testdata_file
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from bench.common import report
from engine.cases.ingest import ingest_files
from engine.config import Config
from engine.context import Context
from engine.draw import DISPLAY_MAX_SIDE, fit_within, overlay
from engine.inference.classify import Prediction
from engine.models import cam_layer
from engine.models.scope import ANALYSED, Verdict
from engine.stored import get_image, gray_image
from engine.tasks.classification import judge, load_classifier, record_prediction

FULLRES = "cxr_pneumonia_fullres/NORMAL2-IM-1113-0001.jpeg"  # the largest, 2128 x 1630


def _inputs() -> list[tuple[str, bytes]]:
    files = [Path(get_testdata_file("RG1_UNCR.dcm"))]
    data_dir = os.environ.get("RADLENS_DATA_DIR")
    if data_dir and (Path(data_dir) / FULLRES).is_file():
        files.insert(0, Path(data_dir) / FULLRES)
    return [(p.name, p.read_bytes()) for p in files]


class _Stages:
    def __init__(self):
        self.times: dict[str, list[float]] = {}
        self._t = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.times.setdefault(name, []).append(now - self._t)
        self._t = now

    def restart(self) -> None:
        self._t = time.perf_counter()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", help="installed classifier (default: the active one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    with tempfile.TemporaryDirectory() as home:
        config = Config(home=Path(home), data_dir=None)
        ctx = Context.open(config)
        store = ctx.store
        results = ingest_files(_inputs(), ctx)
        classifier = load_classifier(ctx, args.model)
        typical_model = copy.deepcopy(classifier.loaded.model).to(memory_format=torch.contiguous_format)
        typical_model.requires_grad_(True)  # as loaded by a typical script
        layer = cam_layer(typical_model, classifier.loaded.card.arch)
        prep = classifier.loaded.preprocessing

        def single_pass(image: dict, st: _Stages) -> None:
            gray = gray_image(config, image)
            st.mark("decode")
            prediction = classifier.classify(gray)
            verdict = judge(classifier, image, prediction)
            st.mark("classify+cam")
            overlay(gray, prediction.cam, max_side=DISPLAY_MAX_SIDE)
            st.mark("overlay")
            record_prediction(ctx, classifier, image, prediction, verdict)
            st.mark("log")

        def typical(image: dict, st: _Stages) -> None:
            gray = gray_image(config, image)
            st.mark("decode")
            x = prep(gray)
            with torch.no_grad():
                probs = torch.softmax(typical_model(x), 1)[0]
            target = int(probs.argmax())
            with GradCAM(model=typical_model, target_layers=[layer]) as cam:
                heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])[0]
            st.mark("classify+cam")
            shown = fit_within(gray, DISPLAY_MAX_SIDE)  # the same display size as the single pass
            rgb = np.repeat(shown[..., None], 3, 2).astype(np.float32) / 255
            show_cam_on_image(rgb, cv2.resize(heat, shown.shape[::-1]), use_rgb=True)
            st.mark("overlay")
            p = float(probs[1])
            record_prediction(ctx, classifier, image, Prediction(
                classifier.loaded.labels[target], p, {}, {"pneumonia": p}, 0.5, 0.0, "none", 0.0, 0.0, 0.0,
                heat), Verdict(ANALYSED))
            st.mark("log")

        figures = {}
        for result in results:
            image = get_image(store, result.image_id)
            stages = {"single_pass": _Stages(), "typical": _Stages()}
            totals: dict[str, list[float]] = {"single_pass": [], "typical": []}
            for _ in range(2):  # warm-up
                single_pass(image, _Stages())
                typical(image, _Stages())
            for _ in range(args.repeats):  # interleaved so that machine noise hits both alike
                for name, fn in (("single_pass", single_pass), ("typical", typical)):
                    stages[name].restart()
                    start = time.perf_counter()
                    fn(image, stages[name])
                    totals[name].append(time.perf_counter() - start)
            figures[result.file] = {
                name: {"p50_ms": _ms(statistics.median(totals[name])),
                       "p90_ms": _ms(np.percentile(totals[name], 90)),
                       "stages_p50_ms": {k: _ms(statistics.median(v)) for k, v in stages[name].times.items()}}
                for name in totals
            }
            figures[result.file]["speedup_p50"] = round(
                statistics.median(totals["typical"]) / statistics.median(totals["single_pass"]), 2)
        report("case_latency", {
            "threads": args.threads, "repeats": args.repeats, "model": classifier.loaded.name,
            "input_size": prep.size, "device": str(classifier.device), "cases": figures,
            "note": "single_pass = engine.inference.classify.Classifier (one forward, head-only backward, "
                    "channels_last) + "
                    "engine.draw.overlay; typical = no-grad forward + grad-cam GradCAM (second forward, full "
                    "backward) + show_cam_on_image; both decode the stored file (JPEG kept as uploaded minus "
                    "metadata; DICOM), overlay at the page's display size (longest side "
                    f"{DISPLAY_MAX_SIDE} px) and write the prediction row",
        })


def _ms(seconds: float) -> float:
    return round(float(seconds) * 1000, 1)


if __name__ == "__main__":
    main()
