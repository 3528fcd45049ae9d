"""The link back to the original study, for results sent to the PACS a study came from.

RadLens stores de-identified copies only; a result pushed back must nevertheless land in the patient's real
study, under the patient's real identifiers. The few original values that needs (`LINK_KEYWORDS`) are taken
inside the decoder sandbox, at ingest, and only for studies that came from a PACS; they leave the sandbox
sealed (AES-256-GCM, a key derived from the de-identification key, bound to the stored file's hash), sit in
the store as ciphertext, and are opened only in memory by the push step (engine.pacs.push), to stamp the
objects it sends. Nobody holding the database and the files without the key can read them, and a sealed
link cannot be moved onto another image.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydicom.dataset import Dataset

from engine.errors import KeyUnavailable

__all__ = ["LINK_KEYWORDS", "capture", "seal", "unseal", "reidentify"]

# Patient and General Study modules (what a PACS files an object under), and the source image's own UIDs
# (what a derived object references).
LINK_KEYWORDS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
                 "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
                 "ReferringPhysicianName", "StudyDescription", "SeriesInstanceUID", "SOPInstanceUID",
                 "FrameOfReferenceUID")
_NONCE = 12
_VERSION = b"\x01"


def _link_key(deid_key: bytes) -> bytes:
    return hmac.new(deid_key, b"radlens original-study link v1", hashlib.sha256).digest()


def capture(ds: Dataset) -> dict[str, str]:
    """The original values of LINK_KEYWORDS that `ds` has (as text)."""
    return {k: str(ds.get(k)) for k in LINK_KEYWORDS if ds.get(k) not in (None, "")}


def seal(deid_key: bytes, sha256: str, values: dict[str, str]) -> bytes:
    """`values` encrypted and bound to the stored file's hash."""
    nonce = os.urandom(_NONCE)
    body = AESGCM(_link_key(deid_key)).encrypt(nonce, json.dumps(values).encode(), sha256.encode())
    return _VERSION + nonce + body


def unseal(deid_key: bytes, sha256: str, sealed: bytes) -> dict[str, str]:
    if not sealed.startswith(_VERSION):
        raise KeyUnavailable("the original-study link has an unknown format")
    nonce, body = sealed[1:1 + _NONCE], sealed[1 + _NONCE:]
    try:
        return json.loads(AESGCM(_link_key(deid_key)).decrypt(nonce, body, sha256.encode()))
    except InvalidTag:
        raise KeyUnavailable("the original-study link cannot be opened with this de-identification key (the key "
                             "changed, or the link belongs to another image)") from None


def reidentify(ds: Dataset, values: dict[str, str]) -> Dataset:
    """A copy of the de-identified `ds` carrying the original values again (in memory only)."""
    out = copy.deepcopy(ds)  # Dataset.copy() is shallow: the caller's dataset would be re-identified too
    for keyword, value in values.items():
        setattr(out, keyword, value)
    for keyword in ("PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
                    "LongitudinalTemporalInformationModified"):
        if keyword in out:
            delattr(out, keyword)
    if "SOPInstanceUID" in values and hasattr(out, "file_meta"):
        out.file_meta.MediaStorageSOPInstanceUID = values["SOPInstanceUID"]
    return out
