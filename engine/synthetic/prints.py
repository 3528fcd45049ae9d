"""The register of generated images' likeness prints (engine.synthetic.mark.likeness): every image a generator makes
for a person (the gallery shown on the page, every export) is registered when it is made, and ingest refuses
an upload that looks like one of them (flipped, inverted, resized, its mark cropped or painted over). A print is
48 x 48 numbers of a generated image, never of a patient's."""

from __future__ import annotations

import threading

import numpy as np

from engine.store import Store, utc_now
from engine.synthetic.mark import LIKENESS_REFUSE, likeness, thumbnail

__all__ = ["register", "closest", "is_synthetic"]

_CACHE: dict[str, tuple[int, np.ndarray]] = {}
_LOCK = threading.Lock()


def register(db, generator: str, label: str, seed: int, images: np.ndarray) -> None:
    """Record the prints of `images` (n, H, W) inside the caller's write transaction."""
    rows = []
    for index, image in enumerate(images):
        upright = likeness(thumbnail(image))[0]
        peak = max(float(np.abs(upright).max()), 1e-6)  # stored as int8, scaled to its largest entry: 2.3 KB
        rows.append({"generator": generator, "label": label, "seed": seed, "idx": index, "created_at": utc_now(),
                     "print": np.round(upright / peak * 127).astype(np.int8).tobytes()})
    db["synthetic_prints"].insert_all(rows)


def _prints(store: Store) -> np.ndarray:
    """Every registered print as rows of unit vectors (cached per database until a print is added)."""
    with store.read() as db:
        count = db.execute("SELECT count(*) FROM synthetic_prints").fetchone()[0]
        with _LOCK:
            cached = _CACHE.get(str(store.path))
            if cached and cached[0] == count:
                return cached[1]
        blobs = [r[0] for r in db.execute("SELECT print FROM synthetic_prints ORDER BY id")]
    if not blobs:
        return np.zeros((0, 1), np.float32)
    matrix = np.frombuffer(b"".join(blobs), np.int8).reshape(len(blobs), -1).astype(np.float32)
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-6)
    with _LOCK:
        _CACHE[str(store.path)] = (count, matrix)
    return matrix


def closest(store: Store, thumb: np.ndarray) -> float:
    """The highest correlation (either polarity, any flip or rotation) between an image's thumbnail (64 x 64, or
    its 4,096 values flat) and a registered print."""
    thumb = np.asarray(thumb, np.float32).reshape(64, 64)
    prints = _prints(store)
    if not len(prints):
        return 0.0
    return float(np.abs(likeness(thumb) @ prints.T).max())


def is_synthetic(store: Store, thumb: np.ndarray) -> bool:
    return closest(store, thumb) >= LIKENESS_REFUSE
