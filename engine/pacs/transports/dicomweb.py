"""DICOMweb: QIDO-RS (search), WADO-RS (retrieve, one instance at a time), STOW-RS (store), over HTTP(S)
with the node's credentials; no proxy, answers read under a cap."""

from __future__ import annotations

import contextlib
import email
import io
import json
import uuid

import requests
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from engine.config import Config
from engine.errors import PacsError, TooLarge, UnreadableStudy
from engine.pacs.nodes import PacsNode, credentials
from engine.pacs.transports.base import (
    MATCH_KEYWORDS,
    STUDY_FIELDS,
    OnInstance,
    StudyMatch,
    StudyQuery,
    Transport,
    as_int,
    uid,
)

__all__ = ["DicomWeb", "QIDO_MAX_BYTES", "instances"]

QIDO_MAX_BYTES = 32 * 2**20  # a QIDO-RS answer: ~100,000 instances' UIDs, or thousands of studies
_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'


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
    return StudyMatch(*(_text(item, k) for k in MATCH_KEYWORDS), as_int(_text(item, "NumberOfStudyRelatedSeries")),
                      as_int(_text(item, "NumberOfStudyRelatedInstances")))


def instances(config: Config, node: PacsNode, study_uid: str, series_uid: str = "") -> list[tuple[str, str]]:
    """(series UID, SOP instance UID) of every instance of the study (or of one of its series), via QIDO-RS."""
    path = f"studies/{uid(study_uid)}" + (f"/series/{uid(series_uid)}" if series_uid else "")
    rows = _qido(config, node, f"{path}/instances", {"includefield": "SeriesInstanceUID,SOPInstanceUID"})
    return [(_text(r, "SeriesInstanceUID"), _text(r, "SOPInstanceUID")) for r in rows]


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


class DicomWeb(Transport):
    name, title, needs = "dicomweb", "DICOMweb (QIDO-RS / WADO-RS / STOW-RS)", "a DICOMweb URL"

    def configured(self, node: PacsNode) -> bool:
        return node.web

    def echo(self, config: Config, node: PacsNode) -> None:
        _qido(config, node, "studies", {"limit": "1"})

    def find(self, config: Config, node: PacsNode, query: StudyQuery) -> list[StudyMatch]:
        params = {**query.keys(), "limit": str(query.limit), "includefield": ",".join(STUDY_FIELDS)}
        return [_match_of_json(item) for item in _qido(config, node, "studies", params)[:query.limit]]

    def patient_ids(self, config: Config, node: PacsNode, study_uid: str) -> set[str]:
        rows = _qido(config, node, "studies", {"StudyInstanceUID": uid(study_uid), "includefield": "PatientID",
                                               "limit": "10"})
        return {_text(r, "PatientID") for r in rows[:10]}

    def retrieve(self, config: Config, node: PacsNode, study_uid: str, series_uid: str,
                 on_instance: OnInstance) -> None:
        listed = instances(config, node, study_uid, series_uid)
        if not listed:
            raise PacsError(f"{node.name}: nothing to retrieve (no instances, or the PACS does not know the UID)")
        with _session(config, node) as session:
            for index, (series, sop) in enumerate(listed):
                url = f"{node.dicomweb_url}/studies/{uid(study_uid)}/series/{uid(series)}/instances/{uid(sop)}"
                try:
                    with _web_errors(node, f"a WADO-RS retrieve ({index} of {len(listed)} instances arrived)"):
                        data = _fetch_instance(config, node, session, url, f"instance {index + 1} of {len(listed)}")
                except (TooLarge, UnreadableStudy) as error:
                    data = error
                on_instance(index + 1, len(listed), data)

    def store(self, config: Config, node: PacsNode, objects: list[tuple[str, Dataset]]) -> None:
        """STOW-RS in one multipart request."""
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
            raise PacsError(f"{node.name}: the PACS refused {len(failed) or 'some'} of {len(objects)} object(s) "
                            "sent by STOW-RS")
