"""DIMSE: C-ECHO, C-FIND (search), C-GET (retrieve: the PACS sends each instance back over the same
association), C-STORE (store), with pynetdicom; DICOM TLS when the node asks for it (engine.pacs.tls)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from pydicom.dataset import Dataset

from engine.config import Config
from engine.errors import PacsError
from engine.pacs.nodes import PacsNode
from engine.pacs.tls import client_tls
from engine.pacs.transports import base
from engine.pacs.transports.base import OnInstance, StudyMatch, StudyQuery, as_int, joined, uid

__all__ = ["Dimse", "received_bytes", "count_instances"]


def _reachable(config: Config, node: PacsNode) -> None:
    """A TCP connection first, so that 'refused' and 'timed out' are told apart from a DICOM refusal."""
    try:
        socket.create_connection((node.host, node.port), timeout=min(config.dicom.timeout_seconds, 10)).close()
    except ConnectionRefusedError:
        raise PacsError(f"{node.name}: connection refused at {node.host}:{node.port} (is the PACS running, is "
                        "the port right?)") from None
    except TimeoutError:
        raise PacsError(f"{node.name}: no answer from {node.host}:{node.port} (timed out; check the host, the "
                        "port and any firewall)") from None
    except OSError as exc:
        raise PacsError(f"{node.name}: cannot reach {node.host}:{node.port} ({exc.strerror or exc})") from None


def _ae(config: Config):
    from pynetdicom import AE

    ae = AE(ae_title=config.dicom.ae_title)
    timeout = config.dicom.timeout_seconds
    ae.acse_timeout, ae.dimse_timeout, ae.network_timeout, ae.connection_timeout = timeout, timeout, timeout, timeout
    return ae


def _associate(config: Config, node: PacsNode, ae, **kwargs):
    _reachable(config, node)
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title, tls_args=client_tls(config.dicom, node),
                         **kwargs)
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        raise PacsError(f"{node.name}: the PACS rejected the association: check that its AE title is "
                        f"{node.ae_title!r} and that it knows RadLens as {config.dicom.ae_title!r} "
                        f"(RADLENS_AE_TITLE) at this machine's address")
    raise PacsError(f"{node.name}: the association with {node.host}:{node.port} was aborted or timed out")


def _c_find(config: Config, node: PacsNode, identifier: Dataset) -> Iterator[Dataset]:
    """The identifiers a C-FIND (study root) answers with; stop iterating to stop early."""
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FindModel

    ae = _ae(config)
    ae.add_requested_context(FindModel)
    assoc = _associate(config, node, ae)
    try:
        for status, found in assoc.send_c_find(identifier, FindModel):
            if not status:
                raise PacsError(f"{node.name}: the C-FIND timed out or the association was aborted")
            if status.Status in (0xFF00, 0xFF01) and found is not None:
                yield found
            elif status.Status not in (0x0000, 0xFF00, 0xFF01):
                raise PacsError(f"{node.name}: C-FIND failed with status 0x{status.Status:04X}")
    finally:
        assoc.release()


def count_instances(config: Config, node: PacsNode, study_uid: str, series_uid: str = "") -> int | None:
    """How many instances the study (or series) has, by C-FIND; None when the PACS does not say."""
    identifier = Dataset()
    identifier.StudyInstanceUID = uid(study_uid)
    if series_uid:
        identifier.QueryRetrieveLevel, identifier.SeriesInstanceUID = "SERIES", uid(series_uid)
        identifier.NumberOfSeriesRelatedInstances = ""
    else:
        identifier.QueryRetrieveLevel, identifier.NumberOfStudyRelatedInstances = "STUDY", ""
    for found in _c_find(config, node, identifier):
        return as_int(found.get("NumberOfSeriesRelatedInstances" if series_uid else "NumberOfStudyRelatedInstances"))
    return None


def received_bytes(event) -> bytes:
    """A C-STORE request's dataset as a DICOM file's bytes, without decoding it (spooled to a file when
    pynetdicom's STORE_RECV_CHUNKED_DATASET is on, as in the listener; in memory otherwise)."""
    try:
        path = event.dataset_path
    except AttributeError:
        path = None
    return Path(path).read_bytes() if path else event.encoded_dataset(include_meta=True)


class Dimse(base.Transport):
    name, title, needs = "dimse", "DIMSE (C-ECHO / C-FIND / C-GET / C-STORE)", "an AE title, host and port"

    def configured(self, node: PacsNode) -> bool:
        return node.dimse

    def echo(self, config: Config, node: PacsNode) -> None:
        from pynetdicom.sop_class import Verification

        ae = _ae(config)
        ae.add_requested_context(Verification)
        assoc = _associate(config, node, ae)
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        if not status or status.Status != 0:
            raise PacsError(f"{node.name}: C-ECHO got no success status")

    def find(self, config: Config, node: PacsNode, query: StudyQuery) -> list[StudyMatch]:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        keys = query.keys()
        for keyword in base.STUDY_FIELDS:
            setattr(identifier, keyword, keys.get(keyword, ""))
        matches = []
        for found in _c_find(config, node, identifier):
            matches.append(StudyMatch(*(joined(found.get(k)) for k in base.MATCH_KEYWORDS),
                                      as_int(found.get("NumberOfStudyRelatedSeries")),
                                      as_int(found.get("NumberOfStudyRelatedInstances"))))
            if len(matches) >= query.limit:
                break
        return matches

    def patient_ids(self, config: Config, node: PacsNode, study_uid: str) -> set[str]:
        identifier = Dataset()
        identifier.QueryRetrieveLevel, identifier.StudyInstanceUID, identifier.PatientID = "STUDY", uid(study_uid), ""
        found = []
        for match in _c_find(config, node, identifier):
            found.append(joined(match.get("PatientID")))
            if len(found) >= 10:
                break
        return set(found)

    def retrieve(self, config: Config, node: PacsNode, study_uid: str, series_uid: str,
                 on_instance: OnInstance) -> None:
        """C-GET; each instance's C-STORE is answered with what `on_instance` says (0x0000, or a failure with
        its one-line comment)."""
        from pynetdicom import build_role, evt
        from pynetdicom.presentation import StoragePresentationContexts
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GetModel

        total = count_instances(config, node, study_uid, series_uid)
        ae = _ae(config)
        ae.add_requested_context(GetModel)
        contexts = StoragePresentationContexts[:127]  # 128 presentation contexts at most, one is the C-GET's
        for context in contexts:
            ae.add_requested_context(context.abstract_syntax)
        roles = [build_role(c.abstract_syntax, scp_role=True) for c in contexts]
        received, lock = [0], threading.Lock()

        def store(event) -> Dataset | int:
            with lock:
                received[0] += 1
                position = received[0]
            status, comment = on_instance(position, total, received_bytes(event))
            if status == 0:
                return 0x0000
            answer = Dataset()
            answer.Status, answer.ErrorComment = status, comment[:64]
            return answer

        identifier = Dataset()
        identifier.QueryRetrieveLevel, identifier.StudyInstanceUID = "STUDY", uid(study_uid)
        if series_uid:
            identifier.QueryRetrieveLevel, identifier.SeriesInstanceUID = "SERIES", uid(series_uid)
        assoc = _associate(config, node, ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, store)])
        final = None
        try:
            for status, _ in assoc.send_c_get(identifier, GetModel):
                if not status:
                    raise PacsError(f"{node.name}: the PACS stopped answering during the C-GET "
                                    f"({received[0]} instances arrived)")
                final = status
        finally:
            if assoc.is_established:
                assoc.release()
        if final is None or final.Status not in (0x0000, 0xB000, 0xFF00):
            code = f"0x{final.Status:04X}" if final is not None else "none"
            raise PacsError(f"{node.name}: the C-GET ended with status {code} after {received[0]} instances")

    def store(self, config: Config, node: PacsNode, objects: list[tuple[str, Dataset]]) -> None:
        """C-STORE over one association; every one must be answered 0x0000 (or a warning)."""
        ae = _ae(config)
        for sop_class in sorted({str(ds.SOPClassUID) for _, ds in objects}):
            ae.add_requested_context(sop_class, [str(ds.file_meta.TransferSyntaxUID) for _, ds in objects
                                                 if str(ds.SOPClassUID) == sop_class][:1])
        assoc = _associate(config, node, ae)
        try:
            for name, ds in objects:
                status = assoc.send_c_store(ds)
                if not status:
                    raise PacsError(f"{node.name}: the PACS stopped answering while storing the {name}")
                if status.Status not in (0x0000, 0xB000, 0xB006, 0xB007):
                    raise PacsError(f"{node.name}: the PACS refused the {name} (C-STORE status 0x{status.Status:04X})")
        finally:
            if assoc.is_established:
                assoc.release()
