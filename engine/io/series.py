"""One volume from the single-frame DICOM slices of one series (a CT or MR series as a PACS or a zip sends it).

Order: along the slice normal (the cross product of Image Orientation (Patient)'s row and column directions)
by Image Position (Patient), the way DICOM viewers stack a series; without those, by Instance Number. What
cannot be one volume is refused with the reason: slices of more than one series, slices of different sizes or
orientations, two slices at one position or with one instance number (interleaved or repeated series), or a
missing slice (a gap in the positions over 1.5 times the usual spacing, or in the instance numbers).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.config import Limits
from engine.errors import TooLarge, UnreadableStudy
from engine.io.study import Study
from engine.io.volume import Volume, rendered_volume

__all__ = ["assemble_series", "slice_order"]

_GAP = 1.5  # a step this many times the median spacing means slices are missing


def _vector(ds, keyword: str, n: int) -> np.ndarray | None:
    value = getattr(ds, keyword, None)
    try:
        vector = np.array([float(v) for v in value], dtype=np.float64) if value is not None else None
    except (TypeError, ValueError):
        return None
    return vector if vector is not None and vector.shape == (n,) and np.isfinite(vector).all() else None


def slice_order(studies: Sequence[Study]) -> tuple[list[int], float | None]:
    """The indices of `studies` in slice order and the slice spacing in mm (None when ordered by Instance
    Number); raises UnreadableStudy when the slices are not one gap-free series."""
    headers = [s.dataset for s in studies]
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for ds in headers}
    if len(series) > 1:
        raise UnreadableStudy(f"the slices belong to {len(series)} series; send one series per volume")
    if len({s.shape for s in studies}) > 1:
        raise UnreadableStudy("the slices differ in size (rows x columns): they are not one volume")
    numbers = [getattr(ds, "InstanceNumber", None) for ds in headers]
    repeated = sorted({int(n) for n in numbers if n is not None and numbers.count(n) > 1})
    if repeated:
        raise UnreadableStudy(f"two slices share instance number {repeated[0]} (interleaved or repeated series); "
                              "send one series per volume")
    orientations = [_vector(ds, "ImageOrientationPatient", 6) for ds in headers]
    positions = [_vector(ds, "ImagePositionPatient", 3) for ds in headers]
    if all(o is not None for o in orientations) and all(p is not None for p in positions):
        if np.ptp(np.stack(orientations), axis=0).max() > 1e-3:
            raise UnreadableStudy("the slices have different orientations: they are not one volume")
        normal = np.cross(orientations[0][:3], orientations[0][3:])
        along = np.array([float(p @ normal) for p in positions])
        order = [int(i) for i in np.argsort(along, kind="stable")]
        steps = np.diff(along[order])
        if (steps < 1e-3).any():
            raise UnreadableStudy("two slices lie at the same position (interleaved or repeated series); send "
                                  "one series per volume")
        spacing = float(np.median(steps))
        if (steps > _GAP * spacing).any():
            k = int(np.argmax(steps))
            raise UnreadableStudy(f"a slice is missing between positions {along[order][k]:.1f} and "
                                  f"{along[order][k + 1]:.1f} mm (spacing {spacing:.2f} mm)")
        return order, spacing
    if any(n is None for n in numbers):
        raise UnreadableStudy("the slices carry neither Image Position (Patient) nor Instance Number: their "
                              "order is unknown")
    numbers = [int(n) for n in numbers]
    order = [int(i) for i in np.argsort(numbers, kind="stable")]
    ordered = [numbers[i] for i in order]
    if ordered[-1] - ordered[0] != len(ordered) - 1:
        raise UnreadableStudy(f"the instance numbers {ordered[0]}-{ordered[-1]} are not {len(ordered)} consecutive "
                              "slices: a slice is missing")
    return order, None


def assemble_series(studies: Sequence[Study], limits: Limits | None = None) -> Volume:
    """The slices (each a decoded single-frame DICOM) as one (slices, rows, cols) uint8 volume, rendered as
    the viewer shows them with one window for all (engine.io.volume.rendered_volume)."""
    limits = limits or Limits()
    if len(studies) < 2:
        raise UnreadableStudy("a series needs at least two slices to be a volume")
    if any(s.dataset is None or s.n_frames != 1 for s in studies):
        raise UnreadableStudy("a series is assembled from single-frame DICOM slices only")
    rows, cols = studies[0].shape
    if len(studies) * rows * cols > limits.max_pixels:
        raise TooLarge(f"{len(studies)} slices of {rows} x {cols} exceed the limit of "
                              f"{limits.max_pixels:,} voxels (RADLENS_MAX_PIXELS)")
    order, spacing = slice_order(studies)
    voxels = rendered_volume([(studies[i], 0) for i in order])
    first = studies[order[0]]
    in_plane = first.spacing
    mm = (spacing, in_plane.row_mm, in_plane.col_mm) if spacing and in_plane.known else None
    ds = first.dataset
    return Volume(voxels, mm, "dicom series", str(getattr(ds, "Modality", "") or ""),
                  str(getattr(ds, "BodyPartExamined", "") or ""))
