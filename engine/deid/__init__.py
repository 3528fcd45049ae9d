"""De-identification: the profile applied to every dataset before anything is written (profile.py), the
allow-listed header fields the store keeps (fields.py), the imaging vocabulary free text is cut down to
(vocabulary.py), and the sealed link to an original study that lets results go back to it (link.py)."""

from engine.deid.fields import fields_of
from engine.deid.link import capture, reidentify, seal, unseal
from engine.deid.profile import deidentify

__all__ = ["deidentify", "fields_of", "capture", "seal", "unseal", "reidentify"]
