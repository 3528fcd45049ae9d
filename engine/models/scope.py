"""A model's scope: what it was trained on, and the rule that makes it abstain outside it.

A model answers only for images like its training data. The card's `scope` names the modalities and body
parts of that data (DICOM Modality and Body Part Examined); an image whose header says something else is
"not analysed", whatever the network would output. A header that says nothing (a PNG or JPEG is modality
OT with no body part) is not evidence either way, so such an image is left to the model's OOD gate, which
looks at the pixels. The model still runs on every image, so a researcher can ask for the raw output of
an abstained case on purpose (`case.raw_output`); the result everyone else sees is the abstention.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Scope", "Verdict", "ANALYSED", "NOT_ANALYSED", "UNKNOWN_MODALITY", "abstention_text", "shown_as_logged",
           "SCOPES", "DATASET_SCOPES"]

ANALYSED, NOT_ANALYSED = "analysed", "not_analysed"  # the `status` of a logged result
UNKNOWN_MODALITY = ("", "OT")  # what a file without a DICOM header is given at ingest


def abstention_text(reason: str) -> str:
    """What every surface (page, CLI, case log, exports) says instead of a result."""
    return f"not analysed: outside what this model was trained on ({reason})"


def shown_as_logged(row: dict, text_key: str, result_keys: tuple[str, ...]) -> dict:
    """A logged result row as the case history shows it: an abstention's `text_key` becomes the abstention
    text and its `result_keys` (probability, measurement) are blanked; status and reason columns go."""
    verdict = Verdict(row.pop("status"), row.pop("status_reason"))
    if verdict.analysed:
        return {**row, text_key: row.get(text_key, verdict.text)}
    return {**row, text_key: verdict.text, **dict.fromkeys(result_keys)}


@dataclass(frozen=True)
class Verdict:
    """Whether a model's output on one image is a result (analysed) or an abstention, and why."""

    status: str  # ANALYSED or NOT_ANALYSED
    reason: str = ""

    @property
    def analysed(self) -> bool:
        return self.status == ANALYSED

    @property
    def text(self) -> str:
        return "analysed" if self.analysed else abstention_text(self.reason)


@dataclass(frozen=True)
class Scope:
    modalities: tuple[str, ...]  # DICOM Modality values of the training data; empty: any
    body_parts: tuple[str, ...]  # Body Part Examined values; empty: any
    description: str  # in words, for the card

    def outside(self, modality: str, body_part: str) -> str | None:
        """Why an image with this header is outside the scope, or None when it is not known to be."""
        modality, body_part = (modality or "").strip().upper(), (body_part or "").strip().upper()
        if self.modalities and modality not in UNKNOWN_MODALITY and modality not in self.modalities:
            return f"modality {modality}; trained on {', '.join(self.modalities)}"
        if self.body_parts and body_part and body_part not in self.body_parts:
            return f"body part {body_part}; trained on {', '.join(self.body_parts)}"
        return None

    def judge(self, modality: str, body_part: str, ood_score: float | None = None,
              ood_threshold: float | None = None) -> Verdict:
        """The header rule first, then the OOD gate (when the model has one)."""
        reason = self.outside(modality, body_part)
        if reason is None and ood_score is not None and ood_threshold is not None and ood_score > ood_threshold:
            reason = f"the image is unlike the training images: OOD score {ood_score:.1f} > {ood_threshold:.1f}"
        return Verdict(NOT_ANALYSED, reason) if reason else Verdict(ANALYSED)

    def to_dict(self) -> dict:
        return {"modalities": list(self.modalities), "body_parts": list(self.body_parts),
                "description": self.description,
                "rule": "an image whose header names another modality or body part is not analysed; an image "
                        "without one (PNG, JPEG) is judged by the OOD gate where the model has one"}

    @classmethod
    def from_card(cls, card) -> Scope:
        """The card's scope; for a card written before scopes existed, its training dataset's; a model trained
        on a user's folder is limited by nothing but its OOD gate."""
        data = card.scope
        if data:
            return cls(tuple(data.get("modalities", ())), tuple(data.get("body_parts", ())),
                       data.get("description", ""))
        scope = DATASET_SCOPES.get((card.data or {}).get("dataset", ""))
        return SCOPES[scope] if scope else cls((), (), "not stated on the model card")


# The scopes of the catalogue's datasets, written into the card of every model trained on them (a user's
# folder has none: the OOD gate alone limits its models).
SCOPES: dict[str, Scope] = {
    "chest radiograph": Scope(("CR", "DX"), ("CHEST",), "frontal chest radiographs (CR/DX, chest) of children"),
    "fetal head ultrasound": Scope(("US",), ("HEAD", "FETUS", "ABDOMEN", "PELVIS", "UTERUS", "OBSTETRIC"),
                                   "2-D fetal head ultrasound in the transthalamic plane"),
    # A shape mask has no modality of its own: a SEG object or a header-less volume (npy, NIfTI) is left to the
    # OOD gate; a CT or MR volume (intensities, not a mask) is refused by the header rule.
    "adrenal shape mask": Scope(("SEG",), ("ADRENAL", "ABDOMEN"),
                                "binary shape masks (0/255 voxels) of one adrenal gland in a 64 mm cube"),
}
DATASET_SCOPES = {"cxr_pneumonia": "chest radiograph", "pneumoniamnist": "chest radiograph",
                  "hc18": "fetal head ultrasound", "adrenalmnist3d": "adrenal shape mask",
                  "adrenalmnist3d_64": "adrenal shape mask"}
