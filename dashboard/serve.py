"""`make run`: start the dashboard the safe way. Checks the settings first (RADLENS_AUTH=none is refused unless
the server listens on loopback only), then runs Streamlit on RADLENS_ADDRESS:RADLENS_PORT (127.0.0.1:8501 by
default) with XSRF protection, a Host allow-list against DNS rebinding, the engine's upload limit, and no usage
statistics; beside it, the DICOM listener (`python -m engine listen`: AE title RADLENS_AE_TITLE on
RADLENS_DICOM_ADDRESS:RADLENS_DICOM_PORT, 127.0.0.1:11112 by default; RADLENS_DICOM_PORT=0 turns it off), which
stops when the dashboard does. Run: python -m dashboard.serve"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.config import Config, is_loopback  # noqa: E402
from engine.errors import ConfigError  # noqa: E402

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def streamlit_argv(config: Config, env: dict[str, str]) -> list[str]:
    """The Streamlit command line for these settings (raises ConfigError for unsafe ones)."""
    auth = config.auth
    auth.check()
    hosts = LOOPBACK_HOSTS if is_loopback(auth.address) else \
        tuple(h.strip() for h in env.get("RADLENS_ALLOWED_HOSTS", "").split(",") if h.strip())
    if not hosts:
        raise ConfigError(f"listening on {auth.address} needs RADLENS_ALLOWED_HOSTS: the host names users type "
                          "(e.g. radlens.hospital.org), so requests for any other name are refused")
    argv = [sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard" / "app.py"),
            "--server.address", auth.address, "--server.port", str(auth.port), "--server.headless", "true",
            "--server.enableXsrfProtection", "true", "--server.enableCORS", "true",
            "--server.maxUploadSize", str(config.limits.max_upload_mb), "--browser.gatherUsageStats", "false",
            "--server.showEmailPrompt", "false"]
    for host in hosts:
        argv += ["--server.allowedHosts", host]
    if env.get("RADLENS_SECRETS"):  # the OIDC client settings (.streamlit/secrets.toml by default)
        argv += ["--secrets.files", env["RADLENS_SECRETS"]]
    return argv


def start_listener(config: Config, env: dict[str, str]) -> str:
    """Start the DICOM listener as a child that exits with this process (it watches its parent); returns what
    the terminal says about it."""
    dicom = config.dicom
    if not dicom.port:
        return "DICOM listener off (RADLENS_DICOM_PORT=0)"
    subprocess.Popen([sys.executable, "-m", "engine", "listen", "--parent", str(os.getpid())], cwd=ROOT, env=env,
                     stdin=subprocess.DEVNULL)
    return f"DICOM listener: AE title {dicom.ae_title} on {dicom.address}:{dicom.port}"


def main() -> int:
    env = dict(os.environ)
    try:
        config = Config.from_env(env)
        argv = streamlit_argv(config, env)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    where = f"http://{config.auth.address}:{config.auth.port}"
    print(f"RadLens on {where} (sign-in: {config.auth.mode}); {start_listener(config, env)}; stop with Ctrl+C",
          flush=True)
    os.execv(sys.executable, argv)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
