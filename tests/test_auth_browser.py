"""Sign-in in a real browser against the server as `make run` starts it (python -m dashboard.serve): nothing
before sign-in at any URL, local sign-in, lockout, sign-out, idle expiry, OIDC through a real provider process
(oidc-provider-mock), and a server that is not reachable from other machines. Screenshots go to
test-output/auth/."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import dicom_path
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, _free_port, _settle

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "test-output" / "auth"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Debian chromium is not installed (make test installs it when run as root)")]
PASSWORD = "correct horse battery staple"
SIGN_IN = "Sign in to RadLens"


def _wait_http(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(url)


@contextmanager
def _served(home: Path, **settings: str):
    """`python -m engine init` then `python -m dashboard.serve` (what `make run` runs) on a free port."""
    port = int(settings.get("RADLENS_PORT") or _free_port())
    env = {**os.environ, "RADLENS_HOME": str(home), "RADLENS_PORT": str(port), **settings}
    subprocess.run([sys.executable, "-m", "engine", "init", "--no-demo"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    subprocess.run([sys.executable, "-m", "engine", "ingest", str(dicom_path("RG1_UNCR.dcm"))], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    proc = subprocess.Popen([sys.executable, "-m", "dashboard.serve"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_http(f"http://127.0.0.1:{port}/_stcore/health")
        yield f"http://127.0.0.1:{port}", env
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _add_user(env: dict, name: str, role: str) -> None:
    subprocess.run([sys.executable, "-m", "engine", "users", "add", name, "--role", role, "--name", f"Dr {name}",
                    "--password-stdin"], cwd=ROOT, env=env, input=PASSWORD + "\n", text=True, check=True,
                   capture_output=True)


@contextmanager
def _browser():
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()


def _sign_in(page, name: str, password: str) -> None:
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_timeout(500)
    _settle(page)


def _audit(env: dict, action: str) -> list[dict]:
    done = subprocess.run([sys.executable, "-m", "engine", "audit-log", "show", "--filter", action, "--json",
                           "--limit", "100"], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_no_page_and_no_case_url_shows_anything_before_sign_in(tmp_path):
    paths = ["/", "/worklist", "/upload", "/viewer?case=1", "/diagnosis?case=1", "/segmentation?case=1",
             "/explainability?case=1", "/training", "/models", "/admin", "/?case=1"]
    with _served(tmp_path / "home") as (url, env), _browser() as page:
        for path in paths:
            page.goto(url + path)
            _settle(page)
            page.get_by_role("heading", name=SIGN_IN).wait_for()
            page.get_by_text("For research use only. Not for use in diagnostic procedures.").wait_for()
            body = page.locator('[data-testid="stApp"]').inner_text()
            assert page.locator('[data-testid="stSidebarNav"]').count() == 0, path
            assert page.locator('[data-testid="stDataFrame"], .js-plotly-plot, [data-testid="stImage"]').count() == 0
            assert "MONOCHROME" not in body and "RG1" not in body and "Worklist" not in body, path
            page.get_by_label("User name").wait_for()
            page.get_by_label("Password", exact=True).wait_for()
        page.screenshot(path=OUTPUT / "sign-in.png", full_page=True)


def test_local_sign_in_lockout_sign_out_and_idle_expiry(tmp_path):
    with _served(tmp_path / "home", RADLENS_SESSION_IDLE_MIN="0.15") as (url, env), _browser() as page:
        _add_user(env, "alice", "clinician")
        _add_user(env, "mallory-target", "clinician")
        page.goto(url + "/viewer?case=1")
        _settle(page)
        for attempt in range(5):  # the wait after each failure doubles: 1, 2, 4, 8 s
            _sign_in(page, "mallory-target", f"guess {attempt}")
            page.wait_for_timeout(1000 * 2 ** attempt + 200)
        message = page.get_by_role("alert").first.inner_text()
        assert "locked" in message, message
        _sign_in(page, "mallory-target", PASSWORD)  # the right password does not help while locked
        assert "locked" in page.get_by_role("alert").first.inner_text()
        page.screenshot(path=OUTPUT / "locked.png", full_page=True)

        _sign_in(page, "alice", PASSWORD)
        page.get_by_text("Signed in as").wait_for()
        assert "Dr alice" in page.locator('[data-testid="stSidebar"]').inner_text()
        page.get_by_role("heading", name="Study viewer").wait_for()  # the link opened before sign-in
        page.wait_for_selector(".js-plotly-plot", timeout=60_000)
        assert page.get_by_role("link", name="Training").count() == 0  # not a clinician's page
        page.screenshot(path=OUTPUT / "signed-in.png", full_page=True)
        page.get_by_role("button", name="Sign out").click()
        _settle(page)
        page.get_by_role("heading", name=SIGN_IN).wait_for()
        page.get_by_text("You signed out.").wait_for()

        _sign_in(page, "alice", PASSWORD)
        page.get_by_text("Signed in as").wait_for()
        page.wait_for_timeout(10_000)  # idle for longer than 0.15 min
        page.get_by_role("link", name="Upload").click()
        _settle(page)
        page.get_by_role("heading", name=SIGN_IN).wait_for()
        page.get_by_text("without activity").wait_for()
        page.screenshot(path=OUTPUT / "expired.png", full_page=True)
    actions = {row["action"] for row in _audit(env, "")}
    assert {"login", "login.failed", "logout", "session.idle", "case.view"} <= actions
    failed = _audit(env, "login.failed")
    assert len(failed) == 5 and all(PASSWORD not in json.dumps(row) and "guess" not in json.dumps(row)
                                    for row in failed)


@contextmanager
def _oidc_provider(port: int):
    claims = {"sub": "dr-oidc", "name": "Dr Oidc", "email": "oidc@example.org", "groups": ["radlens-researcher"]}
    proc = subprocess.Popen([sys.executable, "-m", "oidc_provider_mock", "--port", str(port), "--require-nonce",
                             "--user-claims", json.dumps(claims)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        _wait_http(f"http://127.0.0.1:{port}/.well-known/openid-configuration")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_oidc_sign_in_through_a_real_provider_takes_the_role_from_its_claim(tmp_path):
    pytest.importorskip("oidc_provider_mock")
    provider_port, port = _free_port(), _free_port()
    secrets = tmp_path / "secrets.toml"
    with _oidc_provider(provider_port) as issuer:
        secrets.write_text(
            f'[auth]\nredirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
            f'cookie_secret = "{os.urandom(16).hex()}"\n'
            f'[auth.radlens]\nclient_id = "radlens-test"\nclient_secret = "not-a-secret"\n'
            f'server_metadata_url = "{issuer}/.well-known/openid-configuration"\n')
        with _served(tmp_path / "home", RADLENS_AUTH="oidc", RADLENS_PORT=str(port), RADLENS_SECRETS=str(secrets)
                     ) as (url, env), _browser() as page:
            page.goto(url + "/")
            _settle(page)
            page.get_by_role("button", name="Sign in with your organisation's account").click()
            page.get_by_role("button", name="dr-oidc").click()  # the provider's own page
            page.wait_for_url(url + "/**", timeout=30_000)
            _settle(page)
            page.get_by_text("Signed in as").wait_for(timeout=30_000)
            sidebar = page.locator('[data-testid="stSidebar"]').inner_text()
            assert "Dr Oidc" in sidebar and "researcher" in sidebar
            assert page.get_by_role("link", name="Training").count() == 1  # a researcher's page
            page.locator('[data-testid="stDataFrame"]').wait_for()
            page.screenshot(path=OUTPUT / "oidc.png", full_page=True)
            page.get_by_role("button", name="Sign out").click()  # ends our session and the provider cookie
            page.get_by_role("button", name="End session").click()  # RP-initiated logout at the provider
            page.wait_for_url(url + "/**", timeout=30_000)
            _settle(page)
            page.get_by_role("button", name="Sign in with your organisation's account").wait_for(timeout=30_000)
    assert [row["action"] for row in _audit(env, "log")] == ["login", "logout"]
    login = _audit(env, "login")[-1]
    assert (login["actor"], login["role"], login["actor_name"]) == (f"dr-oidc@{issuer}", "researcher", "Dr Oidc")
    assert json.loads(login["detail"]) == {"auth": "oidc"}


def _outside_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if it has one besides loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


def test_the_server_as_make_run_starts_it_cannot_be_reached_from_another_machine(tmp_path):
    outside = _outside_address()
    if outside is None:
        pytest.skip("this machine has no non-loopback address to try")
    with _served(tmp_path / "home") as (url, env):
        port = int(url.rsplit(":", 1)[1])
        urllib.request.urlopen(url + "/_stcore/health", timeout=5)  # reachable here
        with pytest.raises(OSError):
            socket.create_connection((outside, port), timeout=3).close()
    refused = subprocess.run([sys.executable, "-m", "dashboard.serve"], cwd=ROOT, capture_output=True, text=True,
                             env={**env, "RADLENS_AUTH": "none", "RADLENS_ADDRESS": "0.0.0.0"}, timeout=60)
    assert refused.returncode == 2 and "RADLENS_AUTH=none only works" in refused.stderr
    refused = subprocess.run([sys.executable, "-m", "dashboard.serve"], cwd=ROOT, capture_output=True, text=True,
                             env={**env, "RADLENS_ADDRESS": "0.0.0.0"}, timeout=60)
    assert refused.returncode == 2 and "RADLENS_ALLOWED_HOSTS" in refused.stderr
