"""Talking to a PACS: echo, find and retrieve, over DICOMweb (QIDO-RS / WADO-RS) or DIMSE (C-ECHO, C-FIND,
C-GET), with every failure turned into one plain sentence (refused, timeout, wrong AE title, 401).

Query results name patients: they are returned to the caller to show and never stored or logged. What is
retrieved arrives as the PACS's own bytes and goes through the normal ingest (decoded only in the sandbox,
de-identified before anything is written); this process never parses a retrieved instance itself.
"""

from __future__ import annotations

import contextlib
import email
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from engine.config import Config
from engine.errors import EngineError, PacsError, TooLarge, UnreadableStudy
from engine.pacs.nodes import PacsNode, credentials
from engine.pacs.tls import client_tls

__all__ = ["StudyMatch", "StudyQuery", "EchoReport", "echo", "find", "instances", "fetch_dicomweb", "fetch_cget",
           "VIAS", "choose_via", "received_bytes", "count_instances", "store_dicomweb", "store_cstore", "STORERS",
           "study_patient_ids"]

VIAS = ("dicomweb", "dimse")  # how a node is asked: DICOMweb (QIDO/WADO) or DIMSE (C-FIND/C-GET)
QIDO_MAX_BYTES = 32 * 2**20  # a QIDO-RS answer: ~100,000 instances' UIDs, or thousands of studies
_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_STUDY_FIELDS = ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "StudyTime", "AccessionNumber",
               "StudyDescription", "ModalitiesInStudy", "StudyInstanceUID", "NumberOfStudyRelatedSeries",
               "NumberOfStudyRelatedInstances")


@dataclass(frozen=True)
class StudyQuery:
    """Search keys; empty ones are left out. Dates are YYYYMMDD; a name may end in '*'."""

    date_from: str = ""
    date_to: str = ""
    modality: str = ""
    accession: str = ""
    patient_id: str = ""
    patient_name: str = ""
    limit: int = 100

    def keys(self) -> dict[str, str]:
        dates = f"{self.date_from}-{self.date_to}" if self.date_from or self.date_to else ""
        for value in (self.date_from, self.date_to):
            if value and not (len(value) == 8 and value.isdigit()):
                raise PacsError(f"dates are YYYYMMDD (got {value[:20]!r})")
        keys = {"StudyDate": dates, "ModalitiesInStudy": self.modality.upper(), "AccessionNumber": self.accession,
                "PatientID": self.patient_id, "PatientName": self.patient_name}
        return {k: v.strip() for k, v in keys.items() if v and v.strip()}


@dataclass(frozen=True)
class StudyMatch:
    """One study a PACS answered with. Holds PHI: shown to the user who asked, never stored."""

    study_uid: str
    patient_name: str = ""
    patient_id: str = ""
    study_date: str = ""
    accession: str = ""
    description: str = ""
    modalities: str = ""
    series: int | None = None
    instances: int | None = None


@dataclass(frozen=True)
class EchoReport:
    node: str
    results: dict[str, str] = field(default_factory=dict)  # "dimse" / "dicomweb" -> "ok" or the reason

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(v == "ok" for v in self.results.values())


# --- DICOMweb ---------------------------------------------------------------------------------------------


def _session(config: Config, node: PacsNode) -> requests.Session:
    session = requests.Session()
    if creds := credentials(config, node.name):
        session.auth = (creds.username, creds.password)
    session.trust_env = False  # a proxy variable must not route PHI through someone else's machine
    return session


@contextlib.contextmanager
def _web_errors(node: PacsNode, what: str):
    """requests' failures as one sentence naming the node and what to check."""
    try:
        yield
    except requests.exceptions.ConnectTimeout:
        raise PacsError(f"{node.name}: no answer from {node.dicomweb_url} ({what}): timed out; check the host, "
                        "the port and any firewall") from None
    except requests.exceptions.ReadTimeout:
        raise PacsError(f"{node.name}: {node.dicomweb_url} stopped answering during {what} (timed out)") from None
    except requests.exceptions.ConnectionError as exc:
        text = str(exc)
        reason = "connection refused (is the PACS running, is the port right?)" if "refused" in text.lower() \
            else "the connection failed or was cut"
        raise PacsError(f"{node.name}: {what} at {node.dicomweb_url}: {reason}") from None
    except requests.exceptions.RequestException as exc:
        raise PacsError(f"{node.name}: {what} failed: {type(exc).__name__}") from None


def _check_status(node: PacsNode, response: requests.Response, what: str) -> None:
    if response.status_code == 401:
        raise PacsError(f"{node.name}: the PACS refused the credentials (HTTP 401) for {what}; set them with "
                        f"`python -m engine pacs add {node.name} ... --username U --password-stdin` or "
                        f"RADLENS_PACS_{node.name.upper().replace('-', '_')}_USERNAME / _PASSWORD")
    if response.status_code == 403:
        raise PacsError(f"{node.name}: the PACS does not allow this account to do {what} (HTTP 403)")
    if response.status_code == 404:
        raise PacsError(f"{node.name}: {what}: not found (HTTP 404); check the DICOMweb URL or the UID")
    if response.status_code >= 400:
        raise PacsError(f"{node.name}: {what} failed with HTTP {response.status_code}")


def _qido(config: Config, node: PacsNode, path: str, params: dict) -> list[dict]:
    """A QIDO-RS answer, read under QIDO_MAX_BYTES (a PACS, or something posing as one, may send gigabytes)."""
    with _web_errors(node, "a QIDO-RS search"), _session(config, node) as session:
        with session.get(f"{node.dicomweb_url}/{path}", params=params, timeout=config.dicom.timeout_seconds,
                         headers={"Accept": "application/dicom+json"}, stream=True) as response:
            _check_status(node, response, "a QIDO-RS search")
            try:
                body = _read_capped(response, QIDO_MAX_BYTES, "the PACS's answer", "a fixed cap")
            except TooLarge as error:
                raise PacsError(f"{node.name}: {error}; narrow the search") from None
    try:
        rows = json.loads(body) if body.strip() else []
    except ValueError:
        raise PacsError(f"{node.name}: the QIDO-RS answer is not DICOM JSON") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise PacsError(f"{node.name}: the QIDO-RS answer is not a list of DICOM JSON objects")
    return rows


def _text(item: dict, keyword: str) -> str:
    element = item.get(f"{tag_for_keyword(keyword):08X}", {})
    values = element.get("Value", [])
    if not values:
        return ""
    if isinstance(values[0], dict):  # a person name
        return "\\".join(v.get("Alphabetic", "") for v in values)
    return "\\".join(str(v) for v in values)


def _match_of_json(item: dict) -> StudyMatch:
    return StudyMatch(*(_text(item, k) for k in _MATCH_KEYWORDS), _int(_text(item, "NumberOfStudyRelatedSeries")),
                      _int(_text(item, "NumberOfStudyRelatedInstances")))


def _find_web(config: Config, node: PacsNode, query: StudyQuery) -> list[StudyMatch]:
    params = {**query.keys(), "limit": str(query.limit), "includefield": ",".join(_STUDY_FIELDS)}
    return [_match_of_json(item) for item in _qido(config, node, "studies", params)[:query.limit]]  # if it ignores it


def instances(config: Config, node: PacsNode, study_uid: str, series_uid: str = "") -> list[tuple[str, str]]:
    """(series UID, SOP instance UID) of every instance of the study (or of one of its series), via QIDO-RS."""
    path = f"studies/{_uid(study_uid)}" + (f"/series/{_uid(series_uid)}" if series_uid else "")
    rows = _qido(config, node, f"{path}/instances", {"includefield": "SeriesInstanceUID,SOPInstanceUID"})
    return [(_text(r, "SeriesInstanceUID"), _text(r, "SOPInstanceUID")) for r in rows]


def _uid(text: str) -> str:
    text = (text or "").strip()
    if not text or len(text) > 64 or any(c not in "0123456789." for c in text):
        raise PacsError(f"not a DICOM UID: {text[:70]!r}")
    return text


def _read_capped(response: requests.Response, limit: int, what: str, setting: str = "RADLENS_MAX_UPLOAD_MB") -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_content(1 << 20):
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"{what} is larger than {limit // 2**20:,} MiB ({setting}); not retrieved")
        chunks.append(chunk)
    return b"".join(chunks)


def _parts(content_type: str, body: bytes) -> list[bytes]:
    """The parts of a multipart/related body (the standard library's MIME parser, no DICOM parsing)."""
    message = email.message_from_bytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    if not message.is_multipart():
        return [body]
    return [part.get_payload(decode=True) or b"" for part in message.get_payload()]


def _fetch_instance(config: Config, node: PacsNode, session: requests.Session, url: str, what: str) -> bytes:
    """One instance's bytes through WADO-RS. TooLarge / UnreadableStudy: this instance fails alone;
    PacsError: the PACS went away (the retrieve ends)."""
    with session.get(url, headers={"Accept": _DICOM}, stream=True, timeout=config.dicom.timeout_seconds) as response:
        _check_status(node, response, "a WADO-RS retrieve")
        parts = _parts(response.headers.get("Content-Type", ""),
                       _read_capped(response, config.limits.max_upload_bytes, what))
    if len(parts) != 1:
        raise UnreadableStudy(f"{what}: the PACS sent {len(parts)} parts for one instance")
    return parts[0]


def fetch_dicomweb(config: Config, node: PacsNode, study_uid: str,
                   series_uid: str = "") -> Iterator[tuple[int, int, bytes | EngineError]]:
    """(index, total, the instance's bytes or why it could not be fetched), one instance at a time through
    WADO-RS, of the study or one of its series. A PACS that stops answering ends the iteration with a
    PacsError after what already arrived."""
    listed = instances(config, node, study_uid, series_uid)
    if not listed:
        raise PacsError(f"{node.name}: nothing to retrieve (no instances, or the PACS does not know the UID)")
    with _session(config, node) as session:
        for index, (series, sop) in enumerate(listed):
            url = f"{node.dicomweb_url}/studies/{_uid(study_uid)}/series/{_uid(series)}/instances/{_uid(sop)}"
            try:
                with _web_errors(node, f"a WADO-RS retrieve ({index} of {len(listed)} instances arrived)"):
                    data = _fetch_instance(config, node, session, url, f"instance {index + 1} of {len(listed)}")
            except (TooLarge, UnreadableStudy) as error:
                data = error
            yield index, len(listed), data


# --- DIMSE ------------------------------------------------------------------------------------------------


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


def _echo_dimse(config: Config, node: PacsNode) -> None:
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


def _echo_web(config: Config, node: PacsNode) -> None:
    _qido(config, node, "studies", {"limit": "1"})


def echo(config: Config, node: PacsNode) -> EchoReport:
    """Try every way the node is configured for; each says "ok" or what is wrong."""
    results = {}
    for via, configured, check in (("dimse", node.dimse, _echo_dimse), ("dicomweb", node.web, _echo_web)):
        if configured:
            try:
                check(config, node)
                results[via] = "ok"
            except PacsError as error:
                results[via] = str(error)
    return EchoReport(node.name, results)


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


def _find_dimse(config: Config, node: PacsNode, query: StudyQuery) -> list[StudyMatch]:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    keys = query.keys()
    for keyword in _STUDY_FIELDS:
        setattr(identifier, keyword, keys.get(keyword, ""))
    matches = []
    for found in _c_find(config, node, identifier):
        matches.append(StudyMatch(*(_joined(found.get(k)) for k in _MATCH_KEYWORDS),
                                  _int(found.get("NumberOfStudyRelatedSeries")),
                                  _int(found.get("NumberOfStudyRelatedInstances"))))
        if len(matches) >= query.limit:
            break
    return matches


def count_instances(config: Config, node: PacsNode, study_uid: str, series_uid: str = "") -> int | None:
    """How many instances the study (or series) has, by C-FIND; None when the PACS does not say."""
    identifier = Dataset()
    identifier.StudyInstanceUID = _uid(study_uid)
    if series_uid:
        identifier.QueryRetrieveLevel, identifier.SeriesInstanceUID = "SERIES", _uid(series_uid)
        identifier.NumberOfSeriesRelatedInstances = ""
    else:
        identifier.QueryRetrieveLevel, identifier.NumberOfStudyRelatedInstances = "STUDY", ""
    for found in _c_find(config, node, identifier):
        return _int(found.get("NumberOfSeriesRelatedInstances" if series_uid else "NumberOfStudyRelatedInstances"))
    return None


_MATCH_KEYWORDS = ("StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "AccessionNumber", "StudyDescription",
                   "ModalitiesInStudy")


def _joined(value) -> str:
    if value is None:
        return ""
    return "\\".join(str(v) for v in value) if isinstance(value, MultiValue | list) else str(value)


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def study_patient_ids(config: Config, node: PacsNode, study_uid: str, via: str | None = None) -> set[str]:
    """The Patient IDs the node files this study under (empty: the node does not hold it). PHI: compared,
    never stored or logged."""
    if choose_via(node, via) == "dicomweb":
        rows = _qido(config, node, "studies", {"StudyInstanceUID": _uid(study_uid), "includefield": "PatientID",
                                               "limit": "10"})
        return {_text(r, "PatientID") for r in rows[:10]}
    identifier = Dataset()
    identifier.QueryRetrieveLevel, identifier.StudyInstanceUID, identifier.PatientID = "STUDY", _uid(study_uid), ""
    found = []
    for match in _c_find(config, node, identifier):
        found.append(_joined(match.get("PatientID")))
        if len(found) >= 10:
            break
    return set(found)


_FINDERS: dict[str, Callable[[Config, PacsNode, StudyQuery], list[StudyMatch]]] = {
    "dicomweb": _find_web, "dimse": _find_dimse}


def choose_via(node: PacsNode, via: str | None) -> str:
    """`via`, or the node's default (DICOMweb when it has a URL); PacsError when the node lacks it."""
    via = via or ("dicomweb" if node.web else "dimse")
    if via not in VIAS:
        raise PacsError(f"unknown way to reach a PACS {via!r}: use one of {', '.join(VIAS)}")
    if (via == "dicomweb" and not node.web) or (via == "dimse" and not node.dimse):
        raise PacsError(f"{node.name} has no {'DICOMweb URL' if via == 'dicomweb' else 'AE title, host and port'} "
                        "configured")
    return via


def find(config: Config, node: PacsNode, query: StudyQuery, via: str | None = None) -> list[StudyMatch]:
    """Studies matching `query` (PHI: for display only)."""
    return _FINDERS[choose_via(node, via)](config, node, query)


def received_bytes(event) -> bytes:
    """A C-STORE request's dataset as a DICOM file's bytes, without decoding it (spooled to a file when
    pynetdicom's STORE_RECV_CHUNKED_DATASET is on, as in the listener; in memory otherwise)."""
    try:
        path = event.dataset_path
    except AttributeError:
        path = None
    return Path(path).read_bytes() if path else event.encoded_dataset(include_meta=True)


def fetch_cget(config: Config, node: PacsNode, study_uid: str, on_instance: Callable[[bytes], tuple[int, str]],
               series_uid: str = "") -> tuple[int, int]:
    """C-GET the study (or one of its series); every instance the PACS sends is handed to
    `on_instance(bytes)`, which returns the C-STORE status to answer (0x0000 or a failure with its one-line
    comment). Returns (instances received,
    sub-operations the PACS reports failed). A PACS that goes away mid-retrieve raises PacsError after what
    already arrived."""
    from pynetdicom import build_role, evt
    from pynetdicom.presentation import StoragePresentationContexts
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GetModel

    ae = _ae(config)
    ae.add_requested_context(GetModel)
    contexts = StoragePresentationContexts[:127]  # 128 presentation contexts at most, one is the C-GET's
    for context in contexts:
        ae.add_requested_context(context.abstract_syntax)
    roles = [build_role(c.abstract_syntax, scp_role=True) for c in contexts]
    received, lock = [0], threading.Lock()

    def store(event) -> Dataset | int:
        status, comment = on_instance(received_bytes(event))
        with lock:
            received[0] += 1
        if status == 0:
            return 0x0000
        answer = Dataset()
        answer.Status, answer.ErrorComment = status, comment[:64]
        return answer

    identifier = Dataset()
    identifier.QueryRetrieveLevel, identifier.StudyInstanceUID = "STUDY", _uid(study_uid)
    if series_uid:
        identifier.QueryRetrieveLevel, identifier.SeriesInstanceUID = "SERIES", _uid(series_uid)
    assoc = _associate(config, node, ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, store)])
    failed, final = 0, None
    try:
        for status, _ in assoc.send_c_get(identifier, GetModel):
            if not status:
                raise PacsError(f"{node.name}: the PACS stopped answering during the C-GET "
                                f"({received[0]} instances arrived)")
            final = status
            failed = int(status.get("NumberOfFailedSuboperations", failed) or 0)
    finally:
        if assoc.is_established:
            assoc.release()
    if final is None or final.Status not in (0x0000, 0xB000, 0xFF00):
        code = f"0x{final.Status:04X}" if final is not None else "none"
        raise PacsError(f"{node.name}: the C-GET ended with status {code} after {received[0]} instances")
    return received[0], failed


def store_dicomweb(config: Config, node: PacsNode, objects: list[tuple[str, Dataset]]) -> None:
    """STOW-RS the datasets (name, dataset) in one multipart request; every one must be stored."""
    import io
    import uuid

    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for _, ds in objects:
        body.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        ds.save_as(body, enforce_file_format=True)
        body.write(b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
               "Accept": "application/dicom+json"}
    with _web_errors(node, "a STOW-RS store"), _session(config, node) as session:
        response = session.post(f"{node.dicomweb_url}/studies", data=body.getvalue(), headers=headers,
                                timeout=config.dicom.timeout_seconds)
        _check_status(node, response, "a STOW-RS store")
        answer = response.json() if response.content else {}
    failed = (answer.get("00081198") or {}).get("Value") or []  # FailedSOPSequence
    if failed or response.status_code == 202:
        raise PacsError(f"{node.name}: the PACS refused {len(failed) or 'some'} of {len(objects)} object(s) sent "
                        "by STOW-RS")


def store_cstore(config: Config, node: PacsNode, objects: list[tuple[str, Dataset]]) -> None:
    """C-STORE the datasets over one association; every one must be answered 0x0000 (or a warning)."""
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


STORERS: dict[str, Callable[[Config, PacsNode, list[tuple[str, Dataset]]], None]] = {
    "dicomweb": store_dicomweb, "dimse": store_cstore}
