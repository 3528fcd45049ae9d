"""The training program end to end on a small real subset: weights + card written atomically, the card
complete, resume continuing at epoch + 1, and the result loadable by the inference engine."""

import json

import numpy as np

from engine.inference.classify import Classifier
from engine.models import load_model
from engine.train.run import cli
from tests.conftest import needs_data, write_cxr_subset


@needs_data
def test_train_resume_and_load(tmp_path, monkeypatch):
    monkeypatch.setenv("RADLENS_HOME", str(tmp_path / "home"))
    write_cxr_subset(tmp_path / "data")
    out = tmp_path / "run"
    common = ["--dataset", "folder", "--data-path", str(tmp_path / "data"), "--size", "48", "--batch-size", "8",
              "--output", str(out), "--name", "tiny", "--threads", "2"]
    cli([*common, "--epochs", "2"])
    card = cli([*common, "--epochs", "3", "--resume"])

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
