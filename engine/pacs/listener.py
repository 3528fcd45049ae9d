"""The DICOM listener: a C-STORE SCP (pynetdicom) that takes studies a PACS or a modality pushes.

- Only configured nodes may push: an association from an AE title no PACS node has is rejected.
- Every instance goes through the normal ingest (sandboxed decode, de-identified before anything is
  written). The answer is success only for an instance that landed (or was already there); anything else
  gets a failure status with a one-line comment, so the sender knows to keep or resend it.
- A received dataset is spooled to a private temporary file by pynetdicom, not held in memory; one over
  the upload limit is refused before it is read.
- Arrivals are grouped per study; a study quiet for RADLENS_DICOM_QUIET_S is routed to the models whose
  scope it is in (engine.pacs.routing), analysed by a background job.

`make run` starts it beside the dashboard; `python -m engine listen` runs it alone.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from pydicom.dataset import Dataset

from engine.cases.ingest import ingest_files
from engine.context import Context
from engine.errors import EngineError
from engine.pacs.nodes import RESERVED_AE_TITLE, list_nodes, node_for_ae
from engine.pacs.routing import note_arrival, route_ready

__all__ = ["Listener", "OUT_OF_RESOURCES", "CANNOT_UNDERSTAND", "REFUSED"]

log = logging.getLogger("radlens.listener")

OUT_OF_RESOURCES = 0xA700  # too large to take
CANNOT_UNDERSTAND = 0xC000  # unreadable, unsafe or otherwise refused by the ingest
REFUSED = 0x0124  # not authorised (a caller that is no longer a configured node)


class Listener:
    """Start with `start()`, stop with `stop()`; `port` is the bound port (useful with port 0 in tests)."""

    def __init__(self, ctx: Context):
        from pynetdicom import AE, _config
        from pynetdicom.presentation import AllStoragePresentationContexts
        from pynetdicom.sop_class import Verification

        _config.STORE_RECV_CHUNKED_DATASET = True  # received datasets go to a temporary file, not memory
        self.ctx, self.settings = ctx, ctx.config.dicom
        self.ae = AE(ae_title=self.settings.ae_title)
        self.ae.supported_contexts = AllStoragePresentationContexts
        self.ae.add_supported_context(Verification)
        timeout = self.settings.timeout_seconds
        self.ae.acse_timeout, self.ae.dimse_timeout, self.ae.network_timeout = timeout, timeout, timeout
        self.ae.maximum_associations = 8
        self._allowed()
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

    def _store(self, event) -> int | Dataset:
        calling = event.assoc.requestor.ae_title.strip()
        node = node_for_ae(self.ctx.store, calling)
        if node is None:  # removed while its association was open
            return self._failure(REFUSED, f"{calling} is not a configured PACS node")
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

    def _route_loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                route_ready(self.ctx, self.settings.quiet_seconds)
            except Exception as error:  # noqa: BLE001 - routing retries next second; the listener stays up
                log.warning("routing failed: %s", type(error).__name__)

    def start(self, address: str | None = None, port: int | None = None) -> Listener:
        from pynetdicom import evt

        handlers = [(evt.EVT_C_STORE, self._store), (evt.EVT_CONN_OPEN, self._allowed)]
        where = (address or self.settings.address, self.settings.port if port is None else port)
        try:
            self.server = self.ae.start_server(where, block=False, evt_handlers=handlers)
        except OSError as error:
            raise EngineError(f"the DICOM listener cannot listen on {where[0]}:{where[1]} ({error.strerror}); "
                              "set RADLENS_DICOM_PORT to a free port") from None
        self._router.start()
        log.info("listening as %s on %s:%d", self.settings.ae_title, where[0], self.port)
        return self

    def stop(self) -> None:
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
