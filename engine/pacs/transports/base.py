"""What every transport shares: the search keys, a study match, an echo report, the Transport interface, and
the small helpers both protocol families use. Query results name patients: they are returned to the caller to
show and never stored or logged."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from engine.config import Config
from engine.errors import EngineError, PacsError
from engine.pacs.nodes import PacsNode

__all__ = ["StudyQuery", "StudyMatch", "EchoReport", "Transport", "OnInstance", "uid", "as_int", "joined",
           "STUDY_FIELDS", "MATCH_KEYWORDS"]

STUDY_FIELDS = ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "StudyTime", "AccessionNumber",
                "StudyDescription", "ModalitiesInStudy", "StudyInstanceUID", "NumberOfStudyRelatedSeries",
                "NumberOfStudyRelatedInstances")
MATCH_KEYWORDS = ("StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "AccessionNumber", "StudyDescription",
                  "ModalitiesInStudy")


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


# (position from 1, how many the PACS says there are or None, the instance's bytes or why it could not be
# fetched) -> (the C-STORE status to answer, its comment)
OnInstance = Callable[[int, int | None, bytes | EngineError], tuple[int, str]]


class Transport(ABC):
    """One way of talking to a PACS. Every failure is one plain sentence (a PacsError) naming the node and what
    to check; an instance that cannot be fetched is handed to `on_instance` as its error, and the others go on."""

    name: str  # what --via and the node forms call it
    title: str  # what the pages show
    needs: str  # what a node must have configured for it, in words

    @abstractmethod
    def configured(self, node: PacsNode) -> bool: ...

    @abstractmethod
    def echo(self, config: Config, node: PacsNode) -> None:
        """Returns when the node answers; PacsError saying what is wrong otherwise."""

    @abstractmethod
    def find(self, config: Config, node: PacsNode, query: StudyQuery) -> list[StudyMatch]: ...

    @abstractmethod
    def patient_ids(self, config: Config, node: PacsNode, study_uid: str) -> set[str]:
        """The Patient IDs the node files this study under (empty: it does not hold it). Compared, never kept."""

    @abstractmethod
    def retrieve(self, config: Config, node: PacsNode, study_uid: str, series_uid: str,
                 on_instance: OnInstance) -> None:
        """Every instance of the study (or one series), one at a time, to `on_instance`. A PACS that goes away
        raises PacsError after what already arrived."""

    @abstractmethod
    def store(self, config: Config, node: PacsNode, objects: list[tuple[str, Dataset]]) -> None:
        """Store the datasets (name, dataset) on the node; every one must be accepted."""


def uid(text: str) -> str:
    text = (text or "").strip()
    if not text or len(text) > 64 or any(c not in "0123456789." for c in text):
        raise PacsError(f"not a DICOM UID: {text[:70]!r}")
    return text


def joined(value) -> str:
    if value is None:
        return ""
    return "\\".join(str(v) for v in value) if isinstance(value, MultiValue | list) else str(value)


def as_int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
