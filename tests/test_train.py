"""The training program end to end on a small real subset: weights + card written atomically, the card
complete, resume continuing at epoch + 1, and the result loadable by the inference engine."""

import json
from pathlib import Path

import numpy as np
import pytest

from engine.inference.classify import Classifier
from engine.models import load_model
from engine.models.checkpoint import load_state, save_state
from engine.train.run import cli
from tests.conftest import needs_data, write_cxr_subset

pytestmark = pytest.mark.slow  # trains, runs jobs, pages or a PACS: `make test-fast` skips it


def _tiny_run(tmp_path, monkeypatch) -> tuple[Path, list[str]]:
    """A run folder and the arguments of a seconds-long training on the tests' 48-film subset."""
    monkeypatch.setenv("RADLENS_HOME", str(tmp_path / "home"))
    write_cxr_subset(tmp_path / "data")
    out = tmp_path / "run"
    return out, ["--dataset", "folder", "--data-path", str(tmp_path / "data"), "--size", "48", "--batch-size", "8",
                 "--output", str(out), "--name", "tiny", "--threads", "1"]


@needs_data
def test_train_resume_and_load(tmp_path, monkeypatch):
    out, common = _tiny_run(tmp_path, monkeypatch)
    cli([*common, "--epochs", "2"])
    # as if the first segment had trained for an hour before it was stopped: the resumed card must count it
    state = load_state(out / "state.pt")
    save_state(out / "state.pt", {**state, "elapsed_s": 3600.0})
    card = cli([*common, "--epochs", "3", "--resume"])
    assert 3600 < card.training["wall_time_s"] < 3600 + 600

    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]  # the resumed run started at epoch 2, not from scratch
    assert json.loads((out / "progress.json").read_text())["epoch"] == 2
    assert card.data["counts"]["train"] == {"normal": 12, "pneumonia": 12}
    assert card.labels == ["normal", "pneumonia"] and card.preprocessing["size"] == 48
    assert card.calibration["temperature"] > 0 and 0 <= card.operating_point["threshold"] <= 1
    assert {"auc", "ci95", "sensitivity_at_specificity_0.90", "ece", "confusion"} <= set(card.metrics["test"])
    assert set(card.metrics["test"]["ci95"]) >= {"auc", "sensitivity", "specificity", "f1"}
    assert "python -m engine.train.run" in card.training["command"]
    assert not list(out.glob(".*tmp"))

    loaded = load_model(out / "tiny.safetensors")
    assert json.loads((out / "tiny.json").read_text())["weights_sha256"] == loaded.sha256
    prediction = Classifier(loaded).classify(np.full((300, 300), 128, np.uint8))
    assert prediction.label in ("normal", "pneumonia") and prediction.cam.shape == (48, 48)


@needs_data
def test_cross_validation_calibrates_on_out_of_fold_predictions_and_resumes_fold_by_fold(tmp_path, monkeypatch):
    from engine.metrics import CALIBRATORS
    from engine.tasks.classification import OutOfFold

    out, common = _tiny_run(tmp_path, monkeypatch)
    args = [*common, "--epochs", "1", "--folds", "3", "--precision", "bf16", "--label-smoothing", "0.1"]
    card = cli(args)
    cv = card.data["cross_validation"]
    assert (cv["folds"], cv["images"], cv["grouping"]) == (3, 36, "patient")
    assert card.data["counts"]["train"] == {"normal": 18, "pneumonia": 18}  # the model trained on train + val
    assert card.metrics["val"]["n"] == 12 and card.metrics["cv"]["n"] == 36 and card.metrics["test"]["n"] == 12
    assert card.calibration["method"] in CALIBRATORS
    assert set(card.calibration["cross_validated_ece"]) == set(CALIBRATORS)
    assert "out-of-fold" in card.operating_point["rule"] and "out-of-fold" in card.ood["rule"]
    assert card.training["precision"] == "bf16" and "label smoothing 0.1" in card.training["loss"]
    oof = OutOfFold.from_extras(load_model(out / "tiny.safetensors").extras)
    assert len(oof.labels) == 36 and sorted(set(oof.fold.tolist())) == [0, 1, 2] and int(oof.in_val.sum()) == 12
    for k in range(3):  # a finished fold keeps its predictions, not its 2x-model-size checkpoint
        assert (out / f"fold-{k}" / "oof.npz").is_file() and not (out / f"fold-{k}" / "state.pt").exists()

    logged = {k: (out / f"fold-{k}" / "metrics.jsonl").read_text() for k in range(3)}
    again = cli([*args, "--resume"])  # a killed run restarts: no finished fold is trained again
    assert {k: (out / f"fold-{k}" / "metrics.jsonl").read_text() for k in range(3)} == logged
    assert again.calibration == card.calibration
