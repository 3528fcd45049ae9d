"""Model registry, checkpoints, preprocessing, single-pass Grad-CAM and the metrics behind the card."""

import copy
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engine.draw import overlay
from engine.errors import BadCheckpoint, UnknownModel, WeightsUnavailable
from engine.inference.cam import single_pass_cam, standard_cam
from engine.inference.classify import Classifier
from engine.metrics import (
    auc_ci,
    ece,
    fit_temperature,
    sens_at_spec,
    threshold_for_specificity,
)
from engine.models import cam_layer, create_model, list_models, load_model
from engine.models.preprocess import Preprocessing
from engine.models.registry import imagenet_path
from tests.conftest import make_model_file

ROOT = Path(__file__).resolve().parent.parent

CLASSIFIERS = list_models("classification")


def test_registry_has_the_promised_architectures():
    assert {"resnet18", "resnet50", "densenet121", "efficientnet_b0", "convnext_tiny"} <= set(CLASSIFIERS)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_classifier_builds_for_gray_input_and_any_class_count(name):
    model = create_model(name, num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 64, 64))
    assert out.shape == (2, 3)
    assert isinstance(cam_layer(model, name), torch.nn.Module)


def test_unknown_model_names_the_available_ones():
    with pytest.raises(UnknownModel, match="resnet18"):
        create_model("resnet19")


def test_imagenet_init_without_local_weights_is_a_clear_error_not_a_download(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsUnavailable, match="local torch cache"):
        create_model("resnet18", pretrained=True)


def test_imagenet_init_reads_the_local_cache_and_folds_rgb_into_gray(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    rgb = torchvision.models.resnet18(weights=None)
    imagenet_path("resnet18").parent.mkdir(parents=True)
    torch.save(rgb.state_dict(), imagenet_path("resnet18"))
    gray = create_model("resnet18", num_classes=2, pretrained=True)
    assert torch.allclose(gray.conv1.weight, rgb.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(gray.layer4[1].conv2.weight, rgb.layer4[1].conv2.weight)


@pytest.mark.parametrize("half", [False, True])
def test_checkpoint_round_trip_keeps_weights_card_and_extras(tmp_path, half):
    path = make_model_file(tmp_path / "m.safetensors", half=half)
    loaded = load_model(path)
    again = load_model(path)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), again.model(x))
    assert loaded.card.arch == "resnet18" and loaded.card.format_version == 1
    assert loaded.preprocessing.size == 64 and loaded.preprocessing.mean == 0.3
    assert loaded.extras["ood_precision"].shape == (512, 512)
    assert (tmp_path / "m.json").is_file() and not list(tmp_path.glob(".*tmp"))


def test_a_non_square_input_resizes_to_width_by_height_and_old_cards_stay_square():
    prep = Preprocessing(size=64, mean=0.3, std=0.2, height=48)
    gray = np.random.default_rng(0).integers(0, 256, (270, 400), dtype=np.uint8)
    x = prep(gray)
    expected = (cv2.resize(gray, (64, 48), interpolation=cv2.INTER_AREA) / 255 - 0.3) / 0.2
    assert x.shape == (1, 1, 48, 64) and np.allclose(x[0, 0].numpy(), expected, atol=1e-5)
    assert Preprocessing.from_dict(prep.to_dict()) == prep and "64x48" in prep.summary()
    square = Preprocessing.from_dict({"size": 224, "mean": 0.5, "std": 0.25, "resize": "cv2-area"})
    assert square.shape == (224, 224) and "height" not in square.to_dict()


def test_a_corrupt_weights_file_is_a_named_error(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(BadCheckpoint, match="broken.safetensors"):
        load_model(path)


def test_classifier_applies_exactly_the_stored_preprocessing(tmp_path):
    """Mismatched normalisation is the classic silent error: recompute the input by hand from the card."""
    loaded = load_model(make_model_file(tmp_path / "m.safetensors", size=64, mean=0.3, std=0.2))
    reference = copy.deepcopy(loaded.model)
    gray = np.random.default_rng(0).integers(0, 256, (300, 240), dtype=np.uint8)
    prediction = Classifier(loaded).classify(gray)
    small = cv2.resize(gray, (64, 64), interpolation=cv2.INTER_AREA)
    x = (torch.from_numpy(small).float()[None, None] / 255 - 0.3) / 0.2
    with torch.no_grad():
        raw = torch.softmax(reference(x), 1)[0]
        calibrated = torch.softmax(reference(x) / 1.5, 1)[0]
    assert prediction.probabilities_raw["pneumonia"] == pytest.approx(float(raw[1]), abs=1e-5)
    assert prediction.probability == pytest.approx(float(calibrated[1]), abs=1e-5)


@pytest.mark.parametrize("arch", ["resnet18", "densenet121", "efficientnet_b0"])
def test_single_pass_cam_equals_grad_cams_standard_gradcam(arch):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=2).eval()
    reference = copy.deepcopy(model)
    model.requires_grad_(False)
    x = torch.rand(2, 1, 96, 96)
    logits, maps, chosen, _ = single_pass_cam(model, cam_layer(model, arch), x, choose=lambda z: 1)
    ref_logits, ref_maps = standard_cam(reference, cam_layer(reference, arch), x, target=1)
    assert chosen == [1, 1]
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    assert maps.shape == (2, 96, 96) and maps.min() >= 0 and maps.max() <= 1
    np.testing.assert_allclose(maps, ref_maps, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())  # the backward never reached the parameters


def test_overlay_keeps_the_radiograph_where_there_is_no_evidence():
    gray = np.full((40, 60), 100, np.uint8)
    cam = np.zeros((8, 8), np.float32)
    cam[:4, :4] = 1.0
    out = overlay(gray, cam, alpha=0.5)
    assert out.shape == (40, 60, 3)
    assert (out[-1, -1] == 100).all() and not (out[0, 0] == 100).all()


def test_metrics_match_hand_computed_values():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    assert auc_ci(y, p, n_boot=50)[0] == pytest.approx(15 / 16)
    t = threshold_for_specificity(y, p, 0.75)
    assert ((p >= t) & (y == 0)).sum() == 1 and ((p >= t) & (y == 1)).sum() == 4
    assert t == pytest.approx(0.35)  # midway between the negative it excludes and the next score: no image sits on it
    assert sens_at_spec(y, p, 0.75) == pytest.approx(1.0)
    assert ece(np.array([1, 0]), np.array([0.5, 0.5]), bins=10) == pytest.approx(0.0)


def test_the_numpy_metrics_give_sklearns_numbers_with_ties_and_float32_scores():
    """The card's AUC, sensitivity at specificity, specificity at sensitivity and ECE are numpy (the bootstrap
    runs them 2,000 times); the shipped cards were written with sklearn's, so they must agree exactly."""
    from sklearn.metrics import roc_auc_score, roc_curve

    from engine.metrics import auc, reliability, spec_at_sens

    rng = np.random.default_rng(0)
    for case in range(300):
        n = int(rng.integers(3, 300))
        y = rng.integers(0, 2, n)
        if y.min() == y.max():
            continue
        p = rng.random(n)
        p = np.round(p, 1) if case % 3 == 0 else p.astype(np.float32) if case % 3 == 1 else p
        fpr, tpr, _ = roc_curve(y, p)
        assert auc(y, p) == roc_auc_score(y, p)
        for spec in (0.5, 0.9):
            assert sens_at_spec(y, p, spec) == float(tpr[fpr <= 1 - spec + 1e-12].max())
        assert spec_at_sens(y, p, 0.95) == float(1 - fpr[tpr >= 0.95 - 1e-12].min())
        by_bins = sum(k / n * abs(rate - mean) for mean, rate, k in reliability(y, p) if k)
        assert ece(y, p) == pytest.approx(by_bins, abs=1e-7)  # float32 bin means vs float64 sums: ~1e-9 apart


def test_temperature_scaling_tames_overconfident_logits():
    torch.manual_seed(0)
    labels = torch.randint(0, 2, (2000,))
    signal = torch.randn(2000) + (labels * 2 - 1) * 1.0  # a well-specified logit...
    logits = torch.stack([-signal, signal], 1) * 4  # ...made 4x overconfident
    t = fit_temperature(logits, labels)
    before = ece(labels.numpy(), torch.softmax(logits, 1)[:, 1].numpy())
    after = ece(labels.numpy(), torch.softmax(logits / t, 1)[:, 1].numpy())
    assert 3 < t < 5 and after < before / 3  # the true temperature is 4


@pytest.mark.parametrize("name", ["cxr-pneumonia-resnet18", "cxr-pneumonia-resnet18-v2", "hc18-unet"])
def test_a_shipped_card_reads_into_a_model_card_and_back_unchanged(name):
    """Cards on disk stay readable: every key of the JSON copy survives from_dict -> to_dict."""
    from engine.models.card import ModelCard

    on_disk = json.loads((ROOT / "weights" / f"{name}.json").read_text())
    card = ModelCard.from_dict(on_disk)
    assert card.to_dict() == on_disk
    assert card.task in ("classification", "segmentation") and card.test_metrics is not None
    assert (card.calibration is None) == (card.task == "segmentation")  # task parts are None for the other task


def test_a_card_missing_its_identity_is_a_bad_checkpoint():
    from engine.models.card import ModelCard

    with pytest.raises(BadCheckpoint, match="lacks arch"):
        ModelCard.from_dict({"name": "x", "version": "1", "task": "classification", "labels": [], "preprocessing": {}})


def test_a_result_says_what_its_threshold_uncertainty_and_ood_score_mean():
    from dataclasses import replace

    from engine.inference.classify import (
        Prediction,
        ood_in_words,
        operating_point_in_words,
        uncertainty_in_words,
    )
    from engine.models.installed import SHIPPED_DIR

    card = load_model(SHIPPED_DIR / "cxr-pneumonia-resnet18-v2.safetensors").card
    # The shipped card's test split: 116 pneumonia films all flagged, 6 of 40 normals flagged.
    assert operating_point_in_words(card) == (
        "At this threshold (13.8%), on the 156 held-out test images: sensitivity 100% (116 of 116 pneumonia images "
        "flagged), specificity 85%: about 15 in 100 normal images are flagged.")
    assert operating_point_in_words(replace(card, metrics={})) is None  # a card without test figures says nothing
    sure = Prediction("pneumonia", 0.99, {}, {}, 0.138, 0.08, "entropy", 15.5, 19.9, 10.0, None)
    assert uncertainty_in_words(sure).startswith("low") and ood_in_words(sure).startswith("below the threshold")
    toss = replace(sure, probability=0.55, uncertainty=0.99, ood_score=25.0)
    assert uncertainty_in_words(toss).startswith("high") and "unreliable" in ood_in_words(toss)
    assert uncertainty_in_words(replace(sure, uncertainty=0.1, uncertainty_method="tta-8")).startswith("moderate")
