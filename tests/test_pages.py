"""Every page through Streamlit's AppTest, on a real store seeded with real studies."""

import re
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from dashboard import state
from dashboard.registry import PAGES
from dashboard.widgets import DISCLAIMER
from engine.cases.ingest import ingest_files
from engine.config import Config
from engine.context import ACCOUNT_ROLES, ROLES, Context, User
from engine.identity.sessions import start_session
from tests.conftest import DEFAULT_CLASSIFIER, dicom_bytes, make_model_file, needs_data, write_cxr_subset

pytestmark = pytest.mark.slow  # trains, runs jobs, pages or a PACS: `make test-fast` skips it

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "dashboard" / "app.py")


@pytest.fixture
def app_home(config, store, ctx, monkeypatch):
    monkeypatch.setenv("RADLENS_HOME", str(config.home))
    st.cache_resource.clear()  # resources are process-wide; each test gets its own home
    st.cache_data.clear()
    ingest_files([("rg1.dcm", dicom_bytes("RG1_UNCR.dcm")), ("ct.dcm", dicom_bytes("693_UNCR.dcm"))], ctx)
    yield config
    st.cache_resource.clear()


# Each page is opened by a role that may see it (the first of clinician, researcher, admin holding its permission).
ROLE_FOR = {p.script: next(r for r in ACCOUNT_ROLES if p.permission in ROLES[r]) for p in PAGES}


def _signed_in(role: str) -> str:
    """A live session token for a `role` account (what the login form leaves in the tab's state)."""
    ctx = Context.open(Config.from_env())
    return start_session(ctx, User(f"local:{role}-tester", f"{role} tester", role), "local")


def _app(role: str | None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    if role:
        at.session_state[state.SESSION] = _signed_in(role)
    return at


def _run(page: str | None = None, role: str | None = None, **session) -> AppTest:
    at = _app(role or ROLE_FOR.get(page, "clinician"))
    for key, value in session.items():
        at.session_state[key] = value
    at.run()
    if page:
        at.switch_page(str(ROOT / page)).run()
    assert not at.exception, [e.message for e in at.exception]
    assert any(DISCLAIMER in c.value for c in at.caption)
    return at


def test_worklist_lists_cases_and_filters(app_home):
    at = _run()
    assert at.title[0].value == "Worklist"
    assert len(at.dataframe[0].value) == 2
    at.multiselect[0].select("CT").run()
    assert list(at.dataframe[0].value["Modality"]) == ["CT"]
    assert [b.label for b in at.get("download_button")] == ["CSV of these 1 case", "PDF report of these 1 case"]
    at.text_input(key="worklist.search").input("nothing-matches-this").run()
    assert len(at.dataframe[0].value) == 0 and any("0 case(s)" in c.value for c in at.caption)


def test_upload_page_invites_files(app_home):
    at = _run("pages/upload.py")
    assert at.title[0].value == "Upload studies"
    assert "Drop files" in at.info[0].value


def shown(markdown: str) -> str:
    """What a Markdown source shows: values are escaped (dashboard/text.py), the reader sees them plain."""
    return re.sub(r"\\(.)", r"\1", markdown).replace("\u2060", "")


def test_viewer_shows_monochrome1_steps_and_tags(app_home):
    at = _run("pages/viewer.py", **{"radlens.current_case": 1})
    assert at.title[0].value == "Study viewer"
    text = shown(" ".join(m.value for m in at.markdown))
    assert "MONOCHROME1 inverted" in text and "8-bit display" in text and "CR" in text
    assert at.selectbox(key="radlens.window_preset.1").value.startswith("File window")
    assert len(at.dataframe) == 1  # de-identified header table


def test_viewer_window_presets_change_the_image_steps(app_home):
    at = _run("pages/viewer.py", **{"radlens.current_case": 2})
    at.selectbox(key="radlens.window_preset.2").select_index(2).run()  # a CT preset after the file windows
    text = shown(" ".join(m.value for m in at.markdown))
    assert "(user)" in text and not at.exception


def test_viewer_unknown_case_is_one_clear_error(app_home):
    at = _run("pages/viewer.py", **{"radlens.current_case": 999})
    assert "case 999 does not exist" in at.error[0].value


@pytest.fixture
def child_film(ctx, app_home) -> int:
    """Case 3: a pediatric chest film (full resolution, held out from training), inside the model's scope."""
    from tests.conftest import DATA_DIR

    film = DATA_DIR / "cxr_pneumonia_fullres" / "NORMAL2-IM-1113-0001.jpeg"
    [result] = ingest_files([("film.jpeg", film.read_bytes())], ctx)
    return result.case_id


@needs_data
def test_diagnosis_shows_calibrated_probability_cam_and_saves_a_review(app_home, child_film):
    at = _run("pages/diagnosis.py", **{"radlens.current_case": child_film})
    assert at.title[0].value == "Diagnosis"
    assert at.metric[0].label == "Calibrated probability of pneumonia" and at.metric[0].value.endswith("%")
    text = " ".join(m.value for m in at.markdown)
    assert "operating threshold" in text and "Uncertainty" in text and "OOD score" in text
    # Beside the number, what it means: the threshold in counts, the uncertainty and OOD score in words, the limits.
    assert any("in 100 normal images are flagged" in shown(c.value) for c in at.caption)
    assert "the image resembles the films the model was trained on" in shown(text)
    assert re.search(r"bits \(predictive entropy; 0 = certain, 1 = coin toss\), (low|moderate|high): ", shown(text))
    assert [e.label for e in at.expander] == ["What this model is for, and its limits (from its card)"]
    assert any("Pediatric patients (1-5 years) only" in t.value for t in at.text)
    assert any("Grad-CAM (gradcam)" in c.value for c in at.caption)
    downloads = {b.label: b.proto.disabled for b in at.get("download_button")}
    assert downloads == {"PDF report": False, "DICOM SR + captures": True}  # a JPEG upload: no DICOM source
    assert any("only for studies that came from one" in c.value for c in at.caption)  # not from a PACS
    from engine.cases.reviews import case_history
    from engine.store import open_store

    # No verdict is chosen for the reader, and saving without one records nothing.
    assert at.radio[0].label == "Your reading" and at.radio[0].value is None
    assert any(c.value == "Not reviewed yet." for c in at.caption)
    next(b for b in at.button if b.label == "Save review").click()
    at.run()
    assert any("Choose your reading first" in e.value for e in at.error)
    assert case_history(open_store(app_home), child_film)["reviews"] == []

    at.radio[0].set_value("disagree")
    at.text_area[0].input("Consolidation is in the left lower lobe, *not* the right.")
    next(b for b in at.button if b.label == "Save review").click()
    at.run()
    assert not at.exception and at.success[0].value == "Review saved."
    history = case_history(open_store(app_home), child_film)
    assert history["reviews"][0]["verdict"] == "disagree" and len(history["predictions"]) == 1
    # The saved reading shows in place, with who (the form clearing itself is checked in a real browser:
    # AppTest does not clear forms on submit).
    [saved] = [i.value for i in at.info if "Saved reading" in i.value]
    assert "Saved reading: Disagree, by clinician tester at " in shown(saved) and "UTC" in shown(saved)
    assert r"\*not\*" in saved and "*not*" in shown(saved)  # the comment is shown as typed, not as Markdown


def _abstains(at: AppTest, reason: str) -> None:
    warning = at.warning[0].value
    assert "Not analysed" in warning and "outside what this model was trained on" in warning and reason in warning
    assert not at.metric and not [b for b in at.button if b.label == "Save review"]  # no probability, no review
    assert "operating threshold" not in " ".join(m.value for m in at.markdown)


def test_diagnosis_does_not_analyse_a_ct_slice(app_home):
    at = _run("pages/diagnosis.py", **{"radlens.current_case": 2})  # the CT slice
    _abstains(at, "modality CT")
    assert not [t for t in at.toggle if "raw output" in t.label]  # a clinician is not offered the raw output


def test_a_researcher_reveals_the_raw_output_on_purpose_and_it_is_logged(app_home):
    at = _run("pages/diagnosis.py", role="researcher", **{"radlens.current_case": 2})
    _abstains(at, "modality CT")
    next(t for t in at.toggle if "raw output" in t.label).set_value(True).run()
    assert not at.exception and "Raw output outside the model's scope" in at.error[0].value
    assert any("does not look like the chest X-rays" in w.value for w in at.warning)  # the CT is OOD too
    assert at.metric[0].label.startswith("Calibrated probability")
    from engine.store import open_store

    actions = [r["action"] for r in open_store(app_home).audit_rows(20)]
    assert actions.count("case.raw_output") == 1


def test_segmentation_does_not_analyse_a_chest_film(app_home):
    at = _run("pages/segmentation.py", **{"radlens.current_case": 1})  # RG1, a chest CR
    _abstains(at, "modality CR; trained on US")
    assert not at.get("download_button")  # nothing to export
    from engine.store import open_store

    logged = open_store(app_home).row("segmentations", 1)
    assert logged["status"] == "not_analysed" and logged["status_reason"].startswith("modality CR")


@needs_data
def test_sequence_page_opens_on_a_volume_follows_the_slider_and_abstains_on_an_mr_loop(ctx, app_home):
    import io

    import numpy as np

    from tests.conftest import DATA_DIR

    with np.load(DATA_DIR / "adrenalmnist3d" / "adrenalmnist3d_64.npz") as arrays:
        buffer = io.BytesIO()
        np.save(buffer, arrays["test_images"][0])
    [volume, mr] = ingest_files([("gland.npy", buffer.getvalue()), ("mr.dcm", dicom_bytes("emri_small.dcm"))], ctx)
    at = _run("pages/sequence.py")
    assert at.title[0].value == "Sequence" and at.selectbox(key="sequence.case").value == volume.case_id
    assert at.metric[0].label == "Calibrated probability of hyperplasia"
    assert len(at.get("plotly_chart")) == 2  # the contribution plot and the cine player
    planes = [c for image in at.get("image") for c in image.captions]
    assert planes[0] == "Slice (as acquired)" and len(planes) == 3 and "red: the slice" in planes[1]
    slider = at.slider(key=f"sequence.slice.{volume.image_id}")
    first = slider.value  # the slice the model drew most on
    assert any(f"Slice {first} in red" in c.value for c in at.caption)
    slider.set_value(10).run()
    assert not at.exception and any("Slice 10 in red" in c.value for c in at.caption)
    at.selectbox(key="sequence.case").set_value(mr.case_id).run()
    _abstains(at, "modality MR")
    from engine.store import open_store

    with open_store(app_home).read() as db:
        rows = {r["case_id"]: r for r in db.query("SELECT case_id, task, status FROM predictions")}
    assert rows[volume.case_id]["task"] == "sequence" and rows[mr.case_id]["status"] == "not_analysed"


@needs_data
def test_diagnosis_opens_on_the_newest_case_the_model_applies_to(ctx, app_home, child_film):
    from tests.conftest import DATA_DIR

    head = next((DATA_DIR / "hc18" / "images").glob("*_HC.png"))
    [us] = ingest_files([("head.png", head.read_bytes())], ctx)
    from engine.store import open_store

    with open_store(app_home).write() as db:  # what the demo seeds say about a fetal head ultrasound
        db["cases"].update(us.case_id, {"modality": "US", "body_part": "HEAD"})
    at = _run("pages/diagnosis.py")
    assert at.selectbox(key=state.CURRENT_CASE).value == child_film
    at = _run("pages/segmentation.py")
    assert at.selectbox(key=state.CURRENT_CASE).value == us.case_id


def test_models_page_lists_weights_card_and_architectures(app_home):
    at = _run("pages/models.py")
    assert at.title[0].value == "Models"
    installed = at.dataframe[0].value
    row = installed[installed["Name"] == DEFAULT_CLASSIFIER].iloc[0]
    assert bool(row["Active"]) and float(row["Test split"].split()[1]) > 0.9  # "AUC 0.9xx"
    older = installed[installed["Name"] == "cxr-pneumonia-resnet18"].iloc[0]  # kept for roll back
    assert not bool(older["Active"])
    seg = installed[installed["Name"] == "hc18-unet"].iloc[0]
    assert bool(seg["Active"]) and seg["Task"] == "segmentation" and seg["Test split"].startswith("Dice 0.9")
    metrics = at.dataframe[1].value
    assert "Sensitivity @ spec 0.90" in list(metrics["Metric"])
    assert set(at.dataframe[-1].value["Architecture"]) >= {"resnet18", "densenet121", "convnext_tiny"}
    assert any("Known limitations" in m.value for m in at.markdown)


def test_explainability_compares_three_methods_with_faithfulness_and_caches_them(app_home):
    at = _run("pages/explainability.py", **{"radlens.current_case": 1})
    assert at.title[0].value == "Explainability"
    assert at.multiselect(key="radlens.explain.methods").value == ["gradcam", "gradcam++", "eigencam"]
    assert len(at.image) == 3  # the grid: one overlay per method
    table = at.dataframe[0].value
    assert list(table["Method"]) == ["Grad-CAM", "Grad-CAM++", "Eigen-CAM", "Random (baseline)"]
    assert table["ROAD"].notna().all() and {"Deletion AUC (MoRF)", "Keep-map change"} <= set(table.columns)
    assert [b.label for b in at.get("download_button")][:1] == ["Comparison sheet"]
    assert len(at.get("download_button")) == 4
    at.slider[-1].set_value(20).run()  # top 20 % only: served from the store's cache
    assert not at.exception
    grid = " ".join(m.value for m in at.markdown)
    assert grid.count("cached") == 3 and "random" in grid


@needs_data
def test_explainability_audit_tab_shows_a_stored_audit(ctx, app_home):
    from engine.cases.heatmap_audit import run_audit, start_audit
    run_audit(ctx, start_audit(ctx, "cxr-pneumonia-resnet18", "gradcam", "cxr_pneumonia", "test", limit=6,
                               background=False))
    at = _app("researcher")
    at.run()
    at.switch_page(str(ROOT / "pages/explainability.py"))
    at.query_params["tab"] = "Dataset audit"
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    labels = [m.label for m in at.metric]
    assert labels[:2] == ["Heatmap mass in the outer 10 % border", "Mass in the two top corners"]
    assert "uniform map: 35%" in at.metric[0].delta
    assert any("6 images" in m.value for m in at.markdown)
    assert len(at.get("button")) >= 6  # "Open as a case" under each of the most-outside images


@needs_data
def test_segmentation_shows_contour_circumference_ground_truth_and_exports(ctx, app_home):
    import csv

    from engine.store import open_store
    from tests.conftest import DATA_DIR

    with open(DATA_DIR / "hc18" / "manifest.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["split"] == "test")
    ingest_files([("head.png", (DATA_DIR / "hc18" / row["image"]).read_bytes())], ctx)
    at = _run("pages/segmentation.py", **{"radlens.current_case": 3})
    assert at.title[0].value == "Segmentation"
    metrics = {m.label: m.value for m in at.metric}
    logged = open_store(app_home).row("segmentations", 1)
    assert metrics["Head circumference"] == f"{logged['circumference']:.1f} mm"  # what was logged is shown
    assert 30 < logged["circumference"] < 400 and logged["spacing_source"] == "hc18 manifest"
    assert metrics["Head area"].endswith("cm²") and metrics["Dice"] == f"{logged['dice']:.3f}"
    text = " ".join(m.value for m in at.markdown)
    assert "hc18 manifest" in text and "Against the ground truth" in text
    downloads = {b.label: b for b in at.get("download_button")}
    assert set(downloads) == {"Mask PNG", "DICOM SEG", "PDF report", "DICOM SR + captures"}
    assert downloads["DICOM SEG"].proto.disabled and downloads["DICOM SR + captures"].proto.disabled  # PNG source
    assert not downloads["PDF report"].proto.disabled
    assert len(at.dataframe[0].value) == 1  # the logged segmentation, once per opening
    at.toggle(key="seg.uncertainty").set_value(True).run()
    assert not at.exception and any("mirror image" in c.value for c in at.caption)
    at.number_input(key="seg.pixel.3").set_value(0.5).run()
    assert not at.exception and "entered by the user" in " ".join(m.value for m in at.markdown)
    assert len(at.dataframe[0].value) == 2


def test_models_page_shows_the_segmentation_card(app_home):
    at = _run("pages/models.py")
    at.selectbox[0].select("hc18-unet").run()
    assert not at.exception
    metrics = at.dataframe[1].value
    assert list(metrics["Metric"])[:4] == ["Dice", "IoU", "HD95 (mm)", "HC absolute error (mm)"]
    assert any("Post-processing" in m.value for m in at.text)  # the rules are plain text (they come from a file)


def _widget(widgets, label):
    return next(w for w in widgets if w.label == label)


@needs_data
def test_training_page_starts_a_job_from_the_form_and_cancels_it(app_home, tmp_path):
    from engine.jobs.queue import get_job
    from engine.store import open_store

    folder = write_cxr_subset(tmp_path / "home" / "datasets" / "cxr")
    at = _run("pages/training.py")
    assert at.title[0].value == "Training" and "No training job yet" in at.info[0].value
    _widget(at.selectbox, "Dataset").set_value("folder")
    _widget(at.text_input, "Folder (dataset 'folder' only)").set_value(str(folder))
    _widget(at.number_input, "Input width (px)").set_value(48)
    _widget(at.number_input, "Epochs").set_value(50)
    _widget(at.number_input, "Batch size").set_value(8)
    _widget(at.button, "Start training").click().run()
    assert not at.exception, [e.message for e in at.exception]
    store = open_store(app_home)
    job = get_job(store, 1)
    assert job.status == "running" and job.config["train"]["size"] == 48 and job.device == "cpu"
    assert at.dataframe[0].value.iloc[0]["Status"] == "running"
    assert any("**Job 1**" in m.value for m in at.markdown)

    _widget(at.button, "Cancel job").click().run()
    assert get_job(store, 1).status == "cancelled"
    assert [r["action"] for r in store.audit_rows()][:2] == ["job.cancel", "job.start"]
    assert _widget(at.button, "Resume from the last checkpoint")  # a cancelled job can go on


@needs_data
def test_batch_page_runs_a_folder_and_shows_each_file_once(app_home, tmp_path):
    import shutil
    import time

    from engine.jobs.queue import get_job
    from engine.store import open_store

    inbox = app_home.home / "batch" / "films"  # a signed-in user's run reads only under the batch roots
    films = sorted((app_home.data_dir / "cxr_pneumonia" / "train" / "normal").glob("*.jpg"))[:5]
    for film in films:
        shutil.copyfile(film, (inbox.mkdir(parents=True, exist_ok=True), inbox / film.name)[1])
    (inbox / "broken.dcm").write_bytes(b"DICM but not really")
    at = _run("pages/batch.py")
    assert at.title[0].value == "Batch" and "No batch run yet" in at.info[0].value
    at.text_input(key="batch.source").set_value(str(tmp_path))  # outside the batch roots: refused
    _widget(at.button, "Start the batch run").click().run()
    assert any("RADLENS_BATCH_ROOTS" in shown(e.value) for e in at.error) and not at.exception
    at.text_input(key="batch.source").set_value(str(inbox))
    _widget(at.number_input, "Workers").set_value(1)
    _widget(at.button, "Start the batch run").click().run()
    assert not at.exception, [e.message for e in at.exception]
    store = open_store(app_home)
    deadline = time.monotonic() + 180
    while get_job(store, 1).active and time.monotonic() < deadline:
        time.sleep(0.5)
    assert get_job(store, 1).status == "finished"
    at.run()
    runs = at.dataframe[0].value
    assert (runs.iloc[0]["Files"], runs.iloc[0]["Analysed"] + runs.iloc[0]["Not analysed"],
            runs.iloc[0]["Failed"]) == (6, 5, 1)
    files = at.dataframe[1].value
    assert len(files) == 6 and sorted(files["Path"]) == sorted(str(p) for p in inbox.iterdir())
    assert [b.label for b in at.get("download_button")] == ["Download the results (CSV, one line per file)"]


def test_models_page_promotes_and_rolls_back_with_history(app_home):
    make_model_file(app_home.home / "models" / "candidate.safetensors")
    at = _run("pages/models.py", role="admin")
    _widget(at.selectbox, "Model card").set_value("candidate").run()
    _widget(at.button, "Promote candidate to active classification model").click().run()
    assert any("Confirm: Promote candidate" in m.value for m in at.markdown)  # nothing changed yet
    _widget(at.button, "Confirm: promote candidate").click().run()  # without a reason: refused
    assert any("say why" in e.value for e in at.error)
    _widget(at.text_area, "Reason (kept in the audit trail with your name)").set_value(
        "candidate wins on the held-out split")
    _widget(at.button, "Confirm: promote candidate").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("Active classification model: candidate" == m.value for m in at.text)  # plain text: a card's name
    history = at.dataframe[-2].value
    assert list(history["Action"]) == ["model.promote"] and history.iloc[0]["Replaced"] == DEFAULT_CLASSIFIER
    assert (history.iloc[0]["Who"], history.iloc[0]["Role"]) == ("local:admin-tester", "admin")
    assert history.iloc[0]["Reason"] == "candidate wins on the held-out split"
    _widget(at.button, "Roll back to " + DEFAULT_CLASSIFIER).click().run()
    _widget(at.text_area, "Reason (kept in the audit trail with your name)").set_value("back to the shipped one")
    _widget(at.button, "Confirm: roll back to " + DEFAULT_CLASSIFIER).click().run()
    assert any("Active classification model: " + DEFAULT_CLASSIFIER == m.value for m in at.text)
    assert list(at.dataframe[-2].value["Action"]) == ["model.rollback", "model.promote"]


@needs_data
def test_models_page_compares_two_versions_on_the_test_split(app_home):
    make_model_file(app_home.home / "models" / "candidate.safetensors")
    at = _run("pages/models.py")
    _widget(at.selectbox, "Model card").set_value("candidate").run()
    _widget(at.toggle, "Evaluate both on the held-out test split").set_value(True).run()
    assert not at.exception, [e.message for e in at.exception]
    table = next(d.value for d in at.dataframe if "candidate (n=156)" in d.value.columns)
    auc = table[table["Metric"] == "AUC"].iloc[0]
    assert float(auc[f"{DEFAULT_CLASSIFIER} (n=156)"].split()[0]) > float(auc["candidate (n=156)"].split()[0])
    assert any("B - A, paired over the same 156 images:** AUC -" in shown(m.value) and "excludes 0" in m.value
               for m in at.markdown)


def test_nothing_renders_before_sign_in_not_even_a_case_from_the_url(app_home):
    at = _app(None)
    at.query_params["case"] = "1"
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert [t.value for t in at.title] == ["Sign in to RadLens"]
    assert [w.label for w in at.text_input] == ["User name", "Password"]
    assert not at.dataframe and not at.get("plotly_chart") and not at.get("imgs")
    shown = " ".join(str(e.value) for kind in ("markdown", "caption", "text", "info") for e in at.get(kind))
    assert "RG1" not in shown and "CHEST" not in shown and "case 1" not in shown.lower()
    assert any(DISCLAIMER in c.value for c in at.caption)


def test_the_sign_in_form_lets_a_clinician_in_and_the_pages_follow_the_role(app_home):
    from dashboard.text import plain
    from engine.identity.accounts import REFUSED, add_account

    admin = Context.open(Config.from_env())
    add_account(admin, "alice", "correct horse battery staple", "clinician", "Dr Alice")
    at = _app(None)
    at.run()
    _widget(at.text_input, "User name").set_value("alice")
    _widget(at.text_input, "Password").set_value("not her password")
    _widget(at.button, "Sign in").click().run()
    assert [e.value for e in at.error] == [plain(REFUSED)]
    at.run()  # the growing wait: an immediate second try is refused, with the same answer
    _widget(at.text_input, "Password").set_value("correct horse battery staple")
    _widget(at.button, "Sign in").click().run()
    assert [e.value for e in at.error] == [plain(REFUSED)]
    import time
    time.sleep(1.1)
    _widget(at.button, "Sign in").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.title[0].value == "Worklist"
    assert any("Signed in as **Dr Alice** (clinician)" in c.value for c in at.sidebar.caption)
    actions = [r["action"] for r in admin.store.audit_rows(10)]
    assert actions[0] == "login" and actions.count("login.failed") == 1


@needs_data
def test_a_researcher_reads_results_but_cannot_review(app_home, child_film):
    at = _run("pages/diagnosis.py", role="researcher", **{"radlens.current_case": child_film})
    assert not [w for w in at.button if w.label == "Save review"]
    assert any("Reviews are recorded by clinicians" in c.value for c in at.caption)


def test_admin_page_adds_a_user_and_shows_the_audit_trail_intact(app_home):
    at = _run("pages/admin.py")
    assert "audit trail intact" in at.success[0].value
    _widget(at.text_input, "User name").set_value("bob")
    _widget(at.text_input, "Display name").set_value("Dr Bob")
    _widget(at.selectbox, "Role").set_value("researcher")
    _widget(at.text_input, "Initial password (hand it over in person; they can change it)").set_value(
        "a long enough passphrase")
    _widget(at.button, "Add user").click().run()
    assert not at.exception, [e.message for e in at.exception]
    accounts = at.dataframe[0].value
    assert list(accounts["User name"]) == ["bob"] and accounts.iloc[0]["Role"] == "researcher"
    trail = at.dataframe[-1].value
    assert trail.iloc[0]["Action"] == "user.add" and trail.iloc[0]["Who"] == "local:admin-tester"


@pytest.mark.xdist_group("synthetic-references")  # the session's reference images, computed once
@needs_data
def test_synthetic_page_generates_a_seeded_gallery_beside_real_neighbours_for_researchers_only(
        config, app_home, reference_cache):
    from tests.conftest import install_references

    install_references(config, reference_cache)
    at = _run("pages/synthetic.py", role="researcher")
    assert at.title[0].value == "Synthetic data" and at.selectbox[0].value == "cxr-pneumonia-gan"
    assert at.dataframe, "the card's quality report"  # Fréchet / PRDC beside the real held-out floor
    at.number_input[0].set_value(4)
    at.number_input[1].set_value(7)
    at.button[0].click().run()
    assert not at.exception, [e.message for e in at.exception]
    captions = [c for image in at.get("image") for c in image.captions]
    assert len(captions) == 8  # four synthetic images, each beside its nearest real training image
    plain_captions = [c.replace("\\", "") for c in captions]
    assert plain_captions[0].endswith("synthetic #0") and "nearest real: train/" in plain_captions[1]
    assert any(b.label.startswith("Export") for b in at.get("download_button"))
    store = Context.open(Config.from_env()).store
    logged = [r for r in store.audit_rows(50) if r["action"] == "synthetic.generate"]
    assert len(logged) == 1 and '"images": 4' in logged[0]["detail"] and '"seed": 7' in logged[0]["detail"]
    at.button[0].click().run()  # a rerun with the same request neither regenerates nor logs again
    assert len([r for r in store.audit_rows(50) if r["action"] == "synthetic.generate"]) == 1
