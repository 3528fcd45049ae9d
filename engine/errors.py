"""Named errors. Every message is one line a user can act on; the dashboard shows it as is."""

import errno
import re

__all__ = [
    "EngineError",
    "UnreadableStudy",
    "UnsupportedFormat",
    "UnsupportedTransferSyntax",
    "TruncatedPixelData",
    "TooLarge",
    "UnsafeArchive",
    "NotAnImage",
    "UnknownCase",
    "FrameOutOfRange",
    "UnknownModel",
    "UnknownTask",
    "UnknownMethod",
    "UnknownDataset",
    "DatasetError",
    "InvalidOption",
    "InvalidReview",
    "ExportError",
    "NotAnalysed",
    "EmptyMask",
    "PermissionDenied",
    "LoginFailed",
    "AccountLocked",
    "SessionExpired",
    "WeakPassword",
    "UnknownUser",
    "ConfigError",
    "KeyUnavailable",
    "WeightsUnavailable",
    "BadCheckpoint",
    "ModelMismatch",
    "TrainingDiverged",
    "JobError",
    "DiskFull",
    "StudyConflict",
    "SendRefused",
    "SyntheticImage",
    "is_disk_full",
    "short_reason",
]


class EngineError(Exception):
    """Base class: an expected failure with a message meant for the user."""


class UnreadableStudy(EngineError):
    """The file is not a readable image or DICOM."""


class UnsupportedFormat(EngineError):
    """The file's content is none of DICOM, PNG, JPEG or ZIP."""


class UnsupportedTransferSyntax(EngineError):
    """The DICOM is encoded with a transfer syntax no installed decoder handles."""


class TruncatedPixelData(EngineError):
    """The DICOM header promises more pixel bytes than the file carries."""


class TooLarge(EngineError):
    """The file exceeds a configured limit (bytes, pixels or frames)."""


class UnsafeArchive(EngineError):
    """A zip member is unsafe (path traversal, bomb, nesting) and was refused."""


class SyntheticImage(EngineError):
    """The image carries RadLens' SYNTHETIC mark (pixels or metadata): a generated image is never a case."""


class NotAnImage(EngineError):
    """The DICOM holds no pixel data (e.g. a structured report or a DICOMDIR)."""


class UnknownCase(EngineError):
    """No case or image with that id exists in the store."""


class FrameOutOfRange(EngineError):
    """The requested frame index does not exist in the image."""


_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-f]+>")


def short_reason(exc: BaseException) -> str:
    """The first line of a third-party exception, for wrapping it into a one-line EngineError."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return _REPR.sub("", text).strip()[:160]  # "<_io.BytesIO object at 0x7f...>" means nothing to a user


class UnknownModel(EngineError):
    """No registered architecture or installed model has that name."""


class UnknownTask(EngineError):
    """No task (classification, segmentation, ...) has that name."""


class UnknownMethod(EngineError):
    """No registered explanation method has that name (or it cannot run the way asked)."""


class UnknownDataset(EngineError):
    """No dataset of the catalogue has that name."""


class DatasetError(EngineError):
    """A dataset is not on this machine, or is empty or malformed (a split, a column, a label missing)."""


class InvalidOption(EngineError):
    """A choice the model or view does not offer (a class, a layer, a colormap)."""


class InvalidReview(EngineError):
    """A review that cannot be recorded as given (unknown verdict, a correction without its label)."""


class ExportError(EngineError):
    """A result cannot be exported in the format asked for (e.g. DICOM SEG of a PNG upload)."""


class NotAnalysed(EngineError):
    """The model abstained on this image (outside its scope): there is no result to export or report."""


class EmptyMask(EngineError):
    """The model found no head in this image (the mask is empty)."""


class PermissionDenied(EngineError):
    """The acting user's role does not allow this action."""


class LoginFailed(EngineError):
    """Wrong user name or password (never says which), or a sign-in attempt came too soon after a failure."""


class AccountLocked(LoginFailed):
    """Too many failed sign-ins in a row: the account is locked for a while."""


class SessionExpired(EngineError):
    """The sign-in session ended (idle too long, too old, signed out or revoked): sign in again."""


class WeakPassword(EngineError):
    """A new password does not meet the policy (length, not the user name)."""


class UnknownUser(EngineError):
    """No account with that user name exists."""


class ConfigError(EngineError):
    """A setting (environment variable or secrets file) has a value RadLens cannot use."""


class KeyUnavailable(EngineError):
    """A secret key is malformed or its file cannot be read."""


class WeightsUnavailable(EngineError):
    """The weights file a model needs is not on this machine."""


class BadCheckpoint(EngineError):
    """A weights file or model card is missing, corrupt or of an unknown format version."""


class ModelMismatch(EngineError):
    """The model cannot be used on this input (e.g. a classifier asked to segment)."""


class TrainingDiverged(EngineError):
    """The training loss became NaN or infinite; training stopped and the last good checkpoint was kept."""


class JobError(EngineError):
    """A training job does not exist or cannot make that transition (e.g. resuming a finished job)."""


class PacsError(EngineError):
    """A PACS could not be reached or refused the request; the message says which and what to check."""


class UnknownNode(EngineError):
    """No PACS node of that name is configured."""


class NoStudyLink(EngineError):
    """The case did not come from a PACS, so there is no original study to send its results to."""


class BatchSourceError(EngineError):
    """A batch run's source cannot be listed (missing, unsupported, outside the allowed folders, changed)."""


class StudyConflict(EngineError):
    """An instance names a study RadLens already holds for another patient; it is refused, never appended."""


class SendRefused(EngineError):
    """Results were not sent: the destination is not the study's own, not secure enough, or the PACS does not
    hold the study under the same patient."""


class DiskFull(EngineError):
    """A write failed because the disk (or the user's quota) is full; nothing half-written was kept."""


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
