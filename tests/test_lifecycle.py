"""Model lifecycle: promote and roll back (audited), comparing two versions on one held-out split, the
training set built from clinician reviews, and the worklist's most-uncertain-first order."""

import csv

import pytest

from engine.cases.ingest import ingest_files
from engine.cases.reviews import add_review
from engine.cases.worklist import WorklistQuery, query_worklist
from engine.data.loaders import load_dataset
from engine.data.reviews import add_reviews
from engine.errors import EngineError, UnknownModel
from engine.models.installed import (
    activation_log,
    active_model,
    installed_models,
    promote,
    rollback,
    rollback_target,
)
from engine.models.preprocess import Preprocessing
from engine.store import utc_now
from engine.stored import get_image
from engine.tasks.classification import diagnose_cases, load_classifier
from engine.tasks.evaluation import compare_models
from engine.train import run as training
from tests.conftest import DATA_DIR, DEFAULT_CLASSIFIER, make_model_file, needs_data, write_cxr_subset

pytestmark = pytest.mark.slow  # trains, runs jobs, pages or a PACS: `make test-fast` skips it


def test_promote_then_roll_back_switches_the_active_model_and_is_audited(ctx, config, store):
    make_model_file(config.home / "models" / "candidate.safetensors")
    assert active_model(ctx).name == DEFAULT_CLASSIFIER
    with pytest.raises(UnknownModel, match="no earlier"):
        rollback(ctx, "classification", "no earlier model exists")

    promote(ctx, "candidate", "better sensitivity on the held-out split")
    assert active_model(ctx).name == "candidate"
    assert rollback_target(ctx, "classification").name == DEFAULT_CLASSIFIER
    rollback(ctx, "classification", "false positives on portable films")
    assert active_model(ctx).name == DEFAULT_CLASSIFIER
    assert active_model(ctx, "segmentation").name == "hc18-unet"  # the other task is untouched

    log = activation_log(store)
    assert [(r["action"], r["model"], r["replaced"]) for r in log] == [
        ("model.rollback", DEFAULT_CLASSIFIER, "candidate"),
        ("model.promote", "candidate", DEFAULT_CLASSIFIER)]
    assert all(r["actor"] == config.user and r["task"] == "classification" for r in log)
    assert [r["reason"] for r in log] == ["false positives on portable films",
                                          "better sensitivity on the held-out split"]


def test_the_newest_shipped_version_is_the_default_and_the_older_one_stays_for_roll_back(ctx, config):
    shipped = {m.name: m.card.version for m in installed_models(config, "classification") if m.shipped}
    assert shipped == {"cxr-pneumonia-resnet18": "1.0.0", DEFAULT_CLASSIFIER: "2.0.0"}
    assert active_model(ctx).name == DEFAULT_CLASSIFIER
    promote(ctx, "cxr-pneumonia-resnet18", "back to 1.0.0 while 2.0.0 is checked")
    assert active_model(ctx).name == "cxr-pneumonia-resnet18"
    rollback(ctx, "classification", "2.0.0 checked, going back to it")
    assert active_model(ctx).name == DEFAULT_CLASSIFIER


@needs_data
def test_compare_evaluates_both_versions_on_the_same_test_images(config, store):
    make_model_file(config.home / "models" / "untrained.safetensors")
    result = compare_models(config, ["cxr-pneumonia-resnet18", "untrained"])
    reports = result["reports"]
    assert reports["cxr-pneumonia-resnet18"]["n"] == reports["untrained"]["n"] == 156
    delta, low, high = result["difference"]["AUC"]  # untrained minus shipped, paired over the same films
    assert delta == pytest.approx(reports["untrained"]["auc"] - reports["cxr-pneumonia-resnet18"]["auc"])
    assert low <= delta <= high < 0
    assert reports["cxr-pneumonia-resnet18"]["auc"] > 0.95 > reports["untrained"]["auc"]
    assert {"ci95", "roc", "confusion", "reliability"} <= set(reports["untrained"])
    seg = compare_models(config, ["hc18-unet", "hc18-unet"])  # the segmentation path: Dice and HC error
    assert seg["reports"]["hc18-unet"]["n"] == 96 and seg["difference"]["Dice"] == [0.0, 0.0, 0.0]
    assert seg["difference"]["HC absolute error (mm)"] == [0.0, 0.0, 0.0]
    with pytest.raises(EngineError, match="different tasks"):
        compare_models(config, ["cxr-pneumonia-resnet18", "hc18-unet"])


def _ingest(ctx, path):
    result = ingest_files([(path.name, path.read_bytes())], ctx)[0]
    assert result.ok, result.error
    return result.case_id


@needs_data
def test_reviewed_cases_become_training_data_and_held_out_films_are_left_out(ctx, config, store, tmp_path, monkeypatch):
    folder = write_cxr_subset(tmp_path / "home" / "datasets" / "cxr", {"train": 4, "val": 3, "test": 3})
    with open(DATA_DIR / "cxr_pneumonia" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    train = [r for r in rows if r["demo_split"] == "train"]
    normal = next(r for r in train if r["label"] == "normal")
    pneumonia = next(r for r in train if r["label"] == "pneumonia")
    with open(DATA_DIR / "cxr_pneumonia_fullres" / "manifest.csv", newline="") as f:
        fullres = next(iter(csv.DictReader(f)))  # a full-resolution copy of a held-out film
    with open(folder / "manifest.csv", "a", newline="") as f:  # ... which this subset's test split holds
        csv.writer(f).writerow([str(DATA_DIR / fullres["downsized_copy"]), fullres["label"], "test"])

    corrected = _ingest(ctx, DATA_DIR / "cxr_pneumonia" / normal["path"])
    agreed = _ingest(ctx, DATA_DIR / "cxr_pneumonia" / pneumonia["path"])
    vague = _ingest(ctx, DATA_DIR / "cxr_pneumonia" / train[5]["path"])
    held_out = _ingest(ctx, DATA_DIR / "cxr_pneumonia_fullres" / fullres["file"])
    done, _ = diagnose_cases(ctx, load_classifier(ctx), [agreed])

    superseded = add_review(ctx.as_user("dr a"), corrected, "agree", prediction_id=None)
    fixed = add_review(ctx.as_user("dr b"), corrected, "corrected", "pneumonia")
    agree = add_review(ctx.as_user("dr a"), agreed, "agree", prediction_id=done[0].prediction_id)
    disagree = add_review(ctx.as_user("dr a"), vague, "disagree")
    test_film = add_review(ctx.as_user("dr a"), held_out, "corrected", fullres["label"])

    splits = load_dataset("folder", Preprocessing(size=64), None, folder)
    base_train = len(splits.sets["train"])
    record = add_reviews(splits, ctx, [superseded, fixed, agree, disagree, test_film],
                         Preprocessing(size=64), with_base_train=True)
    assert record["used"] == [fixed, agree] and record["cases"] == [corrected, agreed]
    assert record["labels"] == {fixed: "pneumonia", agree: done[0].prediction.label}
    assert record["reviewers"] == {"dr a": 1, "dr b": 1}  # who labelled what the model learns from
    assert set(record["left_out"]) == {str(superseded), str(disagree), str(test_film)}
    assert "superseded" in record["left_out"][str(superseded)]
    assert "without a corrected label" in record["left_out"][str(disagree)]
    assert record["left_out"][str(test_film)].startswith("the same film as test image")
    train_set = splits.sets["train"]
    assert len(train_set) == base_train + 2
    assert train_set.labels[-2:].tolist() == [1, splits.label_names.index(done[0].prediction.label)]

    # The training program with those reviews: the card lists exactly the reviews it trained on.
    monkeypatch.setenv("RADLENS_HOME", str(config.home))
    card = training.cli([
        "--dataset", "folder", "--data-path", str(folder), "--size", "48", "--batch-size", "4", "--epochs", "1",
        "--threads", "1", "--output", str(tmp_path / "run"), "--name", "from-reviews",
        "--review-ids", f"{superseded},{fixed},{agree},{disagree},{test_film}"])
    assert card.data["reviews"]["used"] == [fixed, agree]
    assert card.data["reviews"]["reviewers"] == {"dr a": 1, "dr b": 1}
    assert sum(card.data["counts"]["train"].values()) == base_train + 2
    assert "plus 2 clinician-reviewed case(s)" in card.data["description"]

    only = load_dataset("folder", Preprocessing(size=64), None, folder)
    add_reviews(only, ctx, [fixed], Preprocessing(size=64), with_base_train=False)
    assert len(only.sets["train"]) == 1
    with pytest.raises(EngineError, match="none of the selected reviews"):
        add_reviews(load_dataset("folder", Preprocessing(size=64), None, folder), ctx, [test_film],
                    Preprocessing(size=64), with_base_train=True)


def test_worklist_puts_the_most_uncertain_case_first(ctx, config, store):
    from tests.conftest import dicom_bytes

    results = ingest_files([(f"{n}.dcm", dicom_bytes(n)) for n in ("RG1_UNCR.dcm", "693_UNCR.dcm", "CT_small.dcm")],
                           ctx)
    cases = [r.case_id for r in results]
    with store.write() as db:
        for case, uncertainty in zip(cases[:2], (0.2, 0.9)):
            image = get_image(store, next(r.image_id for r in results if r.case_id == case))
            db["predictions"].insert({"case_id": case, "image_id": image["id"], "label": "normal",
                                      "probability": 0.5, "uncertainty": uncertainty, "created_at": utc_now()})
    rows = query_worklist(store, WorklistQuery(sort="Most uncertain first")).rows
    assert [r["id"] for r in rows] == [cases[1], cases[0], cases[2]]  # no prediction: last
    assert rows[0]["latest_uncertainty"] == 0.9
