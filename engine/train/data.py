"""Training datasets, read from RADLENS_DATA_DIR (or a folder the user names), held in memory.

Every image goes through the same path as at inference time: read_study -> render (the viewer's 8-bit
image) -> luminance -> Preprocessing.resize_uint8. Only the random augmentation is training-specific.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

from engine.errors import EngineError
from engine.io import read_study
from engine.models.preprocess import Preprocessing, model_view

__all__ = ["ImageSet", "Splits", "DATASETS", "load_dataset", "gray_of_file", "augmentation", "SPLITS"]

SPLITS = ("train", "val", "test")


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, 1, S, S) float in [0, 1], before normalisation
    labels: torch.Tensor  # (N,) int64 class indices
    names: list[str]  # file name (or array index) of each image, for error analysis


@dataclass
class Splits:
    label_names: list[str]
    sets: dict[str, ImageSet]  # train / val / test
    description: str  # which data and which split, for the model card
    limitations: tuple[str, ...] = ()  # what the card must warn about

    def counts(self) -> dict[str, dict[str, int]]:
        return {split: {self.label_names[k]: v for k, v in sorted(Counter(s.labels.tolist()).items())}
                for split, s in self.sets.items()}


def gray_of_file(path: Path) -> np.ndarray:
    """The 8-bit grayscale image the viewer shows for a file (first frame)."""
    return model_view(read_study(Path(path).read_bytes()))


def _from_rows(rows: list[dict], root: Path, prep: Preprocessing, label_names: list[str],
               only: tuple[str, ...]) -> dict[str, ImageSet]:
    sets = {}
    for split in only:
        chosen = [r for r in rows if r["split"] == split]
        if not chosen:
            raise EngineError(f"the {split} split is empty")
        images = torch.stack([prep.resize_uint8(gray_of_file(root / r["path"])) for r in chosen])
        labels = torch.tensor([label_names.index(r["label"]) for r in chosen])
        sets[split] = ImageSet(images, labels, [r["path"] for r in chosen])
    return sets


_KERMANY_LIMITS = (
    "Pediatric patients (1-5 years) only: adult chest films were never seen in training.",
    "Single site (Guangzhou Women and Children's Medical Center), one labelling protocol.",
    "Normal vs pneumonia only; other findings (effusion, mass, devices) are out of scope.",
    "No official test images are in this copy: the held-out split is patient-grouped from the official "
    "train images, so it shares their acquisition and is easier than an external test set.",
    "Bacterial and viral pneumonia are pooled into one class.",
)


def _cxr_pneumonia(root: Path, prep: Preprocessing, only: tuple[str, ...]) -> Splits:
    with open(root / "manifest.csv", newline="") as f:
        rows = [{**r, "split": r["demo_split"]} for r in csv.DictReader(f)]
    names = ["normal", "pneumonia"]
    return Splits(names, _from_rows(rows, root, prep, names, only),
                  "cxr_pneumonia (Kermany et al. 2018, pediatric CXR, 1,564 of the official train images); "
                  "demo_split: patient-grouped 80/10/10, seed 2018", _KERMANY_LIMITS)


def _pneumoniamnist(root: Path, prep: Preprocessing, only: tuple[str, ...]) -> Splits:
    arrays = np.load(root / "pneumoniamnist.npz")
    sets = {}
    for split in only:
        images = arrays[f"{split}_images"]
        sets[split] = ImageSet(torch.stack([prep.resize_uint8(im) for im in images]),
                               torch.from_numpy(arrays[f"{split}_labels"].reshape(-1).astype(np.int64)),
                               [f"{split}[{i}]" for i in range(len(images))])
    return Splits(["normal", "pneumonia"], sets, "PneumoniaMNIST (MedMNIST v2) 28x28, official train/val/test split",
                  _KERMANY_LIMITS)


def _folder(root: Path, prep: Preprocessing, only: tuple[str, ...]) -> Splits:
    """The user's own data: root/manifest.csv (path,label,split) or root/<split>/<label>/<image>."""
    manifest = root / "manifest.csv"
    if manifest.is_file():
        with open(manifest, newline="") as f:
            rows = list(csv.DictReader(f))
        missing = {"path", "label", "split"} - set(rows[0] if rows else {})
        if missing:
            raise EngineError(f"{manifest} lacks column(s) {', '.join(sorted(missing))}")
    else:
        rows = [{"path": str(p.relative_to(root)), "label": p.parent.name, "split": p.parent.parent.name}
                for split in SPLITS for p in sorted((root / split).glob("*/*")) if p.is_file()]
    names = sorted({r["label"] for r in rows})  # alphabetical: the second label is the positive class
    if len(names) < 2:
        raise EngineError(f"{root}: need at least two labels, found {names or 'none'}")
    return Splits(names, _from_rows(rows, root, prep, names, only), f"folder {root}")


# name -> (loader, folder under RADLENS_DATA_DIR or None when --data-path names it)
DATASETS: dict[str, tuple[Callable[[Path, Preprocessing, tuple[str, ...]], Splits], str | None]] = {
    "cxr_pneumonia": (_cxr_pneumonia, "cxr_pneumonia"),
    "pneumoniamnist": (_pneumoniamnist, "pneumoniamnist"),
    "folder": (_folder, None),
}


def load_dataset(name: str, prep: Preprocessing, data_dir: Path | None, data_path: Path | None = None,
                 only: tuple[str, ...] = SPLITS) -> Splits:
    if name not in DATASETS:
        raise EngineError(f"Unknown dataset {name!r}. Available: {', '.join(DATASETS)}")
    loader, folder = DATASETS[name]
    root = data_path or (data_dir / folder if data_dir and folder else None)
    if root is None or not root.is_dir():
        raise EngineError(f"dataset {name!r} not found: set RADLENS_DATA_DIR (or --data-path for a folder)")
    return loader(root, prep, only)


def augmentation() -> v2.Transform:
    """Small pose and exposure changes a real chest film shows. No flips: a mirrored chest puts the
    heart on the right (dextrocardia), which changes what the image means."""
    return v2.Compose([
        v2.RandomAffine(degrees=7, translate=(0.05, 0.05), scale=(0.92, 1.08)),
        v2.ColorJitter(brightness=0.15, contrast=0.15),
    ])
