"""PACS nodes: where a PACS answers (a DICOMweb base URL and/or an AE title, host and port), kept in the
store; and their credentials, kept outside it.

Credentials come from the environment (`RADLENS_PACS_<NAME>_USERNAME` / `_PASSWORD`, NAME upper-cased with
'-' as '_') or from `RADLENS_HOME/keys/pacs-<name>.json` (mode 0600 in the 0700 keys folder, written by
`python -m engine pacs add ... --username U --password-stdin`). Someone who reads the database alone learns
addresses, never a password.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import asdict, dataclass
from urllib.parse import urlparse

from engine.config import Config
from engine.context import Context
from engine.errors import InvalidOption, UnknownNode
from engine.keys import private_dir
from engine.store import Store, utc_now

__all__ = ["PacsNode", "Credentials", "save_node", "remove_node", "list_nodes", "get_node", "credentials",
           "save_credentials", "node_for_ae", "peer_addresses", "is_loopback_url", "RESERVED_AE_TITLE"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
RESERVED_AE_TITLE = "NO NODE CONFIG"  # what the listener requires while no node exists: no node may use it


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:  # never in a log or a traceback
        return f"Credentials({self.username!r}, ***)"


@dataclass(frozen=True)
class PacsNode:
    name: str  # how pages, the CLI and the worklist name it
    dicomweb_url: str = ""  # the DICOMweb root (QIDO-RS / WADO-RS / STOW-RS), e.g. http://pacs:8042/dicom-web
    ae_title: str = ""  # DIMSE: the PACS's AE title, host and port (C-ECHO, C-FIND, C-GET; and it may push)
    host: str = ""
    port: int = 0
    # Sending re-identified results: plain http:// to a host off this machine only when an administrator says
    # so; results of studies that came from another node only when an administrator says so.
    allow_plain_http: bool = False
    accepts_other_studies: bool = False
    tls: bool = False  # DIMSE over DICOM TLS (engine.pacs.tls)

    @property
    def dimse(self) -> bool:
        return bool(self.ae_title and self.host and self.port)

    @property
    def web(self) -> bool:
        return bool(self.dicomweb_url)

    def check(self) -> PacsNode:
        """The node with its fields normalised; InvalidOption naming the field that cannot work."""
        node = PacsNode(self.name.strip(), self.dicomweb_url.strip().rstrip("/"), self.ae_title.strip(),
                        self.host.strip(), int(self.port or 0), bool(self.allow_plain_http),
                        bool(self.accepts_other_studies), bool(self.tls))
        if not _NAME.fullmatch(node.name):
            raise InvalidOption("a node name is 1-32 letters, digits, '-' or '_', starting with a letter or digit")
        if node.web and (urlparse(node.dicomweb_url).scheme not in ("http", "https")
                         or not urlparse(node.dicomweb_url).hostname):
            raise InvalidOption(f"the DICOMweb URL must start with http:// or https:// and name a host "
                                f"(got {node.dicomweb_url[:100]!r})")
        if node.web and (urlparse(node.dicomweb_url).username or urlparse(node.dicomweb_url).password):
            raise InvalidOption("the DICOMweb URL holds a user name or password: give the URL without them and the "
                                "credentials separately (--username U --password-stdin, or the page's fields), "
                                "which are kept outside the database")
        if node.ae_title and (len(node.ae_title) > 16 or not node.ae_title.isascii() or "\\" in node.ae_title
                              or not node.ae_title.isprintable()):
            raise InvalidOption("an AE title is 1-16 printable ASCII characters without a backslash")
        if node.ae_title == RESERVED_AE_TITLE:
            raise InvalidOption(f"the AE title {RESERVED_AE_TITLE!r} is reserved by RadLens")
        if (node.ae_title or node.host or node.port) and not node.dimse:
            raise InvalidOption("DIMSE needs all three of AE title, host and port")
        if node.port and not 0 < node.port < 65536:
            raise InvalidOption(f"the port must be 1-65535 (got {node.port})")
        if not node.web and not node.dimse:
            raise InvalidOption("a node needs a DICOMweb URL, or an AE title with host and port, or both")
        return node


def save_node(ctx: Context, node: PacsNode) -> PacsNode:
    """Add or change a node (audited)."""
    ctx.require("pacs.configure")
    node = node.check()
    with ctx.store.write() as db:
        db["pacs_nodes"].upsert({**asdict(node), "updated_at": utc_now()}, pk="name")
        ctx.audit(db, "pacs.node.save", "pacs_node", node.name, asdict(node))
    return node


def remove_node(ctx: Context, name: str) -> None:
    ctx.require("pacs.configure")
    get_node(ctx.store, name)
    with ctx.store.write() as db:
        db.execute("DELETE FROM pacs_nodes WHERE name = ?", [name])
        ctx.audit(db, "pacs.node.remove", "pacs_node", name)
    _credential_file(ctx.config, name).unlink(missing_ok=True)


def list_nodes(store: Store) -> list[PacsNode]:
    with store.read() as db:
        rows = list(db.query("SELECT name, dicomweb_url, ae_title, host, port, allow_plain_http, "
                             "accepts_other_studies, tls FROM pacs_nodes ORDER BY name"))
    return [PacsNode(r["name"], r["dicomweb_url"] or "", r["ae_title"] or "", r["host"] or "", r["port"] or 0,
                     bool(r["allow_plain_http"]), bool(r["accepts_other_studies"]), bool(r["tls"])) for r in rows]


def get_node(store: Store, name: str) -> PacsNode:
    nodes = {n.name: n for n in list_nodes(store)}
    if name not in nodes:
        known = ", ".join(nodes) or "none yet (python -m engine pacs add, or the Administration page)"
        raise UnknownNode(f"no PACS node {str(name)[:40]!r}. Configured: {known}")
    return nodes[name]


def node_for_ae(store: Store, ae_title: str) -> PacsNode | None:
    """The configured node whose AE title this is: the only callers the listener accepts."""
    return next((n for n in list_nodes(store) if n.dimse and n.ae_title == ae_title.strip()), None)


def is_loopback_url(url: str) -> bool:
    """Whether a DICOMweb URL names this machine (plain HTTP never leaves it)."""
    host = urlparse(url).hostname or ""
    return host == "localhost" or host.startswith("127.") or host == "::1"


def peer_addresses(node: PacsNode) -> frozenset[str]:
    """The addresses the node's host resolves to now (resolved at every association, so a changed DNS entry
    or an edited node counts at once); empty when it does not resolve."""
    if not node.host:
        return frozenset()
    try:
        return frozenset(info[4][0] for info in socket.getaddrinfo(node.host, None, proto=socket.IPPROTO_TCP))
    except (OSError, UnicodeError):
        return frozenset()


def _credential_file(config: Config, name: str):
    return config.home / "keys" / f"pacs-{name}.json"


def credentials(config: Config, name: str, env: dict[str, str] | None = None) -> Credentials | None:
    """The node's credentials (environment first, then its 0600 file), or None for an open PACS."""
    env = os.environ if env is None else env
    prefix = f"RADLENS_PACS_{name.upper().replace('-', '_')}_"
    if env.get(prefix + "USERNAME"):
        return Credentials(env[prefix + "USERNAME"], env.get(prefix + "PASSWORD", ""))
    path = _credential_file(config, name)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return Credentials(data["username"], data["password"])


def save_credentials(ctx: Context, name: str, username: str, password: str) -> None:
    """Write the node's credentials to its 0600 file (audited without them)."""
    ctx.require("pacs.configure")
    get_node(ctx.store, name)
    path = _credential_file(ctx.config, name)
    private_dir(path.parent)
    temp = path.with_suffix(".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"username": username, "password": password}, f)
    os.replace(temp, path)
    ctx.log("pacs.node.credentials", "pacs_node", name, {"username_set": bool(username)})
