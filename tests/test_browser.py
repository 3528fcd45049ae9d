"""Real browser: upload a DICOM and a PNG, see both in the worklist, open the viewer. Screenshots are
written to test-output/browser/."""

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import dicom_path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "test-output" / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Debian chromium is not installed (make test installs it when run as root)")]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = _free_port()
    # these tests are about the pages: sign-in is off (allowed on loopback only); test_auth_browser covers it
    env = {**os.environ, "RADLENS_HOME": str(tmp_path / "home"), "RADLENS_AUTH": "none"}
    subprocess.run([sys.executable, "-m", "engine", "init", "--no-demo"], cwd=ROOT, env=env, check=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def _settle(page) -> None:
    page.wait_for_selector('[data-testid="stApp"]')
    page.wait_for_timeout(800)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=90_000)


@contextmanager
def _case_page(server: str, tmp_path: Path, file: Path, path: str, height: int):
    """`file` ingested through the CLI as case 1, and a browser page open at `path`."""
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    OUTPUT.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RADLENS_HOME": str(tmp_path / "home")}
    subprocess.run([sys.executable, "-m", "engine", "ingest", str(file)], cwd=ROOT, env=env, check=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": height})
        page.goto(server + path)
        try:
            yield page
        finally:
            browser.close()


@contextmanager
def _chest_film_page(server: str, tmp_path: Path, path: str, height: int):
    """A pediatric chest X-ray (one of the demo's full-resolution films, inside the classifier's scope)
    ingested as case 1, and a browser page open at `path`."""
    data = Path(os.environ.get("RADLENS_DATA_DIR", "/nonexistent")) / "cxr_pneumonia_fullres"
    if not data.is_dir():
        pytest.skip("RADLENS_DATA_DIR (../shared/data) is not present: no pediatric film to classify")
    with _case_page(server, tmp_path, data / "person1597_bacteria_4190.jpeg", path, height) as page:
        yield page


def _upload(page, server: str, paths: list[Path], summary: str, screenshot: str) -> None:
    """Upload `paths` through the form, wait for the batch's summary line, keep a screenshot."""
    page.goto(server + "/upload")
    _settle(page)
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files([str(p) for p in paths])
    page.get_by_role("button", name=f"Ingest {len(paths)} file(s)").click()
    page.get_by_text(summary).wait_for(timeout=90_000)
    _settle(page)
    page.screenshot(path=OUTPUT / screenshot, full_page=True)


def test_upload_worklist_viewer(server, tmp_path):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    OUTPUT.mkdir(parents=True, exist_ok=True)
    png = tmp_path / "ramp16.png"
    ramp = np.tile(np.linspace(0, 65535, 512).astype(np.uint16), (384, 1))
    Image.fromarray(ramp).save(png)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        _upload(page, server, [dicom_path("RG1_UNCR.dcm"), png], "2 landed, 0 already in the store, 0 failed.",
                "upload.png")

        page.goto(server + "/")
        _settle(page)
        page.get_by_text("2 case(s)").wait_for()
        page.screenshot(path=OUTPUT / "worklist.png", full_page=True)

        page.goto(server + "/viewer?case=1")
        _settle(page)
        page.wait_for_selector(".js-plotly-plot", timeout=60_000)
        page.get_by_text("MONOCHROME1 inverted").wait_for()
        page.screenshot(path=OUTPUT / "viewer.png", full_page=True)
        disclaimers = page.get_by_text("For research use only. Not for use in diagnostic procedures.").count()
        browser.close()
    assert disclaimers >= 1
    for name in ("upload.png", "worklist.png", "viewer.png"):
        assert (OUTPUT / name).stat().st_size > 10_000


def test_a_hostile_batch_fails_file_by_file_and_the_rest_lands(server, tmp_path):
    """Through the real upload form: a deflate bomb, a JPEG 2000 frame whose header lies about its size, a
    broken file, and a good film. The three fail with one line each; the film lands; the server stays up."""
    from tests.hostile import deflate_bomb, lying_frame_header

    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    OUTPUT.mkdir(parents=True, exist_ok=True)
    files = {"bomb.dcm": deflate_bomb(600 << 20), "lying-j2k.dcm": lying_frame_header(dicom_path("JPEG2000.dcm")
                                                                                       .read_bytes()),
             "broken.png": b"\x89PNG\r\n\x1a\n" + bytes(64)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        _upload(page, server, [tmp_path / n for n in files] + [dicom_path("RG1_UNCR.dcm")],
                "1 landed, 0 already in the store, 3 failed.", "upload-hostile.png")
        page.goto(server + "/")
        _settle(page)
        page.get_by_text("1 case(s)").wait_for()
        browser.close()
    from engine.store import Store

    failed = [r for r in Store(tmp_path / "home" / "radlens.db").audit_rows() if r["action"] == "upload.failed"]
    assert json.loads(failed[0]["detail"]) == {"count": 3, "kinds": ["TooLarge", "UnreadableStudy"]}
    urllib.request.urlopen(server + "/_stcore/health", timeout=5)  # the server is still up


def test_diagnosis_of_a_chest_xray_shows_probability_and_overlay(server, tmp_path):
    """Open a pediatric chest X-ray (the demo's full-resolution films) in Diagnosis, then the model card."""
    with _chest_film_page(server, tmp_path, "/diagnosis?case=1", height=1100) as page:
        _settle(page)
        page.wait_for_selector(".js-plotly-plot", timeout=60_000)
        page.get_by_text("Calibrated probability of pneumonia").wait_for()
        value = page.locator('[data-testid="stMetricValue"]').first.inner_text()
        page.get_by_text("Grad-CAM (gradcam) of").wait_for()
        image = np.asarray(Image.open(io.BytesIO(page.locator(".js-plotly-plot").first.screenshot())).convert("RGB"))
        page.screenshot(path=OUTPUT / "diagnosis.png", full_page=True)
        # The reading starts with no verdict, and is blank again after one is saved (shown in place instead).
        checked = page.locator('[data-testid="stRadio"] input[type="radio"]:checked')
        before = checked.count()
        page.get_by_text("Disagree", exact=True).click()
        page.get_by_role("button", name="Save review").click()
        page.get_by_text("Saved reading: Disagree").wait_for(timeout=60_000)
        _settle(page)
        after = checked.count()
        page.screenshot(path=OUTPUT / "diagnosis-reviewed.png", full_page=True)
        page.get_by_role("link", name="Model card").click()
        _settle(page)
        page.get_by_text("Installed versions").wait_for()
        page.wait_for_selector(".js-plotly-plot", timeout=60_000)
        page.screenshot(path=OUTPUT / "models.png", full_page=True)
    assert value.endswith("%") and 0 <= float(value.strip("<> %")) <= 100
    assert (before, after) == (0, 0), "a verdict was chosen for the reader"
    channels = image.astype(int)
    coloured = (np.abs(channels[..., 0] - channels[..., 2]) > 40).mean()  # the gray film has R == G == B
    assert coloured > 0.01, "no Grad-CAM colour on the displayed image"
    for name in ("diagnosis.png", "models.png"):
        assert (OUTPUT / name).stat().st_size > 10_000


def test_explainability_grid_renders_three_methods_with_faithfulness(server, tmp_path):
    """A chest X-ray on the Explainability page: three overlays, the faithfulness table, the curves."""
    with _chest_film_page(server, tmp_path, "/explainability?case=1", height=2200) as page:
        _settle(page)
        page.get_by_text("Deletion curves").wait_for(timeout=180_000)
        _settle(page)
        overlays = page.locator('[data-testid="stImage"] img')
        count = overlays.count()
        first = np.asarray(Image.open(io.BytesIO(overlays.first.screenshot())).convert("RGB")).astype(int)
        titles = [page.get_by_text(t, exact=True).count() for t in ("Grad-CAM", "Grad-CAM++", "Eigen-CAM")]
        road = sum(page.get_by_text(t, exact=True).count() for t in ("above random", "not above random"))
        page.screenshot(path=OUTPUT / "explainability.png", full_page=True)
    assert count == 3 and all(titles), (count, titles)
    assert road == 3
    assert (np.abs(first[..., 0] - first[..., 2]) > 40).mean() > 0.01, "no heatmap colour on the first overlay"
    assert (OUTPUT / "explainability.png").stat().st_size > 50_000


def test_segmentation_of_an_hc18_case_shows_contour_and_circumference(server, tmp_path):
    """A fetal-head ultrasound from the HC18 test split, wrapped as a US DICOM (pixel size in its
    ultrasound regions), on the Segmentation page: the green contour on screen and the HC in mm."""
    import csv

    import cv2

    from engine.writers.wrap import ultrasound_dicom

    data = Path(os.environ.get("RADLENS_DATA_DIR", "/nonexistent")) / "hc18"
    if not data.is_dir():
        pytest.skip("RADLENS_DATA_DIR (../shared/data) is not present")
    with open(data / "manifest.csv", newline="") as f:
        row = [r for r in csv.DictReader(f) if r["split"] == "test"][10]
    gray = cv2.imread(str(data / row["image"]), cv2.IMREAD_GRAYSCALE)
    dcm = tmp_path / "head.dcm"
    dcm.write_bytes(ultrasound_dicom(gray, float(row["pixel_size_mm"]), "Fetal head ultrasound"))
    with _case_page(server, tmp_path, dcm, "/segmentation?case=1", 1200) as page:
        _settle(page)
        page.get_by_text("Head circumference").wait_for(timeout=90_000)
        page.wait_for_selector(".js-plotly-plot", timeout=60_000)
        _settle(page)
        value = page.locator('[data-testid="stMetricValue"]').first.inner_text()
        source = page.get_by_text("UltrasoundRegions").count()
        image = np.asarray(Image.open(io.BytesIO(page.locator(".js-plotly-plot").first.screenshot())).convert("RGB"))
        page.screenshot(path=OUTPUT / "segmentation.png", full_page=True)
    assert value.endswith(" mm") and float(value.split()[0]) == pytest.approx(float(row["head_circumference_mm"]),
                                                                              rel=0.1)
    assert source >= 1
    r, g, b = (image[..., i].astype(int) for i in range(3))
    green = ((g - r > 80) & (g - b > 60)).sum()  # the mask's contour; the ultrasound itself is gray
    magenta = ((r - g > 80) & (b - g > 80)).sum()  # the ground truth outline (same pixels as the PNG)
    assert green > 500 and magenta > 500, (green, magenta)
    assert (OUTPUT / "segmentation.png").stat().st_size > 50_000


_RED_BAR = """() => { for (const plot of document.querySelectorAll('.js-plotly-plot'))
    for (const t of (plot._fullData || [])) if (t.type === 'bar' && Array.isArray(t.marker.color))
        return t.marker.color.findIndex(c => String(c).startsWith('rgb(214')); return -1; }"""


def test_a_volume_on_the_sequence_page_follows_the_slider_in_the_contribution_plot(server, tmp_path):
    """An AdrenalMNIST3D test volume (a .npy upload, stored as multi-frame DICOM) on the Sequence page: the
    three planes, the probability, and the contribution plot whose highlighted slice follows the slider."""
    data = Path(os.environ.get("RADLENS_DATA_DIR", "/nonexistent")) / "adrenalmnist3d" / "adrenalmnist3d_64.npz"
    if not data.is_file():
        pytest.skip("RADLENS_DATA_DIR (../shared/data) is not present")
    with np.load(data) as arrays:
        np.save(tmp_path / "gland.npy", arrays["test_images"][0])
    with _case_page(server, tmp_path, tmp_path / "gland.npy", "/sequence?case=1", 1200) as page:
        _settle(page)
        page.get_by_text("Contribution of each slice").wait_for(timeout=90_000)
        before = page.evaluate(_RED_BAR)
        page.get_by_role("slider").first.focus()
        for _ in range(5):
            page.keyboard.press("ArrowLeft")
        page.get_by_text(f"Slice {before + 1 - 5} in red").wait_for(timeout=60_000)
        _settle(page)
        after = page.evaluate(_RED_BAR)
        probability = page.locator('[data-testid="stMetricValue"]').first.inner_text()
        planes = page.locator('[data-testid="stImage"]').count()
        page.screenshot(path=OUTPUT / "sequence.png", full_page=True)
    assert before >= 0 and after == before - 5
    assert probability.endswith("%") and planes == 3
    assert (OUTPUT / "sequence.png").stat().st_size > 30_000


_POINTS = """name => Math.max(0, ...[...document.querySelectorAll('.js-plotly-plot')].flatMap(
    plot => (plot._fullData || []).filter(t => t.name === name).map(t => t._length || 0)))"""


def _wait_for_points(page, name: str, more_than: int) -> int:
    # The count that satisfied the wait, read in the same evaluation: reading it again afterwards can catch
    # the chart in the middle of its refresh, with no points at all.
    found = page.wait_for_function(f"(() => {{ const n = ({_POINTS})({name!r}); return n > {more_than} ? n : 0; }})()",
                                   timeout=120_000)
    return int(found.json_value())


def test_training_job_started_in_the_browser_draws_live_curves(server, tmp_path):
    """Start a tiny job from the form and watch its validation curve grow without reloading the page."""
    if not os.environ.get("RADLENS_DATA_DIR"):
        pytest.skip("RADLENS_DATA_DIR (../shared/data) is not present")
    from engine.config import Config
    from engine.context import Context
    from engine.jobs.queue import cancel_job, list_jobs
    from tests.conftest import write_cxr_subset

    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    OUTPUT.mkdir(parents=True, exist_ok=True)
    folder = write_cxr_subset(tmp_path / "home" / "datasets" / "cxr")
    config = Config(home=tmp_path / "home", data_dir=None)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1900})
        try:
            page.goto(server + "/training")
            _settle(page)
            page.locator('[data-testid="stSelectbox"]').filter(has_text="Dataset").click()
            page.get_by_role("option", name="folder").click()
            page.get_by_label("Folder (dataset 'folder' only)", exact=True).fill(str(folder))
            for label, value in (("Input width (px)", "48"), ("Epochs", "40"), ("Batch size", "8")):
                page.get_by_label(label).fill(value)
            page.get_by_role("button", name="Start training").click()
            first = _wait_for_points(page, "val auc", 0)  # the fragment refreshes by itself: no reload
            assert _wait_for_points(page, "val auc", first) > first >= 1
            assert page.get_by_text("img/s").count() >= 1 and page.get_by_text("Epoch ").count() >= 1
            page.screenshot(path=str(OUTPUT / "training.png"), full_page=True)
        finally:
            browser.close()
            ctx = Context.open(config)
            for job in list_jobs(ctx.store):
                if job.active:
                    cancel_job(ctx, job.id)


def test_hostile_values_render_as_plain_text_in_a_real_browser(tmp_path):
    """dashboard.text.md against Streamlit's real Markdown renderer: no link, image, icon, coloured text or
    HTML comes out of a value, and the reader sees the value's characters."""
    from tests.test_markup import HOSTILE

    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    script = tmp_path / "hostile.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nimport streamlit as st\n"
                      "from dashboard.text import md\n"
                      f"st.markdown(md('Label: **{{v}}** at {{p:.1%}}', v={HOSTILE!r}, p=0.3634))\n")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    page.goto(f"http://127.0.0.1:{port}")
                    break
                except Exception:  # noqa: BLE001 - the server is still starting
                    time.sleep(0.5)
            box = page.locator('[data-testid="stMarkdownContainer"]').filter(has_text="Label:").first
            box.wait_for(timeout=60_000)
            html, text = box.inner_html(), box.inner_text()
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert "<a " not in html and "<img" not in html and 'role="img"' not in html and "<b>" not in html
    assert "color" not in html.split("<strong>", 1)[1]  # :red[...] stayed text
    assert text.replace("\u2060", "") == f"Label: {HOSTILE} at 36.3%"
