"""Configuration: frozen dataclasses, one per concern, built from the environment in one place."""

from __future__ import annotations

import getpass
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import ConfigError, TooLarge

__all__ = ["Limits", "AuthSettings", "DicomSettings", "Config", "AUTH_MODES", "is_loopback", "Setting", "SETTINGS"]

AUTH_MODES = ("local", "oidc", "none")


@dataclass(frozen=True)
class Limits:
    """Limits on what one upload may cost; exceeding any gives a TooLarge/UnsafeArchive error."""

    max_upload_mb: int = 512  # largest single file (or zip) accepted, in MiB
    max_batch_mb: int = 2_048  # all files of one upload together, in MiB
    max_pixels: int = 100_000_000  # rows x columns x frames of one image (Pillow's bomb check uses it too)
    max_frames: int = 2_000  # frames in one multi-frame DICOM
    max_zip_members: int = 5_000  # files inside one zip
    max_zip_total_mb: int = 4_096  # uncompressed bytes of one zip, all members together, in MiB
    max_zip_ratio: int = 200  # compression ratio above which a member counts as a zip bomb
    decode_memory_mb: int = 3_072  # address space of the process that decodes one file (engine.io.sandbox)
    decode_seconds: float = 120.0  # and the time it may take

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    def check_upload(self, size: int) -> None:
        """Raise TooLarge when one file (or zip) of `size` bytes is over the upload limit."""
        if size > self.max_upload_bytes:
            raise TooLarge(f"file is {size / 2**20:,.1f} MiB; the limit is {self.max_upload_mb:,} MiB "
                           "(RADLENS_MAX_UPLOAD_MB)")

    @property
    def max_zip_total_bytes(self) -> int:
        return self.max_zip_total_mb * 1024 * 1024


def is_loopback(address: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, 'localhost')."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class AuthSettings:
    """Who may reach the server and how they sign in (docs/security.md)."""

    mode: str = "local"  # local accounts | oidc (st.login) | none (loopback only, actions unauthenticated)
    address: str = "127.0.0.1"  # where `make run` listens; anything but loopback must be asked for
    port: int = 8501
    idle_minutes: float = 30.0  # a session with no interaction for this long ends
    max_hours: float = 12.0  # and any session ends this long after sign-in
    min_password: int = 12
    max_failures: int = 5  # failed sign-ins in a row before the account locks
    lock_minutes: float = 15.0
    oidc_provider: str = "radlens"  # the [auth.<name>] section of .streamlit/secrets.toml
    oidc_role_claim: str = "groups"  # the ID-token claim the role is read from
    # claim value -> role; a user whose claim holds none of these values cannot sign in
    oidc_roles: tuple[tuple[str, str], ...] = (("radlens-admin", "admin"), ("radlens-clinician", "clinician"),
                                               ("radlens-researcher", "researcher"))

    def check(self) -> None:
        """Refuse settings that would expose the server: `none` anywhere but loopback."""
        if self.mode not in AUTH_MODES:
            raise ConfigError(f"RADLENS_AUTH={self.mode!r}: use one of {', '.join(AUTH_MODES)}")
        if self.mode == "none" and not is_loopback(self.address):
            raise ConfigError(f"RADLENS_AUTH=none only works while the server listens on 127.0.0.1; "
                              f"it is set to listen on {self.address}. Use local accounts or OIDC there")

    @classmethod
    def from_env(cls, env: dict[str, str]) -> AuthSettings:
        def number(name: str, default: float) -> float:
            try:
                return float(env.get(name, default))
            except ValueError:
                raise ConfigError(f"{name} must be a number, not {env[name]!r}") from None

        roles = cls.oidc_roles
        if env.get("RADLENS_OIDC_ROLES"):  # "admins=admin,radiology=clinician"
            try:
                roles = tuple(tuple(pair.split("=", 1)) for pair in env["RADLENS_OIDC_ROLES"].split(","))
                assert all(len(pair) == 2 for pair in roles)
            except AssertionError:
                raise ConfigError("RADLENS_OIDC_ROLES must look like 'group=role,group=role'") from None
        settings = cls(
            mode=env.get("RADLENS_AUTH", cls.mode).strip().lower(),
            address=env.get("RADLENS_ADDRESS", cls.address),
            port=int(number("RADLENS_PORT", cls.port)),
            idle_minutes=number("RADLENS_SESSION_IDLE_MIN", cls.idle_minutes),
            max_hours=number("RADLENS_SESSION_MAX_HOURS", cls.max_hours),
            oidc_provider=env.get("RADLENS_OIDC_PROVIDER", cls.oidc_provider),
            oidc_role_claim=env.get("RADLENS_OIDC_ROLE_CLAIM", cls.oidc_role_claim),
            oidc_roles=roles,
        )
        if settings.mode not in AUTH_MODES:
            raise ConfigError(f"RADLENS_AUTH={settings.mode!r}: use one of {', '.join(AUTH_MODES)}")
        return settings


@dataclass(frozen=True)
class DicomSettings:
    """RadLens as a DICOM node: the listener (C-STORE SCP) and the calling AE title of its queries."""

    ae_title: str = "RADLENS"  # what PACS nodes know RadLens as (their modality entry, for C-GET and pushes)
    address: str = "127.0.0.1"  # where the listener accepts associations
    port: int = 11112  # the listener's port (`make run` starts it; `python -m engine listen` alone)
    quiet_seconds: float = 5.0  # a pushed study is complete when no instance of it arrived for this long
    timeout_seconds: float = 30.0  # network timeout of every PACS request (connect, DIMSE, HTTP)
    acse_timeout_seconds: float = 5.0  # how long the listener waits for a connection's association request
    peer_associations: int = 4  # associations one peer address may hold at once (all peers: 8)
    tls_cert: str = ""  # DICOM TLS (engine.pacs.tls): RadLens' certificate, its key, the CA nodes' certificates
    tls_key: str = ""
    tls_ca: str = ""

    @classmethod
    def from_env(cls, env: dict[str, str]) -> DicomSettings:
        try:
            settings = cls(ae_title=env.get("RADLENS_AE_TITLE", cls.ae_title).strip(),
                           address=env.get("RADLENS_DICOM_ADDRESS", cls.address),
                           port=int(env.get("RADLENS_DICOM_PORT", cls.port)),
                           quiet_seconds=float(env.get("RADLENS_DICOM_QUIET_S", cls.quiet_seconds)),
                           timeout_seconds=float(env.get("RADLENS_PACS_TIMEOUT_S", cls.timeout_seconds)),
                           acse_timeout_seconds=float(env.get("RADLENS_DICOM_ACSE_TIMEOUT_S",
                                                              cls.acse_timeout_seconds)),
                           peer_associations=int(env.get("RADLENS_DICOM_PEER_ASSOCIATIONS", cls.peer_associations)),
                           tls_cert=env.get("RADLENS_DICOM_TLS_CERT", ""), tls_key=env.get("RADLENS_DICOM_TLS_KEY", ""),
                           tls_ca=env.get("RADLENS_DICOM_TLS_CA", ""))
        except ValueError as exc:
            raise ConfigError(f"a DICOM setting (RADLENS_DICOM_PORT, RADLENS_DICOM_QUIET_S, RADLENS_PACS_TIMEOUT_S, "
                              f"RADLENS_DICOM_ACSE_TIMEOUT_S, RADLENS_DICOM_PEER_ASSOCIATIONS) is not a number: "
                              f"{exc}") from None
        if not 0 < len(settings.ae_title) <= 16 or not settings.ae_title.isascii() or "\\" in settings.ae_title:
            raise ConfigError(f"RADLENS_AE_TITLE must be 1-16 ASCII characters without a backslash "
                              f"(got {settings.ae_title!r})")
        return settings


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


@dataclass(frozen=True)
class Config:
    """Where state lives and who is acting. Build with Config.from_env() at the edges only."""

    home: Path  # all state: radlens.db, files/, logs/, jobs/
    data_dir: Path | None  # read-only datasets (../shared/data); None when not present
    # who a process without a signed-in user acts as: the CLI (cli:<login>) or a job (its submitter's id)
    user: str = field(default_factory=lambda: f"cli:{_login_name()}")
    limits: Limits = field(default_factory=Limits)
    auth: AuthSettings = field(default_factory=AuthSettings)
    dicom: DicomSettings = field(default_factory=DicomSettings)
    # where a signed-in user may point a batch run (RADLENS_BATCH_ROOTS, separated by ':'); default: the data
    # folder and $RADLENS_HOME/batch. The CLI, run by someone with shell access, may read any path.
    batch_roots: tuple[Path, ...] = ()
    # the Ray cluster of the ray batch backend (RADLENS_RAY_ADDRESS): the server's setting only, never a form's;
    # empty: a local cluster per run, on loopback addresses and with a token of its own (engine.batch.backends)
    ray_address: str = ""
    batch_max_items: int = 1_000_000  # files one batch run may hold (RADLENS_BATCH_MAX_ITEMS)

    @property
    def allowed_batch_roots(self) -> tuple[Path, ...]:
        return self.batch_roots or tuple(p for p in (self.data_dir, self.home / "batch") if p)

    @property
    def db_path(self) -> Path:
        return self.home / "radlens.db"

    @property
    def files_dir(self) -> Path:
        return self.home / "files"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Config":
        env = dict(os.environ if env is None else env)
        data = env.get("RADLENS_DATA_DIR")
        limits = Limits(
            max_upload_mb=int(env.get("RADLENS_MAX_UPLOAD_MB", Limits.max_upload_mb)),
            max_batch_mb=int(env.get("RADLENS_MAX_BATCH_MB", Limits.max_batch_mb)),
            max_pixels=int(env.get("RADLENS_MAX_PIXELS", Limits.max_pixels)),
            max_frames=int(env.get("RADLENS_MAX_FRAMES", Limits.max_frames)),
            decode_memory_mb=int(env.get("RADLENS_DECODE_MEMORY_MB", Limits.decode_memory_mb)),
            decode_seconds=float(env.get("RADLENS_DECODE_SECONDS", Limits.decode_seconds)),
        )
        return cls(
            home=Path(env.get("RADLENS_HOME", ".radlens")).resolve(),
            data_dir=Path(data).resolve() if data and Path(data).is_dir() else None,
            user=env.get("RADLENS_USER") or f"cli:{_login_name()}",
            limits=limits,
            auth=AuthSettings.from_env(env),
            dicom=DicomSettings.from_env(env),
            batch_roots=tuple(Path(p).resolve() for p in env.get("RADLENS_BATCH_ROOTS", "").split(os.pathsep) if p),
            ray_address=env.get("RADLENS_RAY_ADDRESS", "").strip(),
            batch_max_items=int(env.get("RADLENS_BATCH_MAX_ITEMS", cls.batch_max_items)),
        )


@dataclass(frozen=True)
class Setting:
    """One RADLENS_* environment variable: its default (taken from the dataclass field that holds it, where
    one does) and what it means. docs/settings.md is generated from SETTINGS (python -m tests.gen_docs)."""

    name: str
    meaning: str
    default: str = "unset"  # as documented, when no field holds it
    field: tuple[type, str] | None = None  # (class, field) whose default is the setting's default

    @property
    def default_text(self) -> str:
        if self.field is None:
            return self.default
        value = getattr(self.field[0], self.field[1])
        return f"{value:g}" if isinstance(value, float) else f"`{value}`" if isinstance(value, str) else str(value)


SETTINGS: tuple[Setting, ...] = (
    Setting("RADLENS_HOME", "all state: `radlens.db`, `files/`, `jobs/`, `models/`, `logs/`", "`./.radlens`"),
    Setting("RADLENS_DATA_DIR", "read-only datasets; also seeds demo films",
            "unset (`make` sets `../shared/data` when present)"),
    Setting("RADLENS_USER", "who the command line and background jobs act as (role `system`)", "`cli:<login>`"),
    Setting("RADLENS_AUTH", "sign-in: `local` accounts, `oidc` (Streamlit `st.login`), `none` (loopback only)",
            field=(AuthSettings, "mode")),
    Setting("RADLENS_ADDRESS", "where `make run` listens; anything else needs `RADLENS_ALLOWED_HOSTS`",
            field=(AuthSettings, "address")),
    Setting("RADLENS_PORT", "the port `make run` listens on", field=(AuthSettings, "port")),
    Setting("RADLENS_ALLOWED_HOSTS", "host names users type when not on loopback (DNS-rebinding guard)"),
    Setting("RADLENS_SESSION_IDLE_MIN", "minutes without activity before a session ends",
            field=(AuthSettings, "idle_minutes")),
    Setting("RADLENS_SESSION_MAX_HOURS", "hours after sign-in before any session ends",
            field=(AuthSettings, "max_hours")),
    Setting("RADLENS_SECRETS", "the OIDC client settings file (`[auth]`, as Streamlit documents)",
            "`.streamlit/secrets.toml`"),
    Setting("RADLENS_OIDC_PROVIDER", "the `[auth.<name>]` section used", field=(AuthSettings, "oidc_provider")),
    Setting("RADLENS_OIDC_ROLE_CLAIM", "the ID-token claim roles come from", field=(AuthSettings, "oidc_role_claim")),
    Setting("RADLENS_OIDC_ROLES", "claim value to role (`group=role,group=role`)",
            "`" + ",".join(f"{k}={v}" for k, v in AuthSettings.oidc_roles) + "`"),
    Setting("RADLENS_AUDIT_KEY", "64 hex digits sealing the audit chain", "key file in `RADLENS_HOME/keys/`"),
    Setting("RADLENS_PSEUDONYM_KEY", "64 hex digits keying the pseudonyms (UIDs, patient IDs, date shifts)",
            "key file in `RADLENS_HOME/keys/`"),
    Setting("RADLENS_MAX_UPLOAD_MB", "largest file or zip (MiB)", field=(Limits, "max_upload_mb")),
    Setting("RADLENS_MAX_PIXELS", "rows x columns x frames of one image", field=(Limits, "max_pixels")),
    Setting("RADLENS_MAX_FRAMES", "frames of one multi-frame DICOM", field=(Limits, "max_frames")),
    Setting("RADLENS_MAX_BATCH_MB", "all files of one upload together (MiB); files past it fail and the rest of "
            "the batch is kept", field=(Limits, "max_batch_mb")),
    Setting("RADLENS_DECODE_MEMORY_MB", "address space of the child process that decodes and de-identifies one "
            "file (MiB)", field=(Limits, "decode_memory_mb")),
    Setting("RADLENS_DECODE_SECONDS", "time that child may take for one file", field=(Limits, "decode_seconds")),
    Setting("RADLENS_AE_TITLE", "RadLens' AE title: the listener's, and the calling title of its queries",
            field=(DicomSettings, "ae_title")),
    Setting("RADLENS_DICOM_ADDRESS", "where the DICOM listener accepts associations",
            field=(DicomSettings, "address")),
    Setting("RADLENS_DICOM_PORT", "the DICOM listener's port (0: no listener)", field=(DicomSettings, "port")),
    Setting("RADLENS_DICOM_QUIET_S", "seconds without a new instance after which a pushed study is complete and "
            "routed", field=(DicomSettings, "quiet_seconds")),
    Setting("RADLENS_PACS_TIMEOUT_S", "network timeout of every PACS request (seconds)",
            field=(DicomSettings, "timeout_seconds")),
    Setting("RADLENS_DICOM_ACSE_TIMEOUT_S", "how long the listener waits for a new connection's association "
            "request (seconds)", field=(DicomSettings, "acse_timeout_seconds")),
    Setting("RADLENS_DICOM_PEER_ASSOCIATIONS", "associations one node address may hold at once (all together: 8)",
            field=(DicomSettings, "peer_associations")),
    Setting("RADLENS_DICOM_TLS_CERT", "DICOM TLS: RadLens' certificate (PEM); with `_KEY` and `_CA` the listener "
            "is TLS-only"),
    Setting("RADLENS_DICOM_TLS_KEY", "its private key (PEM)"),
    Setting("RADLENS_DICOM_TLS_CA", "the CA that signs the nodes' certificates (checked both ways)"),
    Setting("RADLENS_PACS_", "+ `<NODE>_USERNAME` / `_PASSWORD`: a node's credentials (else its 0600 file in "
            "`keys/`)"),
    Setting("RADLENS_BATCH_ROOTS", "folders (`:`-separated) a signed-in user's batch run may read",
            "data folder + `RADLENS_HOME/batch`"),
    Setting("RADLENS_BATCH_MAX_ITEMS", "files one batch run may hold", field=(Config, "batch_max_items")),
    Setting("RADLENS_RAY_ADDRESS", "the Ray cluster of the `ray` batch backend",
            "unset (a local, token-authenticated cluster per run)"),
)
