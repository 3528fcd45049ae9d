"""Identity at the engine level: the permission matrix (every role against every permission, through a real
engine action), Argon2id accounts with a growing wait and a lock, sessions that end when idle or old, the
first-admin link, OIDC claims to a role, and an audit trail whose tampering is detected."""

import dataclasses
import datetime as dt
import io
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.batch.run import BatchRequest, start_batch
from engine.cases.heatmap_audit import start_audit
from engine.cases.ingest import ingest_files
from engine.cases.reviews import add_review
from engine.config import AuthSettings, Config
from engine.context import ACCOUNT_ROLES, PERMISSIONS, ROLES, UNAUTHENTICATED, Context, User
from engine.errors import (
    AccountLocked,
    ConfigError,
    EngineError,
    InvalidOption,
    LoginFailed,
    PermissionDenied,
    SessionExpired,
    WeakPassword,
)
from engine.identity.accounts import (
    REFUSED,
    add_account,
    authenticate,
    change_password,
    create_first_admin,
    issue_setup_token,
    reset_password,
    set_disabled,
    set_role,
)
from engine.identity.oidc import oidc_user
from engine.identity.sessions import check_session, end_session, start_session
from engine.identity.trail import verify_audit_log
from engine.jobs.queue import cancel_job
from engine.jobs.training import TrainConfig, TrainingRequest, submit_training
from engine.models.installed import activation_log, active_model, promote
from engine.models.scope import NOT_ANALYSED, Verdict
from engine.pacs.nodes import PacsNode, save_node
from engine.pacs.push import send_case
from engine.pacs.studies import pull, search
from engine.pacs.transports import StudyQuery
from engine.stored import get_case, record_export, view_case
from engine.synthetic.export import synthesise
from engine.tasks.classification import CaseResult, diagnose_image, load_classifier, raw_output
from engine.tasks.evaluation import compare_for

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery staple"
T0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.timezone.utc)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    config = Config(home=tmp_path_factory.mktemp("clf"), data_dir=None)
    return load_classifier(Context.open(config))


def _audit_count(store) -> int:
    with store.read() as db:
        return db.execute("SELECT count(*) FROM audit_log").fetchone()[0]


# One real engine action per permission. "Allowed" means the permission check passed: the heavy ones are given
# an invalid argument on purpose, so they stop at the validation right after the check (a named EngineError).
ACTIONS = {
    "case.read": lambda ctx, case, clf: view_case(ctx, case),
    "case.upload": lambda ctx, case, clf: ingest_files([(f"{ctx.user.role}.png", _png())], ctx),
    "case.analyse": lambda ctx, case, clf: diagnose_image(ctx, clf, get_case(ctx.store, case)["images"][0]),
    "case.review": lambda ctx, case, clf: add_review(ctx, case, "agree"),
    "case.export": lambda ctx, case, clf: record_export(ctx, case, "mask.png", lambda: b"png"),
    "case.raw_output": lambda ctx, case, clf: raw_output(ctx, CaseResult(case, 0, None, 0, None,
                                                                         Verdict(NOT_ANALYSED, "modality US"))),
    "pacs.query": lambda ctx, case, clf: search(ctx, "no-such-node", StudyQuery(modality="CR")),
    "pacs.retrieve": lambda ctx, case, clf: pull(ctx, "no-such-node", "1.2.3"),
    "pacs.configure": lambda ctx, case, clf: save_node(ctx, PacsNode("no-address")),
    "pacs.send": lambda ctx, case, clf: send_case(ctx, case),  # the case has no result: NotAnalysed after the check
    "batch.run": lambda ctx, case, clf: start_batch(ctx, BatchRequest("/no/such/archive")),
    "explain.audit": lambda ctx, case, clf: start_audit(ctx, "cxr-pneumonia-resnet18", "no-such-method", "x", "test"),
    "job.submit": lambda ctx, case, clf: submit_training(
        ctx, TrainingRequest(TrainConfig(dataset="hc18", model="resnet18"))),
    "job.manage": lambda ctx, case, clf: cancel_job(ctx, 999),
    "synthetic.generate": lambda ctx, case, clf: synthesise(ctx, None, None, "normal", 0, 0),  # 0 images: invalid
    "model.compare": lambda ctx, case, clf: compare_for(ctx, ["no-such-model", "cxr-pneumonia-resnet18"]),
    "model.promote": lambda ctx, case, clf: promote(ctx, "cxr-pneumonia-resnet18", "re-activating the shipped model"),
    "user.manage": lambda ctx, case, clf: add_account(ctx, f"made-by-{ctx.user.role}", PASSWORD, "clinician"),
    "audit.read": lambda ctx, case, clf: verify_audit_log(ctx),
}


def test_the_matrix_names_every_permission_and_the_documented_roles():
    assert set(ACTIONS) == set(PERMISSIONS)
    assert ROLES["clinician"] == {"case.read", "case.upload", "case.analyse", "case.review", "case.export",
                                  "pacs.query", "pacs.retrieve", "pacs.send", "batch.run"}
    assert not {"pacs.query", "pacs.retrieve", "pacs.configure", "pacs.send"} & ROLES["researcher"]  # PHI
    assert "pacs.send" in ROLES["admin"]
    assert "case.review" not in ROLES["researcher"] and "model.promote" not in ROLES["researcher"]
    assert not {"case.read", "case.review", "case.upload"} & ROLES["admin"]  # admins run the site, not cases
    assert ROLES["system"] == ROLES["unauthenticated"] == frozenset(PERMISSIONS)
    assert UNAUTHENTICATED.id == "unauthenticated (local)"  # never a fake admin in the log


@pytest.mark.parametrize("role", ACCOUNT_ROLES)
@pytest.mark.parametrize("permission", list(PERMISSIONS))
def test_every_role_against_every_permission_in_the_engine(ctx, classifier, role, permission):
    case_id = ingest_files([("seed.png", _png())], ctx)[0].case_id
    acting = ctx.as_user(User(f"local:{role}-user", f"{role} user", role))
    before = _audit_count(ctx.store)
    if permission in ROLES[role]:
        try:
            ACTIONS[permission](acting, case_id, classifier)
        except PermissionDenied as denied:
            pytest.fail(f"{role} should be allowed to {permission}: {denied}")
        except EngineError:
            pass  # the deliberately invalid argument, checked after the permission
    else:
        with pytest.raises(PermissionDenied, match=rf"{role} user \({role}\) may not"):
            ACTIONS[permission](acting, case_id, classifier)
        assert _audit_count(ctx.store) == before  # a refused action writes nothing


def test_passwords_are_argon2id_hashes_and_never_stored_or_logged_in_clear(ctx, config):
    add_account(ctx, "alice", PASSWORD, "clinician", "Dr Alice")
    authenticate(ctx, "alice", PASSWORD)
    with pytest.raises(LoginFailed):
        authenticate(ctx, "alice", PASSWORD + " typo")
    with ctx.store.read() as db:
        hashed = db.execute("SELECT password_hash FROM users WHERE username = 'alice'").fetchone()[0]
    assert hashed.startswith("$argon2id$")
    for path in config.home.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path
    with pytest.raises(WeakPassword, match="at least 12"):
        add_account(ctx, "bob", "short", "clinician")
    with pytest.raises(WeakPassword, match="user name"):
        add_account(ctx, "roberta", "roberta-is-my-password", "clinician")


def test_failed_sign_ins_wait_longer_each_time_then_lock_and_an_admin_can_unlock(ctx):
    add_account(ctx, "alice", PASSWORD, "clinician")
    moment = T0
    for failures in range(1, 6):
        if failures > 1:  # too soon after the last failure: refused even with the right password
            with pytest.raises(LoginFailed, match=f"^{re.escape(REFUSED)}$"):
                authenticate(ctx, "alice", PASSWORD, now=moment + dt.timedelta(milliseconds=100))
            moment += dt.timedelta(seconds=2 ** (failures - 2), milliseconds=10)
        with pytest.raises(LoginFailed) as failed:
            authenticate(ctx, "alice", f"guess-number-{failures}", now=moment)
    assert isinstance(failed.value, AccountLocked)  # the fifth wrong password in a row locks
    with pytest.raises(AccountLocked, match=f"^{re.escape(REFUSED)}$"):  # even the right password, while locked
        authenticate(ctx, "alice", PASSWORD, now=moment + dt.timedelta(minutes=5))
    assert authenticate(ctx, "alice", PASSWORD, now=moment + dt.timedelta(minutes=16)).username == "alice"
    with ctx.store.read() as db:
        failures = db.execute("SELECT count(*) FROM audit_log WHERE action = 'login.failed'").fetchone()[0]
        details = " ".join(r[0] for r in db.execute("SELECT detail FROM audit_log"))
    assert failures == 5 and "guess-number" not in details  # logged, without the password tried
    moment += dt.timedelta(minutes=17)
    for attempt in range(5):
        with pytest.raises(LoginFailed):
            authenticate(ctx, "alice", "wrong", now=moment + dt.timedelta(seconds=20 * attempt))
    with pytest.raises(AccountLocked):
        authenticate(ctx, "alice", PASSWORD, now=moment + dt.timedelta(minutes=2))
    set_disabled(ctx, "alice", False)  # enable = unlock
    assert authenticate(ctx, "alice", PASSWORD, now=moment + dt.timedelta(minutes=3)).role == "clinician"


def test_every_refused_sign_in_has_the_same_answer_and_the_same_cost(ctx, monkeypatch):
    """Unknown name, wrong password, too soon after a failure, locked, disabled with the right or the wrong
    password: one message and exactly one password check each, so neither tells an account exists."""
    from engine.identity import accounts

    checks = []
    real = accounts._verify
    monkeypatch.setattr(accounts, "_verify", lambda hashed, password: checks.append(1) or real(hashed, password))
    add_account(ctx, "alice", PASSWORD, "clinician")
    add_account(ctx, "bob", PASSWORD, "clinician")
    set_disabled(ctx, "bob", True)
    attempts = [("nobody", PASSWORD, T0), ("alice", "wrong", T0), ("alice", PASSWORD, T0),  # the last: too soon
                ("bob", PASSWORD, T0), ("bob", "wrong", T0)]
    for number, (name, password, moment) in enumerate(attempts, 1):
        with pytest.raises(LoginFailed) as refused:
            authenticate(ctx, name, password, now=moment)
        assert str(refused.value) == REFUSED and len(checks) == number, (name, password)
    with ctx.store.read() as db:
        row = db.execute("SELECT actor, target_id FROM audit_log WHERE action = 'login.failed'").fetchone()
    assert row == ("anonymous", "")  # an unknown name is not written down (it may be a mistyped password)


def test_sessions_end_when_idle_when_too_old_on_sign_out_and_when_the_role_changes(ctx):
    policy = dataclasses.replace(ctx.config.auth, idle_minutes=30, max_hours=12)
    ctx = dataclasses.replace(ctx, config=dataclasses.replace(ctx.config, auth=policy))
    alice = add_account(ctx, "alice", PASSWORD, "clinician").user
    token = start_session(ctx, alice, "local", now=T0)
    assert check_session(ctx, token, now=T0 + dt.timedelta(minutes=29)).user == alice
    assert check_session(ctx, token, now=T0 + dt.timedelta(minutes=58)).user == alice  # activity kept it alive
    with pytest.raises(SessionExpired, match="30 minutes without activity"):
        check_session(ctx, token, now=T0 + dt.timedelta(minutes=89))
    with pytest.raises(SessionExpired):  # and it stays ended
        check_session(ctx, token, now=T0 + dt.timedelta(minutes=90))

    token = start_session(ctx, alice, "local", now=T0)
    for minutes in range(20, 12 * 60, 20):
        check_session(ctx, token, now=T0 + dt.timedelta(minutes=minutes))
    with pytest.raises(SessionExpired, match="12-hour limit"):
        check_session(ctx, token, now=T0 + dt.timedelta(hours=12, minutes=1))

    token = start_session(ctx, alice, "local")
    end_session(ctx, token)
    with pytest.raises(SessionExpired, match="signed out"):
        check_session(ctx, token)
    token = start_session(ctx, alice, "local")
    set_role(ctx, "alice", "researcher")
    with pytest.raises(SessionExpired, match="role changed"):
        check_session(ctx, token)
    actions = [r["action"] for r in reversed(ctx.store.audit_rows(50))]
    assert actions.count("login") == 4 and "session.idle" in actions and "session.max_age" in actions
    assert "logout" in actions


def test_two_sign_ups_racing_with_one_setup_token_make_one_admin(ctx):
    import threading

    token = issue_setup_token(ctx.store)
    start, outcomes = threading.Barrier(2), []

    def sign_up(name: str) -> None:
        start.wait()
        try:
            outcomes.append(create_first_admin(ctx, token, name, PASSWORD).username)
        except LoginFailed:
            outcomes.append("refused")

    threads = [threading.Thread(target=sign_up, args=(n,)) for n in ("first-admin", "second-admin")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 2 and outcomes.count("refused") == 1
    with ctx.store.read() as db:
        assert db.execute("SELECT count(*) FROM users WHERE role = 'admin'").fetchone()[0] == 1


@pytest.mark.parametrize("weak", ["aaaaaaaaaaaaaaaa", "abcabcabcabcabc", "123456789012", "Password2026!",
                                  "P@ssw0rd12345", "qwertyuiopasdf", "iloveyou1234", "Welcome2024!!"])
def test_common_and_repetitive_passwords_are_refused(ctx, weak):
    with pytest.raises(WeakPassword, match="among the first an attacker tries"):
        add_account(ctx, "carol", weak, "clinician")


def test_changing_your_password_signs_your_other_sessions_out(ctx):
    alice = add_account(ctx, "alice", PASSWORD, "clinician").user
    here, elsewhere = start_session(ctx, alice, "local"), start_session(ctx, alice, "local")
    change_password(ctx.as_user(alice), "alice", PASSWORD, "a sturdy new passphrase", keep_session=here)
    assert check_session(ctx, here).user == alice
    with pytest.raises(SessionExpired):
        check_session(ctx, elsewhere)


def test_the_first_admin_link_works_once_and_only_while_no_account_exists(ctx):
    token = issue_setup_token(ctx.store)
    with pytest.raises(LoginFailed, match="not valid"):
        create_first_admin(ctx, "wrong-token", "root-admin", PASSWORD)
    admin = create_first_admin(ctx, token, "root-admin", PASSWORD, "Site Admin")
    assert admin.role == "admin"
    with pytest.raises(LoginFailed, match="not valid"):
        create_first_admin(ctx, token, "second-admin", PASSWORD)
    assert issue_setup_token(ctx.store) is None
    with ctx.store.read() as db:
        row = db.execute("SELECT actor, role FROM audit_log WHERE action = 'user.add'").fetchone()
        assert token not in " ".join(str(v) for r in db.execute("SELECT * FROM settings") for v in r)
    assert row == ("local:root-admin", "admin")


def test_a_clinician_cannot_promote_an_admin_can_with_a_reason_and_the_row_says_who_and_why(ctx, config):
    from tests.conftest import make_model_file

    make_model_file(config.home / "models" / "candidate.safetensors")
    clinician = ctx.as_user(add_account(ctx, "alice", PASSWORD, "clinician").user)
    admin = ctx.as_user(add_account(ctx, "ada", PASSWORD, "admin", "Ada Admin").user)
    with pytest.raises(PermissionDenied):
        promote(clinician, "candidate", "I would like the new one")
    with pytest.raises(InvalidOption, match="say why"):
        promote(admin, "candidate", "  ")
    promote(admin, "candidate", "higher specificity on the held-out split")
    assert active_model(ctx).name == "candidate"
    row = activation_log(ctx.store)[0]
    assert (row["actor"], row["role"], row["reason"]) == ("local:ada", "admin",
                                                           "higher specificity on the held-out split")


def test_reset_and_self_service_rules(ctx):
    alice = ctx.as_user(add_account(ctx, "alice", PASSWORD, "clinician").user)
    with pytest.raises(LoginFailed):
        change_password(alice, "alice", "not the old one", "another long passphrase")
    with ctx.store.write() as db:  # forget the failure's wait, to go on at once
        db.execute("UPDATE users SET failed_logins = 0, last_failed_at = NULL")
    change_password(alice, "alice", PASSWORD, "another long passphrase")
    with pytest.raises(LoginFailed):
        authenticate(ctx, "alice", PASSWORD)
    with ctx.store.write() as db:
        db.execute("UPDATE users SET failed_logins = 0, last_failed_at = NULL")
    assert authenticate(ctx, "alice", "another long passphrase").username == "alice"
    admin = ctx.as_user(add_account(ctx, "ada", PASSWORD, "admin").user)
    reset_password(admin, "alice", "a brand new passphrase")  # also clears any wait or lock
    assert authenticate(ctx, "alice", "a brand new passphrase").username == "alice"
    with pytest.raises(InvalidOption, match="from yourself"):
        set_role(admin, "ada", "clinician")
    with pytest.raises(InvalidOption, match="your own"):
        set_disabled(admin, "ada", True)


CLAIMS = {"sub": "u-123", "iss": "http://127.0.0.1:9400", "aud": "radlens", "nonce": "n", "name": "Dr Who",
          "groups": ["staff", "radlens-clinician"], "iat": 1_800_000_000}


def test_oidc_claims_become_a_user_only_with_our_audience_a_nonce_a_fresh_sign_in_and_a_mapped_role():
    settings, now = AuthSettings(mode="oidc"), CLAIMS["iat"] + 60
    user = oidc_user(CLAIMS, settings, "radlens", CLAIMS["iss"], now=now)
    assert (user.id, user.name, user.role) == ("u-123@http://127.0.0.1:9400", "Dr Who", "clinician")
    with pytest.raises(LoginFailed, match="another application"):
        oidc_user({**CLAIMS, "aud": "someone-else"}, settings, "radlens", CLAIMS["iss"], now=now)
    with pytest.raises(LoginFailed, match="another provider"):
        oidc_user({**CLAIMS, "iss": "http://evil"}, settings, "radlens", CLAIMS["iss"], now=now)
    with pytest.raises(LoginFailed, match="nonce"):
        oidc_user({**CLAIMS, "nonce": ""}, settings, "radlens", CLAIMS["iss"], now=now)
    with pytest.raises(LoginFailed, match="no RadLens role"):
        oidc_user({**CLAIMS, "groups": ["staff"]}, settings, "radlens", CLAIMS["iss"], now=now)
    with pytest.raises(SessionExpired, match="hours old"):
        oidc_user(CLAIMS, settings, "radlens", CLAIMS["iss"], now=now + 13 * 3600)
    custom = AuthSettings.from_env({"RADLENS_AUTH": "oidc", "RADLENS_OIDC_ROLE_CLAIM": "roles",
                                    "RADLENS_OIDC_ROLES": "ai-admins=admin"})
    assert oidc_user({**CLAIMS, "roles": "ai-admins"}, custom, "radlens", "", now=now).role == "admin"


def test_unauthenticated_mode_is_refused_anywhere_but_loopback():
    AuthSettings(mode="none", address="127.0.0.1").check()
    with pytest.raises(ConfigError, match="only works while the server listens on 127.0.0.1"):
        AuthSettings(mode="none", address="0.0.0.0").check()
    with pytest.raises(ConfigError, match="use one of"):
        AuthSettings.from_env({"RADLENS_AUTH": "ldap"})


def _tamper(db_path: Path, *statements: str) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute("DROP TRIGGER IF EXISTS audit_log_no_update")  # what someone behind the application's back does
    conn.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
    for sql in statements:
        conn.execute(sql)
    conn.commit()
    conn.close()


def _verify_cli(home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", "audit-log", "verify"], cwd=ROOT, capture_output=True,
                          text=True, env={"RADLENS_HOME": str(home), "PATH": "/usr/bin:/bin"})


_LAST = "(SELECT max(id) FROM audit_log)"
_CUT_AND_MOVE_HEAD = [f"DELETE FROM audit_log WHERE id = {_LAST}",
                      "UPDATE settings SET value = json_set(value, '$.id', (SELECT max(id) FROM audit_log), '$.hash', "
                      "(SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1)) WHERE key = 'audit_head'"]
_REWRITE_AND_UNSEAL = ["UPDATE audit_log SET detail = '{\"forged\": 1}' WHERE id = 3",
                       "UPDATE audit_log SET hash = NULL, prev_hash = NULL WHERE id >= 3",
                       "UPDATE settings SET value = json_set(value, '$.id', 2, '$.hash', "
                       "(SELECT hash FROM audit_log WHERE id = 2)) WHERE key = 'audit_head'"]


# Every way to tamper without the audit key; each must still be detected after another process opened the store
# (it used to seal unsealed rows on every start, and the head was plain JSON).
@pytest.mark.parametrize("tampering, expected", [
    pytest.param(["UPDATE audit_log SET actor = 'local:mallory' WHERE id = 3"], "row 3 was changed", id="edit"),
    pytest.param(["DELETE FROM audit_log WHERE id = 3"], "row 4 does not follow row 2", id="delete"),
    pytest.param([f"DELETE FROM audit_log WHERE id = {_LAST}"], "rows were deleted from the end", id="cut"),
    pytest.param(_CUT_AND_MOVE_HEAD, "head record was rewritten", id="cut-and-head-rewrite"),
    pytest.param(["INSERT INTO audit_log (at, actor, action, target_type, target_id, detail) "
                  "VALUES ('2026-12-01T10:00:00', 'local:mallory', 'case.review', 'case', '1', '{}')"],
                 "row 7 is not sealed", id="insert-unsealed"),
    pytest.param(_REWRITE_AND_UNSEAL, "row 3 is not sealed", id="rewrite-and-reseal"),
    pytest.param(["UPDATE audit_log SET id = -1 WHERE id = 3", "UPDATE audit_log SET id = 3 WHERE id = 4",
                  "UPDATE audit_log SET id = 4 WHERE id = -1"], "row 3 does not follow row 2", id="reorder"),
    # a changed detail with a guessed seal (without the key): the first hex digit always differs
    pytest.param(["UPDATE audit_log SET detail = '{\"forged\": 1}', hash = (CASE substr(hash, 1, 1) WHEN '0' "
                  "THEN '1' ELSE '0' END) || substr(hash, 2) WHERE id = 5"], "row 5 was changed", id="guessed-seal"),
])
@pytest.mark.slow
def test_tampering_with_the_database_directly_is_detected(ctx, config, tampering, expected):
    for i in range(6):
        ctx.log("case.view", "case", i)
    assert ctx.store.verify_audit().ok
    _tamper(config.db_path, *tampering)
    ctx.store.migrate()  # what every process start does: it must not repair (seal) anything
    report = ctx.store.verify_audit()
    assert not report.ok and expected in report.problem
    done = _verify_cli(config.home)
    assert done.returncode == 1 and "BROKEN" in done.stdout and expected in done.stdout


@pytest.mark.slow
def test_an_intact_trail_verifies_from_the_command_line_and_a_later_unsealed_row_stays_a_break(ctx, config):
    add_account(ctx, "alice", PASSWORD, "clinician")
    done = _verify_cli(config.home)
    assert done.returncode == 0 and "audit trail intact" in done.stdout, done.stderr
    rows = ctx.store.audit_rows(10)
    assert all(len(r["hash"]) == 64 and r["role"] for r in rows)
    with ctx.store.write() as db:  # an unsealed row (the trigger allows inserts): no later start seals it
        db.execute("INSERT INTO audit_log (at, actor, action, target_type, target_id, detail) "
                   "VALUES ('2026-11-30T10:00:00', 'demo-user', 'upload', 'image', '1', '{}')")
    ctx.store.migrate()
    assert _verify_cli(config.home).returncode == 1 and not ctx.store.verify_audit().ok
    assert (config.home / "keys" / "audit.key").stat().st_mode & 0o777 == 0o600
    assert config.db_path.stat().st_mode & 0o777 == 0o600 and config.home.stat().st_mode & 0o777 == 0o700
