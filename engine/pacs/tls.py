"""DICOM TLS (the PS3.15 B.1 secure transport connection profile: TLS 1.2 or later, certificates both ways).

One certificate, key and CA file serve both directions (RADLENS_DICOM_TLS_CERT / _KEY / _CA):
- the listener: with all three set it speaks TLS only and requires the caller's certificate to be signed by
  the CA (mutual TLS); the caller's address must still be its node's;
- calls to a node marked `tls`: RadLens checks the node's certificate against the CA and the node's host name,
  and shows its own certificate.
An AE title is a name and an address can be taken over on a hostile network; a certificate is what proves a
node is the node."""

from __future__ import annotations

import ssl

from engine.config import DicomSettings
from engine.errors import PacsError
from engine.pacs.nodes import PacsNode

__all__ = ["server_context", "client_tls"]


def _check(settings: DicomSettings) -> bool:
    given = [bool(v) for v in (settings.tls_cert, settings.tls_key, settings.tls_ca)]
    if any(given) and not all(given):
        raise PacsError("DICOM TLS needs all three of RADLENS_DICOM_TLS_CERT, RADLENS_DICOM_TLS_KEY and "
                        "RADLENS_DICOM_TLS_CA")
    return all(given)


def _load(context: ssl.SSLContext, settings: DicomSettings) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
        context.load_verify_locations(settings.tls_ca)
    except (OSError, ssl.SSLError) as error:
        raise PacsError(f"the DICOM TLS certificate, key or CA cannot be read ({error})") from None
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def server_context(settings: DicomSettings) -> ssl.SSLContext | None:
    """The listener's TLS context (callers must show a certificate the CA signed), or None without TLS."""
    return _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), settings) if _check(settings) else None


def client_tls(settings: DicomSettings, node: PacsNode) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's `tls_args` for an association with `node` (None for a node without TLS)."""
    if not node.tls:
        return None
    if not _check(settings):
        raise PacsError(f"{node.name} is reached over DICOM TLS, but RADLENS_DICOM_TLS_CERT / _KEY / _CA are not set")
    context = _load(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), settings)  # checks the host name too
    return context, node.host
