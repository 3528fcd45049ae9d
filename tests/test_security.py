"""The security review's findings (issue #34), each reproduced as its attacker would: a caller spoofing a
node's AE title from another address, idle sockets holding every association slot, an oversized instance
streamed into the spool, a known study UID reused for another patient, results sent where they do not
belong, a Ray cluster joined without its token. The audit-trail tampering kinds are in test_identity.py."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import SecondaryCaptureImageStorage

from engine.cases.ingest import ingest_files
from engine.config import Config, DicomSettings, Limits
from engine.context import Context, User
from engine.errors import InvalidOption
from engine.pacs.listener import REFUSED, Listener
from engine.pacs.nodes import PacsNode, save_node
from engine.store import open_store
from tests.conftest import dicom_bytes

NODE_AE = "TESTPACS"


@pytest.fixture
def listener_ctx(tmp_path) -> Context:
    config = Config(home=tmp_path / "home", data_dir=None, limits=Limits(max_upload_mb=1),
                    dicom=DicomSettings(port=0, quiet_seconds=60, timeout_seconds=2, acse_timeout_seconds=1,
                                        peer_associations=2))
    ctx = Context(config, open_store(config), User("dicom-listener:RADLENS", "DICOM listener", "system"))
    # The node's host is 127.0.0.2: a caller on 127.0.0.1 is somewhere else, even on this machine.
    save_node(ctx, PacsNode("pacs", ae_title=NODE_AE, host="127.0.0.2", port=4242))
    return ctx


@pytest.fixture
def listener(listener_ctx):
    running = Listener(listener_ctx).start(address="127.0.0.1", port=0)
    yield running
    running.stop()


def _ct(uid_suffix: str = "1") -> pydicom.Dataset:
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes("CT_small.dcm")))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.9.4417.{uid_suffix}"
    return ds


def _push(port: int, ds: pydicom.Dataset, ae_title: str = NODE_AE, source: str = "127.0.0.2"):
    sender = AE(ae_title=ae_title)
    sender.add_requested_context(ds.SOPClassUID)
    assoc = sender.associate("127.0.0.1", port, ae_title="RADLENS", bind_address=(source, 0))
    if not assoc.is_established:
        return None
    status = assoc.send_c_store(ds)
    if assoc.is_established:
        assoc.release()
    return status.Status if status else None


def _refusals(ctx) -> list[dict]:
    return [r for r in ctx.store.audit_rows(100) if r["action"] == "pacs.listener.refused"]


def _images(ctx) -> int:
    with ctx.store.read() as db:
        return db.execute("SELECT count(*) FROM images").fetchone()[0]


def test_a_node_is_accepted_only_from_its_own_address_and_a_spoofed_ae_title_is_refused(listener_ctx, listener):
    assert _push(listener.port, _ct("1"), source="127.0.0.2") == 0x0000  # the node, from its address
    # The node's AE title from another address (127.0.0.1): closed before any DICOM is read.
    assert _push(listener.port, _ct("2"), source="127.0.0.1") is None
    # A second node at 127.0.0.1 lets that address connect; claiming the first node's AE title still fails.
    save_node(listener_ctx, PacsNode("other", ae_title="OTHERPACS", host="127.0.0.1", port=4243))
    assert _push(listener.port, _ct("3"), ae_title=NODE_AE, source="127.0.0.1") == REFUSED
    assert _push(listener.port, _ct("4"), ae_title="OTHERPACS", source="127.0.0.1") == 0x0000
    assert _images(listener_ctx) == 2
    reasons = [r["detail"] for r in _refusals(listener_ctx)]
    assert any("not the address of any configured PACS node" in d for d in reasons)
    assert any(f'"ae_title": "{NODE_AE}"' in d and "not at 127.0.0.1" in d for d in reasons)
    assert listener_ctx.store.verify_audit().ok


def test_idle_connections_cannot_hold_the_listener(listener):
    idle = [socket.create_connection(("127.0.0.1", listener.port), source_address=("127.0.0.2", 0))
            for _ in range(8)]
    try:
        time.sleep(0.3)
        # Past its share (2) a peer's connections are closed at once; the rest by the short ACSE timeout (1 s).
        closed = sum(_closed_by_peer(s, 0.2) for s in idle)
        assert closed >= 6
        time.sleep(1.5)
        assert sum(_closed_by_peer(s, 0.2) for s in idle) == 8
        assert _push(listener.port, _ct("5")) == 0x0000  # the node gets in again at once
    finally:
        for s in idle:
            s.close()


def _closed_by_peer(sock: socket.socket, wait: float) -> bool:
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_an_instance_over_the_limit_is_cut_off_while_it_arrives_and_the_spool_is_swept(listener_ctx, listener):
    big = _ct("6")
    big.SOPClassUID = big.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    big.Rows, big.Columns = 1024, 1024
    big.PixelData = bytes(1024 * 1024 * 2) * 3  # 6 MiB of pixels against a 1 MiB limit
    big["PixelData"].VR = "OW"
    assert _push(listener.port, big) is None  # aborted, not answered after the whole transfer
    assert _images(listener_ctx) == 0
    assert any("over 1 MiB" in r["detail"] for r in _refusals(listener_ctx))
    deadline = time.monotonic() + 15  # swept: untouched for two network timeouts (2 s), checked every 5 s
    while any(listener.spool.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(listener.spool.iterdir()), "a raw, identified instance stayed in the spool"
    assert listener.spool == listener_ctx.config.home / "spool" and listener.spool.stat().st_mode & 0o777 == 0o700
    assert _push(listener.port, _ct("7")) == 0x0000  # the listener took the next instance normally


def test_a_known_study_uid_never_joins_another_patients_case(ctx):
    first, other = _ct("8"), _ct("9")
    other.PatientID, other.PatientName = "SOMEONE-ELSE", "Else^Someone"  # same StudyInstanceUID
    [a] = ingest_files([("a.dcm", _bytes(first))], ctx)
    [b] = ingest_files([("b.dcm", _bytes(other))], ctx)
    assert a.status == "ok" and b.status == "error" and b.error.startswith("StudyConflict")
    same = _ct("10")  # the same patient's next image joins the case
    [c] = ingest_files([("c.dcm", _bytes(same))], ctx)
    assert c.status == "ok" and c.case_id == a.case_id
    assert any(r["action"] == "upload.failed" and "StudyConflict" in r["detail"] for r in ctx.store.audit_rows(20))


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_dicomweb_url_with_credentials_is_refused(ctx):
    with pytest.raises(InvalidOption, match="user name or password"):
        save_node(ctx, PacsNode("leaky", "http://radlens:secret@pacs.example.org/dicom-web"))
    assert "secret" not in "".join(r["detail"] for r in ctx.store.audit_rows(20))


@pytest.mark.slow
def test_a_local_ray_cluster_refuses_a_process_without_its_token():
    code = """
import subprocess, sys
from engine.batch.backends import _local_cluster_security
security = _local_cluster_security("")
import ray
info = ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, **security)
env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("RAY_AUTH")}
join = "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); print('JOINED')"
done = subprocess.run([sys.executable, "-c", join, info.address_info["gcs_address"]], env=env,
                      capture_output=True, text=True, timeout=120)
print("RC", done.returncode, "JOINED" in done.stdout, "token" in done.stderr.lower())
ray.shutdown()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert "RC 1 False True" in out.stdout, out.stdout[-1000:] + out.stderr[-2000:]


def test_the_decoder_child_gets_no_key_credential_or_token_from_the_environment(monkeypatch):
    import os

    from engine.io.sandbox import Sandbox

    for name in ("RADLENS_AUDIT_KEY", "RADLENS_PSEUDONYM_KEY", "RADLENS_PACS_ORTHANC_PASSWORD", "RAY_AUTH_TOKEN"):
        monkeypatch.setenv(name, "f" * 64)
    sandbox = Sandbox(512 * 2**20, 60)  # its own child, started now with this environment
    try:
        assert sandbox.call(os.getpid) != os.getpid()
        environment = open(f"/proc/{sandbox._child.pid}/environ", "rb").read().decode()
    finally:
        sandbox.close()
    assert "f" * 64 not in environment and "PATH=" in environment


class _QidoAnswer:
    """A loopback HTTP server posing as a PACS: its QIDO-RS answer has `rows` studies, whatever the limit asked."""

    def __init__(self, rows: int):
        import http.server
        import json
        import threading

        item = json.dumps({"0020000D": {"vr": "UI", "Value": ["1.2.3.4"]},
                           "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}}).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "application/dicom+json")
                self.end_headers()
                try:
                    self.wfile.write(b"[" + b",".join([item] * rows) + b"]")
                except OSError:
                    pass  # the client stopped reading

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"

    def close(self):
        self.server.shutdown()


def test_a_qido_answer_is_read_under_a_cap_and_the_limit_is_honoured(config):
    from engine.errors import PacsError
    from engine.pacs.transports import QIDO_MAX_BYTES, StudyQuery, find

    many = _QidoAnswer(1_000)
    try:
        assert len(find(config, PacsNode("many", many.url), StudyQuery(limit=5))) == 5
    finally:
        many.close()
    huge = _QidoAnswer(QIDO_MAX_BYTES // 100 + 10)  # each study is about 120 bytes: over the cap
    try:
        with pytest.raises(PacsError, match="larger than 32 MiB"):
            find(config, PacsNode("huge", huge.url), StudyQuery(limit=5))
    finally:
        huge.close()


def _fragment_script():
    import streamlit as st

    from dashboard import state
    from dashboard.auth import refreshing

    if not st.session_state.get(state.SESSION):  # the app's gate, as dashboard/app.py runs it first
        st.write("sign-in form")
        st.stop()
    refreshing(lambda: st.write("job progress"), 5)()


def test_a_self_refreshing_view_rechecks_the_session_and_leaves_it_idle(config, ctx, monkeypatch):
    """A fragment's rerun skips the page's gate: each self-refreshing view checks the session itself, without
    counting as activity, and an ended session (a disabled account) takes the tab back to the sign-in form."""
    import re
    from pathlib import Path

    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from dashboard import state
    from engine.identity.accounts import add_account, set_disabled
    from engine.identity.sessions import start_session

    monkeypatch.setenv("RADLENS_HOME", str(config.home))
    st.cache_resource.clear()
    alice = add_account(ctx, "alice", "correct horse battery staple", "clinician").user
    app = AppTest.from_function(_fragment_script)
    app.session_state[state.SESSION] = start_session(ctx, alice, "local")
    assert "job progress" in [m.value for m in app.run().markdown]
    with ctx.store.read() as db:
        seen = db.execute("SELECT last_seen FROM sessions").fetchone()[0]
    set_disabled(ctx, "alice", True)
    assert [m.value for m in app.run().markdown] == ["sign-in form"]
    with ctx.store.read() as db:
        assert db.execute("SELECT last_seen FROM sessions").fetchone()[0] == seen  # not touched by refreshing
    st.cache_resource.clear()
    # Every self-refreshing view goes through it: no other fragment with a timer in the dashboard.
    root = Path(__file__).resolve().parent.parent
    timers = [p.name for p in (root / "dashboard").glob("*.py") if re.search(r"fragment\(run_every", p.read_text())]
    assert timers == ["auth.py"]


def _certificates(folder, names: dict[str, str]) -> dict[str, tuple[str, str]]:
    """A CA and, for each name -> IP address, a certificate it signed: {name: (cert path, key path), 'ca': ...}."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def write(name, cert, key):
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                               serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
        return str(folder / f"{name}.pem"), str(folder / f"{name}.key")

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test CA {folder.name}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    out = {"ca": write("ca", ca, ca_key)}
    for name, address in names.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
                               critical=False).sign(ca_key, hashes.SHA256()))
        out[name] = write(name, cert, key)
    return out


def test_dicom_tls_admits_only_a_node_with_a_certificate_our_ca_signed(tmp_path):
    import dataclasses
    import ssl

    from engine.pacs.transports import echo

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir(), theirs.mkdir()
    certs = _certificates(ours, {"radlens": "127.0.0.1", "pacs": "127.0.0.2"})
    stranger = _certificates(theirs, {"pacs": "127.0.0.2"})  # the same name, another CA
    settings = DicomSettings(port=0, quiet_seconds=60, timeout_seconds=5, acse_timeout_seconds=1,
                             tls_cert=certs["radlens"][0], tls_key=certs["radlens"][1], tls_ca=certs["ca"][0])
    config = Config(home=tmp_path / "home", data_dir=None, dicom=settings)
    ctx = Context(config, open_store(config), User("dicom-listener:RADLENS", "DICOM listener", "system"))
    save_node(ctx, PacsNode("pacs", ae_title=NODE_AE, host="127.0.0.2", port=4242, tls=True))
    listener = Listener(ctx).start(address="127.0.0.1", port=0)
    try:
        def push(cert: tuple[str, str] | None, ca: str, uid: str):
            sender = AE(ae_title=NODE_AE)
            sender.add_requested_context(SecondaryCaptureImageStorage)
            sender.add_requested_context(_ct(uid).SOPClassUID)
            tls = None
            if cert:
                context = ssl.create_default_context(cafile=ca)
                context.load_cert_chain(*cert)
                tls = (context, "127.0.0.1")
            assoc = sender.associate("127.0.0.1", listener.port, ae_title="RADLENS", bind_address=("127.0.0.2", 0),
                                     tls_args=tls)
            if not assoc.is_established:
                return None
            status = assoc.send_c_store(_ct(uid))
            assoc.release()
            return status.Status if status else None

        assert push(certs["pacs"], certs["ca"][0], "21") == 0x0000  # the node, with its certificate
        assert push(None, "", "22") is None  # no TLS at all
        assert push(stranger["pacs"], certs["ca"][0], "23") is None  # a certificate another CA signed
        assert _images(ctx) == 1
        # RadLens calling a TLS node checks its certificate (here: its own listener, reached as a node)
        save_node(ctx, PacsNode("self", ae_title="RADLENS", host="127.0.0.1", port=listener.port, tls=True))
        assert echo(config, PacsNode("self", ae_title="RADLENS", host="127.0.0.1", port=listener.port,
                                     tls=True)).results == {"dimse": "ok"}
        untrusting = dataclasses.replace(config, dicom=dataclasses.replace(settings, tls_ca=stranger["ca"][0]))
        assert echo(untrusting, PacsNode("self", ae_title="RADLENS", host="127.0.0.1", port=listener.port,
                                         tls=True)).results != {"dimse": "ok"}
    finally:
        listener.stop()
