"""Models answer only inside their scope: the header rule, the OOD gate, and every surface that reports a
result (CLI, case log, worklist, exports) saying "not analysed" instead."""

import json
import subprocess
import sys

import pytest

from engine.cases.demo import DEMO_DICOMS, seed_demo
from engine.cases.reviews import case_history
from engine.cases.worklist import STATUSES, WorklistQuery, query_worklist
from engine.config import Config
from engine.context import Context, User
from engine.errors import NotAnalysed, PermissionDenied
from engine.models.scope import SCOPES, Scope
from engine.store import MIGRATIONS, open_store
from engine.stored import get_case, get_image, newest_in_scope
from engine.tasks.classification import diagnose_cases, load_classifier, raw_output
from engine.tasks.segmentation import export_seg, load_segmenter, raw_segmentation, segment_case_image
from tests.conftest import DATA_DIR, dicom_path, needs_data

# Its module-wide fixtures are built once: every test of this module runs on the same xdist worker.
pytestmark = pytest.mark.xdist_group("abstention-demo")

CHEST = SCOPES["chest radiograph"]


@pytest.mark.parametrize("modality, body_part, outside", [
    ("CR", "CHEST", None), ("DX", "chest ", None), ("OT", "", None), ("", "", None),  # no header: the OOD gate decides
    ("OT", "CHEST", None), ("US", "", "modality US"), ("CT", "CHEST", "modality CT"),
    ("CR", "EXTREMITY", "body part EXTREMITY"), ("MR", "HEAD", "modality MR"),
])
def test_the_header_rule_of_the_chest_scope(modality, body_part, outside):
    reason = CHEST.outside(modality, body_part)
    assert (reason is None) if outside is None else (outside in reason)


def test_the_ood_gate_decides_where_the_header_is_silent():
    assert CHEST.judge("OT", "", 3.0, 14.0).analysed
    verdict = CHEST.judge("OT", "", 20.0, 14.0)
    assert not verdict.analysed and "OOD score 20.0 > 14.0" in verdict.reason
    assert verdict.text.startswith("not analysed: outside what this model was trained on (")
    assert not CHEST.judge("US", "", 1.0, 14.0).analysed  # the header rule needs no OOD score


def test_a_model_without_a_stated_scope_is_limited_by_its_ood_gate_only(config):
    card = load_classifier_card(config)
    assert Scope.from_card(card.replace(scope=None, data={"dataset": "folder"})).outside("US", "") is None
    assert Scope.from_card(card.replace(scope=None)).outside("US", "")  # cxr_pneumonia: the dataset's scope


def load_classifier_card(config):
    from engine.models.installed import installed_models

    return next(m.card for m in installed_models(config, "classification"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo store, every case classified and segmented once."""
    if DATA_DIR is None:
        pytest.skip("RADLENS_DATA_DIR is not set")
    config = Config(home=tmp_path_factory.mktemp("demo") / "home", data_dir=DATA_DIR)
    ctx = Context(config, open_store(config), User(config.user))
    seed_demo(ctx)
    with ctx.store.read() as db:
        cases = {r[0]: r for r in db.execute("SELECT id, modality, body_part, study_description FROM cases")}
    classifier, segmenter = load_classifier(ctx), load_segmenter(ctx)
    done, failed = diagnose_cases(ctx, classifier, list(cases))
    segmented = {c: segment_case_image(ctx, segmenter, get_case(ctx.store, c)["images"][0]) for c in cases}
    return ctx, cases, {d.case_id: d for d in done}, segmented, failed


def _kind(row) -> str:
    _, modality, body_part, description = row
    if "chest X-ray" in (description or ""):
        return "child chest film"
    return {"US": "ultrasound", "MR": "MR", "CT": "CT"}.get(modality) or f"{modality} {body_part}"


@pytest.mark.slow
@needs_data
def test_demo_cases_outside_the_classifiers_scope_are_not_analysed_and_the_chest_films_are(demo):
    ctx, cases, done, _, failed = demo
    assert not failed
    kinds = {c: _kind(row) for c, row in cases.items()}
    for case_id, kind in kinds.items():
        verdict = done[case_id].verdict
        if kind == "child chest film":
            assert verdict.analysed, (case_id, verdict)
        elif kind in ("ultrasound", "MR", "CT", "CR EXTREMITY"):
            assert not verdict.analysed and done[case_id].prediction is None, (case_id, kind)
    assert {"ultrasound", "MR", "CT", "CR EXTREMITY", "child chest film"} <= set(kinds.values())
    # The log says so too: the case history and the worklist.
    us = next(c for c, k in kinds.items() if k == "ultrasound")
    logged = case_history(ctx.store, us)["predictions"][0]
    assert logged["label"].startswith("not analysed: outside what this model was trained on (modality US")
    assert logged["probability"] is None
    abstained = "Not analysed (outside the model's scope)"
    assert abstained in STATUSES
    rows = {r["id"]: r for r in query_worklist(ctx.store, WorklistQuery(status=abstained)).rows}
    assert us in rows and all(r["latest_label"] == "not analysed" for r in rows.values())
    assert not any(kinds[c] == "child chest film" for c in rows)


@needs_data
def test_the_segmenter_analyses_the_ultrasounds_only_and_exports_nothing_else(demo):
    ctx, cases, _, segmented, _ = demo
    for case_id, row in cases.items():
        assert segmented[case_id].verdict.analysed == (row[1] == "US" or (row[1] == "OT" and not row[2])), row
    chest = next(s for c, s in segmented.items() if cases[c][1] == "CR")
    assert chest.result is None and "modality CR; trained on US" in chest.verdict.reason
    image = get_image(ctx.store, chest.image_id)
    with pytest.raises(NotAnalysed, match="nothing to export: not analysed"):
        export_seg(ctx, image, chest, load_segmenter(ctx))
    with ctx.store.read() as db:
        logged = db["segmentations"].get(chest.segmentation_id)
    assert logged["status"] == "not_analysed" and "modality CR" in logged["status_reason"]


@needs_data
def test_raw_output_needs_the_permission_and_is_audited(demo):
    ctx, cases, done, segmented, _ = demo
    ct = next(d for c, d in done.items() if cases[c][1] == "CT")
    with pytest.raises(PermissionDenied):
        raw_output(ctx.as_user(User("local:dr-a", "Dr A", "clinician")), ct)
    researcher = ctx.as_user(User("local:res-a", "Res A", "researcher"))
    assert raw_output(researcher, ct).probability == ct.raw.probability
    rows = [r for r in ctx.store.audit_rows(50) if r["action"] == "case.raw_output"]
    assert rows and json.loads(rows[0]["detail"])["prediction_id"] == ct.prediction_id
    assert raw_segmentation(researcher, next(iter(segmented.values()))) is not None


@needs_data
def test_the_newest_case_in_scope_is_what_a_models_page_opens_on(demo):
    ctx, cases, _, _, _ = demo
    newest = newest_in_scope(ctx.store, CHEST)
    assert _kind(cases[newest]) in ("child chest film", "CR CHEST")


def _cli(home, *args):
    env = {"RADLENS_HOME": str(home), "RADLENS_DATA_DIR": str(DATA_DIR or ""), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.mark.slow
def test_classify_command_says_not_analysed_for_us_mr_ct_and_a_leg_film(tmp_path):
    names = [n for n in DEMO_DICOMS if n != "RG1_UNCR.dcm"]  # US, MR (x2), CT, leg CR
    run = _cli(tmp_path / "home", "classify", *[str(dicom_path(n)) for n in names], "--json")
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(lines) == len(names)
    for line in lines:
        assert line["status"] == "not_analysed" and line["reason"].startswith("not analysed: outside what this model")
        assert "label" not in line and "probability" not in line and "raw_output_outside_scope" not in line
    research = _cli(tmp_path / "home2", "classify", str(dicom_path("US1_J2KR.dcm")), "--json", "--show-raw")
    [line] = [json.loads(x) for x in research.stdout.splitlines()]
    assert line["status"] == "not_analysed" and 0 <= line["raw_output_outside_scope"]["probability"] <= 1


@pytest.mark.slow
def test_segment_command_says_not_analysed_for_a_chest_film(tmp_path):
    run = _cli(tmp_path / "home", "segment", str(dicom_path("RG1_UNCR.dcm")), "--json")
    [line] = [json.loads(x) for x in run.stdout.splitlines()]
    assert line["status"] == "not_analysed" and "modality CR" in line["reason"]
    assert "head_circumference" not in line


def test_migration_9_turns_logged_ood_predictions_into_abstentions(config):
    """A database at version 8 with two predictions: the one its OOD gate flagged is no result any more."""
    from sqlite_utils import Database

    path = config.home / "radlens.db"
    path.parent.mkdir(parents=True)
    db = Database(path)
    db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT, applied_at TEXT)")
    for version, name, apply in MIGRATIONS[:8]:
        apply(db)
        db["schema_migrations"].insert({"version": version, "name": name, "applied_at": ""})
    for flag, score in ((0, 3.0), (1, 20.0)):
        db["predictions"].insert({"case_id": 1, "label": "pneumonia", "probability": 0.99, "ood_flag": flag,
                                  "ood_score": score, "ood_threshold": 14.0})
    db.conn.commit()
    db.close()
    store = open_store(config)
    with store.read() as db:
        rows = list(db.query("SELECT status, status_reason FROM predictions ORDER BY id"))
    assert [r["status"] for r in rows] == ["analysed", "not_analysed"]
    assert rows[1]["status_reason"] == ("the image is unlike the training images: OOD score 20.0 > 14.0 "
                                        "(logged before abstention)")
