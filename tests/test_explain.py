"""Explanation methods: every registered method's map, hook release, the batched methods against the
library's, faithfulness against the random baseline on the shipped model, the store cache, the audit."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_grad_cam import AblationCAM, ScoreCAM
from pytorch_grad_cam.metrics.road import NoisyLinearImputer
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from engine.cases.explanations import explain_image
from engine.cases.heatmap_audit import (
    get_audit,
    list_audits,
    mass_shares,
    region_masks,
    run_audit,
    start_audit,
)
from engine.draw import comparison_sheet, keep_top
from engine.errors import EngineError
from engine.inference.cam import (
    BASELINE,
    METHODS,
    compute_cam,
    inference_copy,
    target_layers,
)
from engine.inference.classify import Classifier
from engine.inference.explainer import Explainer
from engine.inference.faithfulness import (
    FastNoisyLinearImputer,
    LogOddsTarget,
    score_map,
)
from engine.metrics import mean_ci
from engine.models import create_model, load_model
from engine.models.installed import SHIPPED_DIR
from tests.conftest import DATA_DIR, needs_data

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = SHIPPED_DIR / "cxr-pneumonia-resnet18.safetensors"


@pytest.fixture(scope="module")
def small():
    """An untrained ResNet-18, frozen like Classifier freezes it: for shapes and plumbing, not quality."""
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=2).eval().requires_grad_(False)
    return model, model.layer4


def _live_arrays() -> int:
    """Tensors and numpy arrays alive after a full collection: what a leaking CAM would accumulate."""
    gc.collect()
    return sum(type(o) in (torch.Tensor, torch.nn.Parameter, np.ndarray) for o in gc.get_objects())


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_full_backward_hooks", {}) or {}) for m in model.modules())


# The perturbation and eigen methods take 10-80 s each on 2 cores: `make test` runs them, `make test-fast` not.
HEAVY_METHODS = ("scorecam", "ablationcam", "fullgrad", "eigencam", "eigengradcam")
PER_CHANNEL_METHODS = ("scorecam", "ablationcam")


@pytest.mark.parametrize("method", [pytest.param(m, marks=[pytest.mark.slow] if m in HEAVY_METHODS else [])
                                    for m in METHODS])
def test_every_method_gives_an_input_sized_map_in_0_1_and_releases_its_hooks(small, method):
    model, layer = small
    x = torch.randn(1, 1, 32, 48)
    maps = compute_cam(model, layer, x, method, target=1)
    assert maps.shape == (1, 32, 48)
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    # A per-call leak shows as one more array per call: 90 calls after the baseline, 20 for the heavy methods.
    # The methods that run the network once per channel loop on the 64-channel first stage, not layer4's 512:
    # the same code and hooks at an eighth of the cost (Score-CAM's 30 calls on layer4 took 2.5 minutes).
    if method in PER_CHANNEL_METHODS:
        layer = model.layer1
    for i in range(30 if method in HEAVY_METHODS else 100):
        compute_cam(model, layer, x, method, target=i % 2)
        if i == 9:
            before = _live_arrays()
    assert _hooks(model) == 0, "a CAM left a hook on the shared model"
    assert _live_arrays() <= before, "tensors or arrays pile up from call to call"


def test_unknown_method_and_layer_are_named_errors(small):
    model, layer = small
    with pytest.raises(EngineError, match="Unknown explanation method"):
        compute_cam(model, layer, torch.randn(1, 1, 32, 32), "magiccam", 0)


def test_layer_choices_are_the_default_then_every_conv_deepest_first(small):
    model, _ = small
    layers = target_layers(model, "layer4")
    assert layers[0] == "layer4" and layers[1] == "layer4.1.conv2" and layers[-1] == "conv1"
    assert len(layers) == 1 + sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())


@pytest.mark.slow
def test_batched_score_cam_and_tail_ablation_cam_equal_the_library(small):
    model, layer = small
    x = torch.randn(1, 1, 64, 64)
    target = [ClassifierOutputTarget(1)]
    with ScoreCAM(model=model, target_layers=[layer]) as cam:
        reference = cam(input_tensor=x, targets=target)
    fast = inference_copy(model)
    assert np.abs(compute_cam(model, layer, x, "scorecam", 1, inference_model=fast) - reference).max() < 1e-4
    with AblationCAM(model=model, target_layers=[layer]) as cam:
        reference = cam(input_tensor=x, targets=target)
    assert np.abs(compute_cam(model, layer, x, "ablationcam", 1) - reference).max() < 1e-5


def test_tail_ablation_falls_back_when_the_tail_needs_the_front_batch():
    """A layer inside a DenseNet block: its output is concatenated with features from before it."""
    torch.manual_seed(0)
    model = create_model("densenet121", num_classes=2).eval().requires_grad_(False)
    layer = model.get_submodule("features.denseblock4.denselayer16.conv2")
    x = torch.randn(1, 1, 64, 64)
    with AblationCAM(model=model, target_layers=[layer]) as cam:
        reference = cam(input_tensor=x, targets=[ClassifierOutputTarget(0)])
    assert np.abs(compute_cam(model, layer, x, "ablationcam", 0) - reference).max() < 1e-5


def test_fast_imputer_fills_exactly_like_roads_own():
    rng = np.random.default_rng(3)
    image = torch.from_numpy(rng.normal(size=(1, 60, 80)).astype(np.float32))
    for removed in (0.2, 0.5, 0.9):
        mask = torch.from_numpy((rng.random((60, 80)) > removed).astype(np.float32))
        torch.manual_seed(7)
        expected = NoisyLinearImputer()(image, mask)
        torch.manual_seed(7)
        assert torch.equal(FastNoisyLinearImputer()(image, mask), expected)


def test_log_odds_target_is_the_log_odds_of_the_class():
    logits = torch.tensor([[0.3, 2.1], [4.0, -1.0]])
    p = torch.softmax(logits, dim=1)[:, 1]
    assert torch.allclose(LogOddsTarget(1)(logits), torch.log(p / (1 - p)), atol=1e-5)


def test_faithfulness_is_deterministic_per_map(small):
    model, layer = small
    x = torch.randn(1, 1, 48, 48)
    cam = compute_cam(model, layer, x, "gradcam", 1)[0]
    first, again = score_map(model, x, cam, 1), score_map(model, x, cam, 1)
    assert first == again
    assert len(first.morf) == len(first.lerf) == 4
    assert first.road == pytest.approx((np.mean(first.lerf) - np.mean(first.morf)) / 2)


def test_keep_top_and_comparison_sheet():
    cam = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    assert (keep_top(cam, 20) > 0).sum() == 20 and keep_top(cam, 100) is cam
    gray = np.full((300, 200), 128, np.uint8)
    sheet = comparison_sheet(gray, {"A": cam, "B": cam, "C": cam, "D": cam}, columns=3, tile=128)
    assert sheet.shape == (2 * (128 + 40), 3 * 128, 3)


def test_region_shares():
    border, corners = region_masks(100)
    uniform = np.ones((100, 100), np.float32)
    assert mass_shares(uniform, border, corners) == pytest.approx((1 - 0.8 ** 2, 2 * 0.15 ** 2))
    marker = np.zeros((100, 100), np.float32)
    marker[2:8, 90:97] = 1  # a hot spot where an "R" marker sits
    assert mass_shares(marker, border, corners) == (1.0, 1.0)
    assert mass_shares(np.zeros((100, 100)), border, corners) == (0.0, 0.0)


# -- the shipped model on real images ---------------------------------------------------------------

@pytest.fixture(scope="module")
def explainer():
    return Explainer(Classifier(load_model(SHIPPED, "cpu")))


def _test_films(n: int) -> list[tuple[str, np.ndarray]]:
    import csv

    from engine.data.loaders import gray_of_file

    root = DATA_DIR / "cxr_pneumonia"
    with open(root / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["demo_split"] == "test"]
    picks = np.linspace(0, len(rows) - 1, n).round().astype(int)
    return [(rows[i]["label"], gray_of_file(root / rows[i]["path"])) for i in picks]


@pytest.mark.slow
@needs_data
def test_gradcam_is_more_faithful_than_random_on_real_test_films(explainer):
    """ROAD of the shipped model's Grad-CAM against grad-cam's RandomCAM, paired per image, over 10 test
    films spread across both classes (bench/explain.py runs all 156)."""
    differences = []
    for _, gray in _test_films(10):
        maps = {h.method: h for h in explainer.explain(gray, ["gradcam", BASELINE])}
        differences.append(maps["gradcam"].faithfulness.road - maps[BASELINE].faithfulness.road)
    mean, low, _ = mean_ci(np.array(differences))
    assert mean > 0 and low > 0, f"Grad-CAM not above random: mean {mean:+.2f}, CI low {low:+.2f}"


@pytest.mark.slow
def test_the_cache_returns_the_identical_map_and_logs_once(ctx, explainer, config, store):
    from engine.cases.ingest import ingest_files
    from engine.stored import get_case, gray_image
    from tests.conftest import dicom_bytes

    [landed] = ingest_files([("rg1.dcm", dicom_bytes("RG1_UNCR.dcm"))], ctx)
    image = get_case(store, landed.case_id)["images"][0]
    gray = gray_image(config, image)
    first = explain_image(ctx.as_user("tester"), explainer, image, gray, ["gradcam", "ablationcam"])
    again = explain_image(ctx.as_user("tester"), explainer, image, gray, ["gradcam", "ablationcam"])
    assert [h.method for h in first] == ["gradcam", "ablationcam", BASELINE]
    assert not any(h.cached for h in first) and all(h.cached for h in again)
    for a, b in zip(first, again):
        assert np.array_equal(a.cam, b.cam) and a.faithfulness == b.faithfulness and a.runtime_ms == b.runtime_ms
    other_class = explain_image(ctx.as_user("tester"), explainer, image, gray, ["gradcam"], target="normal")
    assert not other_class[0].cached and not np.array_equal(other_class[0].cam, first[0].cam)
    logged = [r for r in store.audit_rows() if r["action"] == "explain"]
    assert len(logged) == 2 and json.loads(logged[-1]["detail"])["methods"] == ["gradcam", "ablationcam", BASELINE]


@pytest.mark.slow
@needs_data
def test_audit_of_20_test_images_summarises_where_the_model_looks(ctx, config, store):
    audit_id = start_audit(ctx, "cxr-pneumonia-resnet18", "gradcam", "cxr_pneumonia", "test",
                           limit=20, background=False)
    summary = run_audit(ctx, audit_id)
    assert summary["n"] == 20 and len(summary["images"]) == 20
    assert {c: v["n"] > 0 for c, v in summary["per_class"].items()} == {"normal": True, "pneumonia": True}
    assert len(summary["most_outside"]) == 8
    shares = sorted((r["border_share"] for r in summary["images"]), reverse=True)
    assert [r["border_share"] for r in summary["images"] if r["name"] in summary["most_outside"]] != []
    assert min(r["border_share"] for r in summary["images"] if r["name"] in summary["most_outside"]) == shares[7]
    assert 0 <= summary["border_share"][0] <= 1 and summary["border_share"][1] <= summary["border_share"][2]
    row = get_audit(store, audit_id)
    assert row["status"] == "finished" and row["done"] == row["total"] == 20
    [listed] = list_audits(store)
    assert listed["border_share"] == summary["border_share"][0] and listed["status"] == "finished"


@pytest.mark.slow
def test_a_failing_audit_is_recorded_with_its_reason(ctx, config, store):
    audit_id = start_audit(ctx, "cxr-pneumonia-resnet18", "gradcam", "folder", "test", background=False)
    with pytest.raises(EngineError, match="not found"):
        run_audit(ctx, audit_id)
    row = get_audit(store, audit_id)
    assert row["status"] == "failed" and "not found" in row["error"] and "\n" not in row["error"]


@pytest.mark.slow
@needs_data
def test_audit_runs_as_a_background_process(ctx, config, store):
    import time

    audit_id = start_audit(ctx, "cxr-pneumonia-resnet18", "gradcam", "cxr_pneumonia", "val", limit=3)
    deadline = time.monotonic() + 180
    while get_audit(store, audit_id)["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(1)
    row = get_audit(store, audit_id)
    assert row["status"] == "finished", row["error"]
    assert json.loads(row["summary"])["n"] == 3 and row["pid"] != os.getpid()


@pytest.mark.slow
@needs_data
def test_cli_audit_prints_the_summary(config):
    env = {**os.environ, "RADLENS_HOME": str(config.home), "RADLENS_DATA_DIR": str(DATA_DIR)}
    done = subprocess.run([sys.executable, "-m", "engine", "heatmap-audit", "--limit", "4", "--json"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["n"] == 4 and set(summary["uniform"]) == {"border_share", "corner_share"}
