"""The DICOM listener: a C-STORE SCP (pynetdicom) that takes studies a PACS or a modality pushes.

- Only configured nodes may push, from their own address: a connection from an address that no DIMSE node's
  host resolves to is closed before a byte of DICOM is read; an association whose calling AE title is no
  node's is rejected; an instance whose AE title belongs to a node at another address is refused (an AE
  title is a name, not a secret). Every refusal is audited (connection refusals at most once a minute per
  address and reason, so a flood cannot fill the trail).
- A peer may hold a few associations at once (RADLENS_DICOM_PEER_ASSOCIATIONS), all peers eight; a connection
  that sends no association request is closed after RADLENS_DICOM_ACSE_TIMEOUT_S (5 s), not the DIMSE
  timeout, so idle sockets cannot hold every slot.
- Every instance goes through the normal ingest (sandboxed decode, de-identified before anything is
  written). The answer is success only for an instance that landed (or was already there); anything else
  gets a failure status with a one-line comment, so the sender knows to keep or resend it.
- A received dataset is spooled by pynetdicom to a private folder (RADLENS_HOME/spool, 0700), not held in
  memory; the bytes of an association are counted as they arrive and it is aborted once one instance passes
  the upload limit; spooled files a finished or aborted transfer left are swept every few seconds.
- Arrivals are grouped per study; a study quiet for RADLENS_DICOM_QUIET_S is routed to the models whose
  scope it is in (engine.pacs.routing), analysed by a background job.

`make run` starts it beside the dashboard; `python -m engine listen` runs it alone.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

from pydicom.dataset import Dataset

from engine.cases.ingest import ingest_files
from engine.context import Context
from engine.errors import EngineError
from engine.keys import private_dir
from engine.pacs.nodes import RESERVED_AE_TITLE, list_nodes, node_for_ae, peer_addresses
from engine.pacs.routing import note_arrival, route_ready
from engine.pacs.tls import server_context

__all__ = ["Listener", "OUT_OF_RESOURCES", "CANNOT_UNDERSTAND", "REFUSED"]

log = logging.getLogger("radlens.listener")

OUT_OF_RESOURCES = 0xA700  # too large to take
CANNOT_UNDERSTAND = 0xC000  # unreadable, unsafe or otherwise refused by the ingest
REFUSED = 0x0124  # not authorised (a caller that is no longer a configured node, or not at its address)
_MAX_ASSOCIATIONS = 8
_AUDIT_EVERY_S = 60.0  # connection refusals: at most one audit row per address and reason in this time
_SWEEP_EVERY_S = 5.0


def _server_class(listener: Listener):
    from pynetdicom.transport import ThreadedAssociationServer

    class _Server(ThreadedAssociationServer):
        def get_request(self):
            """Accept; with TLS, refuse a stranger before the handshake, and give the handshake the ACSE
            timeout (pynetdicom's own would wait for a silent client for ever, holding the accept loop)."""
            client, address = self.socket.accept()
            if self.ssl_context:
                if not listener._admit(address[0], self.active_associations):
                    client.close()
                    raise OSError("refused")
                client.settimeout(listener.settings.acse_timeout_seconds)
                try:
                    client = self.ssl_context.wrap_socket(client, server_side=True)
                except (OSError, ValueError) as error:
                    client.close()
                    listener._refused(address[0], "", f"TLS handshake failed ({type(error).__name__})",
                                      once_a_minute=True)
                    raise OSError("handshake failed") from None
                client.settimeout(None)
            return client, address

        def verify_request(self, request, client_address) -> bool:  # socketserver's hook, before any read
            return bool(self.ssl_context) or listener._admit(client_address[0], self.active_associations)

    return _Server


class Listener:
    """Start with `start()`, stop with `stop()`; `port` is the bound port (useful with port 0 in tests)."""

    def __init__(self, ctx: Context):
        from pynetdicom import AE, _config, dimse_messages
        from pynetdicom.presentation import AllStoragePresentationContexts
        from pynetdicom.sop_class import Verification

        _config.STORE_RECV_CHUNKED_DATASET = True  # received datasets go to a temporary file, not memory
        self.ctx, self.settings = ctx, ctx.config.dicom
        # Raw, identified instances are spooled in a private folder of RADLENS_HOME (never the shared /tmp);
        # whatever a killed listener left there is removed now.
        self.spool = private_dir(ctx.config.home / "spool")
        self._sweep(older_than=0.0)
        dimse_messages.NamedTemporaryFile = functools.partial(tempfile.NamedTemporaryFile, dir=self.spool)
        self.ae = AE(ae_title=self.settings.ae_title)
        self.ae.supported_contexts = AllStoragePresentationContexts
        self.ae.add_supported_context(Verification)
        timeout = self.settings.timeout_seconds
        self.ae.dimse_timeout, self.ae.network_timeout = timeout, timeout
        self.ae.acse_timeout = self.settings.acse_timeout_seconds  # also the wait for an association request
        self.ae.maximum_associations = _MAX_ASSOCIATIONS
        self._allowed()
        self._received: dict[int, int] = {}  # bytes received per association since its last whole instance
        self._refusals: dict[tuple[str, str], float] = {}
        self.server = None
        self._stop = threading.Event()
        self._router = threading.Thread(target=self._route_loop, name="radlens-router", daemon=True)
        self.stored = 0
        self.failed = 0
        self._count = threading.Lock()

    @property
    def port(self) -> int:
        return self.server.server_address[1] if self.server else self.settings.port

    def _allowed(self, _event=None) -> None:
        """The calling AE titles of the configured nodes, read again at every connection."""
        titles = sorted({n.ae_title for n in list_nodes(self.ctx.store) if n.dimse})
        # pynetdicom accepts every caller when the list is empty: with no node, only a title no node may have.
        self.ae.require_calling_aet = titles or [RESERVED_AE_TITLE]

    def _admit(self, address: str, active: list) -> bool:
        """Whether a new connection from `address` may proceed: a DIMSE node's host resolves to it, and it
        holds fewer than its share of associations."""
        allowed = set().union(*(peer_addresses(n) for n in list_nodes(self.ctx.store) if n.dimse))
        if address not in allowed:
            self._refused(address, "", "not the address of any configured PACS node", once_a_minute=True)
            return False
        mine = sum(1 for assoc in active if assoc.requestor.address == address)
        if mine >= self.settings.peer_associations:
            self._refused(address, "", f"already holds {mine} associations (RADLENS_DICOM_PEER_ASSOCIATIONS)",
                          once_a_minute=True)
            return False
        return True

    def _refused(self, address: str, ae_title: str, reason: str, once_a_minute: bool = False) -> None:
        now = time.monotonic()
        if once_a_minute:
            with self._count:
                if now - self._refusals.get((address, reason), -_AUDIT_EVERY_S) < _AUDIT_EVERY_S:
                    return
                self._refusals[(address, reason)] = now
        log.warning("refused a DICOM caller at %s: %s", address, reason)
        try:
            self.ctx.log("pacs.listener.refused", "peer", address, {"ae_title": ae_title, "reason": reason})
        except EngineError:  # a full disk must not take the listener down with it
            pass

    def _data(self, event) -> None:
        """Count what an association sends; abort it once one instance is over the upload limit."""
        key = id(event.assoc)
        with self._count:
            self._received[key] = self._received.get(key, 0) + len(event.data)
            over = self._received[key] > self.ctx.config.limits.max_upload_bytes + 2**16  # + command sets
        if over:
            self._refused(event.assoc.requestor.address, event.assoc.requestor.ae_title.strip(),
                          f"sent an instance over {self.ctx.config.limits.max_upload_mb} MiB (RADLENS_MAX_UPLOAD_MB)")
            with self._count:
                self._received.pop(key, None)
            event.assoc.abort()

    def _closed(self, event) -> None:
        with self._count:
            self._received.pop(id(event.assoc), None)

    def _store(self, event) -> int | Dataset:
        with self._count:
            self._received.pop(id(event.assoc), None)
        calling = event.assoc.requestor.ae_title.strip()
        address = event.assoc.requestor.address
        node = node_for_ae(self.ctx.store, calling)
        if node is None:  # removed while its association was open
            return self._failure(REFUSED, f"{calling} is not a configured PACS node")
        if address not in peer_addresses(node):
            reason = f"the AE title {calling} belongs to node {node.name}, which is not at {address}"
            self._refused(address, calling, reason)
            return self._failure(REFUSED, f"{calling} is not a PACS node at this address")
        path = Path(event.dataset_path)
        limit = self.ctx.config.limits.max_upload_bytes
        if path.stat().st_size > limit:
            return self._failure(OUT_OF_RESOURCES, f"larger than {limit // 2**20} MiB (RADLENS_MAX_UPLOAD_MB)")
        source = f"pushed by {calling}"
        try:
            [result] = ingest_files([("pushed instance", path.read_bytes())], self.ctx, source=source,
                                    origin_node=node.name)
        except EngineError as error:  # a store-level failure (disk full): the sender keeps the instance
            return self._failure(OUT_OF_RESOURCES, str(error))
        if not result.ok:
            return self._failure(CANNOT_UNDERSTAND, result.error)
        if result.status == "ok":  # a new image (a duplicate was analysed when it first came)
            note_arrival(self.ctx, result.case_id, source)
        with self._count:
            self.stored += 1
        return 0x0000

    def _failure(self, status: int, reason: str) -> Dataset:
        with self._count:
            self.failed += 1
        answer = Dataset()
        answer.Status = status
        answer.ErrorComment = reason.replace("\\", "/")[:64]
        return answer

    def _sweep(self, older_than: float) -> None:
        """Remove spooled files untouched for `older_than` seconds: a transfer in progress writes to its file
        at least every network timeout (or is aborted by it); pynetdicom removes the file of a whole one."""
        cutoff = time.time() - older_than
        for path in self.spool.iterdir():
            try:
                if path.stat().st_mtime <= cutoff:
                    path.unlink()
            except OSError:
                pass  # removed meanwhile

    def _route_loop(self) -> None:
        swept = time.monotonic()
        while not self._stop.wait(1.0):
            try:
                route_ready(self.ctx, self.settings.quiet_seconds)
            except Exception as error:  # noqa: BLE001 - routing retries next second; the listener stays up
                log.warning("routing failed: %s", type(error).__name__)
            if time.monotonic() - swept >= _SWEEP_EVERY_S:
                self._sweep(older_than=2 * self.settings.timeout_seconds)
                swept = time.monotonic()

    def start(self, address: str | None = None, port: int | None = None) -> Listener:
        from pynetdicom import evt

        handlers = [(evt.EVT_C_STORE, self._store), (evt.EVT_CONN_OPEN, self._allowed),
                    (evt.EVT_DATA_RECV, self._data), (evt.EVT_CONN_CLOSE, self._closed)]
        where = (address or self.settings.address, self.settings.port if port is None else port)
        try:
            self.server = self.ae.make_server(where, evt_handlers=handlers, server_class=_server_class(self),
                                              ssl_context=server_context(self.settings))
        except OSError as error:
            raise EngineError(f"the DICOM listener cannot listen on {where[0]}:{where[1]} ({error.strerror}); "
                              "set RADLENS_DICOM_PORT to a free port") from None
        self.ae._servers.append(self.server)  # as AE.start_server does: the server's shutdown() removes it
        threading.Thread(target=self.server.serve_forever, name="radlens-listener", daemon=True).start()
        self._router.start()
        log.info("listening as %s on %s:%d", self.settings.ae_title, where[0], self.port)
        return self

    def stop(self) -> None:
        from pynetdicom import dimse_messages

        dimse_messages.NamedTemporaryFile = tempfile.NamedTemporaryFile  # this spool may go with its home
        self._stop.set()
        if self.server:
            self.server.shutdown()
        self._router.join(timeout=5)

    def serve_until_parent_exits(self, parent: int | None = None) -> None:
        """Block; return when stopped or when `parent` (the dashboard that started us) is gone."""
        while not self._stop.wait(1.0):
            if parent is not None and os.getppid() != parent:
                break
        self.stop()
