"""How RadLens talks to a PACS: one Transport per protocol family (DICOMweb, DIMSE) behind one interface
(engine.pacs.transports.base: echo, find, the Patient IDs of a study, retrieve, store), in one registry. A third
transport is one module here with a Transport subclass, and one entry in TRANSPORTS; the PACS page, the CLI's
--via, search, pull and the push take it from there.

What is retrieved arrives as the PACS's own bytes and goes through the normal ingest (decoded only in the
sandbox, de-identified before anything is written); this process never parses a retrieved instance itself.
"""

from __future__ import annotations

from engine.config import Config
from engine.errors import PacsError
from engine.pacs.nodes import PacsNode
from engine.pacs.transports.base import EchoReport, OnInstance, StudyMatch, StudyQuery, Transport
from engine.pacs.transports.dicomweb import QIDO_MAX_BYTES, DicomWeb
from engine.pacs.transports.dimse import Dimse

__all__ = ["Transport", "TRANSPORTS", "VIAS", "StudyQuery", "StudyMatch", "EchoReport", "OnInstance",
           "QIDO_MAX_BYTES", "transport", "choose_via", "echo", "find", "study_patient_ids"]

TRANSPORTS: dict[str, Transport] = {t.name: t for t in (DicomWeb(), Dimse())}  # the first configured is the default
VIAS = tuple(TRANSPORTS)


def transport(node: PacsNode, via: str | None = None) -> Transport:
    """The transport `via` names, or the node's default (the first it is configured for); PacsError when the
    node lacks what it needs."""
    if via is None:
        default = next((t for t in TRANSPORTS.values() if t.configured(node)), None)
        if default is None:
            raise PacsError(f"{node.name} has no way to be reached configured (a DICOMweb URL, or an AE title, "
                            "host and port)")
        return default
    if via not in TRANSPORTS:
        raise PacsError(f"unknown way to reach a PACS {via!r}: use one of {', '.join(VIAS)}")
    if not TRANSPORTS[via].configured(node):
        raise PacsError(f"{node.name} has no {TRANSPORTS[via].needs} configured")
    return TRANSPORTS[via]


def choose_via(node: PacsNode, via: str | None) -> str:
    return transport(node, via).name


def echo(config: Config, node: PacsNode) -> EchoReport:
    """Try every way the node is configured for; each says "ok" or what is wrong."""
    results = {}
    for t in TRANSPORTS.values():
        if t.configured(node):
            try:
                t.echo(config, node)
                results[t.name] = "ok"
            except PacsError as error:
                results[t.name] = str(error)
    return EchoReport(node.name, results)


def find(config: Config, node: PacsNode, query: StudyQuery, via: str | None = None) -> list[StudyMatch]:
    """Studies matching `query` (PHI: for display only)."""
    return transport(node, via).find(config, node, query)


def study_patient_ids(config: Config, node: PacsNode, study_uid: str, via: str | None = None) -> set[str]:
    """The Patient IDs the node files this study under (empty: the node does not hold it). PHI: compared,
    never stored or logged."""
    return transport(node, via).patient_ids(config, node, study_uid)
