"""Volumes and image sequences for the sequence models: a multi-frame DICOM (legacy or enhanced), a NumPy
`.npy` / `.npz` array, or a NIfTI-1 file (`.nii`, `.nii.gz`), read into (slices, rows, cols) uint8.

Axis conventions: a NumPy array is (slices, rows, cols), the MedMNIST layout; a NIfTI image's voxel axes
(i, j, k) become (k, j, i), so its third axis is the slice axis; a DICOM's frames are its slices, in file order.
The 8-bit view: DICOM frames as the viewer renders them, with one window for the whole volume; an array or a
NIfTI image scaled linearly from its minimum to its maximum (a 0/1 mask becomes 0/255). Only the voxels and the
voxel size are kept: NIfTI's free-text header fields (description, auxiliary file, intent name) may name a
patient and are never read. Every size is checked against the upload limits from the header, before any
voxel is decoded.
"""

from __future__ import annotations

import gzip
import io
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine.config import Limits
from engine.errors import TooLarge, UnreadableStudy, UnsupportedFormat, short_reason
from engine.io.display import render, to_gray_uint8
from engine.io.study import Study, Window

__all__ = ["Volume", "read_volume", "volume_format", "is_array_volume", "rendered_volume",
           "VOLUME_READERS"]

_NPY = b"\x93NUMPY"
_GZIP = b"\x1f\x8b"
_NIFTI1 = (b"n+1\x00", b"ni1\x00")  # bytes 344-347 of a NIfTI-1 header: single file, or a header of a pair


@dataclass(frozen=True, eq=False)
class Volume:
    voxels: np.ndarray  # (slices, rows, cols) uint8: what a sequence model reads
    spacing_mm: tuple[float, float, float] | None  # (slice, row, col); None: not stated
    source_format: str  # dicom, npy, npz or nifti
    modality: str = ""  # the DICOM header's, for the model's scope ("" for arrays and NIfTI)
    body_part: str = ""

    @property
    def n_slices(self) -> int:
        return int(self.voxels.shape[0])


def _check_size(shape: tuple[int, ...], limits: Limits) -> None:
    voxels = int(np.prod(shape, dtype=np.int64))
    if voxels > limits.max_pixels:
        raise TooLarge(f"a volume of {' x '.join(map(str, shape))} voxels exceeds the limit of "
                       f"{limits.max_pixels:,} (RADLENS_MAX_PIXELS)")


def _as_volume(array: np.ndarray, what: str) -> np.ndarray:
    """The 3-D array of `array` (singleton axes dropped), scaled to uint8."""
    array = np.squeeze(array)
    if array.ndim != 3 or min(array.shape) < 2:
        raise UnreadableStudy(f"{what} holds an array of shape {array.shape}; a volume needs three axes "
                              "(slices, rows, cols)")
    if array.dtype.kind not in "biuf":
        raise UnreadableStudy(f"{what} holds {array.dtype} values; a volume needs numbers")
    values = array.astype(np.float32)
    if not np.isfinite(values).all():
        raise UnreadableStudy(f"{what} holds NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _npy(data: bytes, limits: Limits) -> Volume:
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = header(stream)
        _check_size(shape, limits)
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UnreadableStudy(f"not a readable .npy array ({short_reason(exc)})") from None
    return Volume(_as_volume(array, "the .npy file"), None, "npy")


def _npz(data: bytes, limits: Limits) -> Volume:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [m for m in archive.infolist() if m.filename.endswith(".npy")]
            if len(members) != 1 or len(archive.infolist()) != 1:
                raise UnreadableStudy(f"a .npz volume holds exactly one array; this one holds "
                                      f"{len(archive.infolist())} file(s)")
            if members[0].file_size > limits.max_pixels * 8 + 4096:
                raise TooLarge(f"the array inside the .npz is {members[0].file_size / 2**20:,.0f} MiB, over the "
                               "upload limits (RADLENS_MAX_PIXELS)")
            inner = archive.read(members[0])
    except (zipfile.BadZipFile, OSError, zlib.error) as exc:
        raise UnreadableStudy(f"not a readable .npz archive ({short_reason(exc)})") from None
    return Volume(_npy(inner, limits).voxels, None, "npz")


def _gunzip(data: bytes, limits: Limits) -> bytes:
    """A gzip stream's content, refused once it grows past what the largest allowed volume needs."""
    cap = limits.max_pixels * 8 + 2**20
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            out = stream.read(cap + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise UnreadableStudy(f"not a readable gzip stream ({short_reason(exc)})") from None
    if len(out) > cap:
        raise TooLarge(f"the gzip stream unpacks to over {cap / 2**20:,.0f} MiB (a decompression bomb?)")
    return out


def _nifti(data: bytes, limits: Limits) -> Volume:
    import nibabel

    if data.startswith(_GZIP):
        data = _gunzip(data, limits)
    try:
        image = nibabel.Nifti1Image.from_bytes(data)
        shape = image.header.get_data_shape()
        _check_size(shape, limits)
        array = np.asanyarray(image.dataobj)
        zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    except (TooLarge, UnreadableStudy):
        raise
    except Exception as exc:  # nibabel raises HeaderDataError, ImageFileError, ValueError...
        raise UnreadableStudy(f"not a readable NIfTI-1 image ({short_reason(exc)})") from None
    voxels = _as_volume(array, "the NIfTI image")
    if array.ndim < 3:
        raise UnreadableStudy("the NIfTI image has fewer than three axes")
    spacing = (zooms[2], zooms[1], zooms[0]) if len(zooms) == 3 and all(z > 0 for z in zooms) else None
    return Volume(np.ascontiguousarray(voxels.transpose(2, 1, 0)), spacing, "nifti")


def _dicom(data: bytes, limits: Limits) -> Volume:
    from engine.io import read_study

    study = read_study(data, limits)
    if study.n_frames < 2:
        raise UnreadableStudy("a single-frame DICOM is one image, not a volume: send the series' slices "
                              "together (a zip or a folder), or a multi-frame object")
    voxels = rendered_volume([(study, frame) for frame in range(study.n_frames)])
    ds = study.dataset
    locations = [float(v) for v in getattr(ds, "SliceLocationVector", None) or []]
    steps = np.diff(locations) if len(locations) == study.n_frames else np.zeros(0)
    thickness = float(getattr(ds, "SpacingBetweenSlices", 0) or (np.median(np.abs(steps)) if len(steps) else 0)
                      or getattr(ds, "SliceThickness", 0) or 0)
    spacing = (thickness, study.spacing.row_mm, study.spacing.col_mm) \
        if thickness > 0 and study.spacing.known else None
    return Volume(voxels, spacing, "dicom", str(getattr(ds, "Modality", "") or ""),
                  str(getattr(ds, "BodyPartExamined", "") or ""))


def rendered_volume(frames: list[tuple[Study, int]]) -> np.ndarray:
    """(slices, rows, cols) uint8 of these (study, frame) pairs as the viewer shows them, with one window for
    all: the first file's own (window or VOI LUT), else the range of the whole volume (a window per slice
    would give every slice its own contrast, and an empty slice mid-grey)."""
    first = frames[0][0]
    window = None
    if not first.windows and "VOILUTSequence" not in first.voi and not first.is_color:
        low = min(float(s.frames[k].min()) for s, k in frames)
        high = max(float(s.frames[k].max()) for s, k in frames)
        window = Window((low + high) / 2, max(high - low, 1.0), "LINEAR_EXACT", "Volume range")
    return np.stack([to_gray_uint8(render(s, k, window).image) for s, k in frames])


VOLUME_READERS: dict[str, Callable[[bytes, Limits], Volume]] = {
    "dicom": _dicom, "npy": _npy, "npz": _npz, "nifti": _nifti,
}


def volume_format(data: bytes) -> str:
    """Which of VOLUME_READERS reads these bytes, by content (never by file name)."""
    from engine.io.sniff import detect_format

    if data.startswith(_NPY):
        return "npy"
    if data.startswith(_GZIP) or data[344:348] in _NIFTI1:
        return "nifti"
    try:
        fmt = detect_format(data)
    except UnsupportedFormat:
        fmt = ""
    if fmt == "zip":
        return "npz"
    if fmt == "dicom":
        return "dicom"
    raise UnsupportedFormat("not a volume: send a multi-frame DICOM, a NIfTI-1 (.nii, .nii.gz) or a NumPy "
                            "(.npy, .npz) file")


def read_volume(data: bytes, limits: Limits | None = None) -> Volume:
    """Decode one volume file; raises a named EngineError with a one-line reason."""
    limits = limits or Limits()
    limits.check_upload(len(data))
    return VOLUME_READERS[volume_format(data)](data, limits)


def is_array_volume(data: bytes) -> bool:
    """A NumPy array or a NIfTI image (plain or gzipped): a volume without a DICOM header."""
    return data.startswith((_NPY, _GZIP)) or data[344:348] in _NIFTI1
