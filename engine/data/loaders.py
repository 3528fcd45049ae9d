"""Training datasets, read from RADLENS_DATA_DIR (or a folder the user names), held in memory.

Every image goes through the same path as at inference time: read_study -> render (the viewer's 8-bit
image) -> luminance -> Preprocessing.resize_uint8. Only the random augmentation is training-specific.
A classification set pairs images with labels; a segmentation set (MaskSet) pairs them with masks and
keeps the full-resolution masks and pixel sizes, since quality is measured at the image's own size.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from engine.errors import DatasetError, EngineError, UnknownDataset
from engine.io import read_study
from engine.io.volume import read_volume
from engine.models.preprocess import Preprocessing, model_view

__all__ = ["ImageSet", "MaskSet", "Splits", "Dataset", "DATASETS", "datasets", "load_dataset", "gray_of_file",
           "augmentation", "mask_augmentation", "VolumeShift", "SPLITS"]

SPLITS = ("train", "val", "test")


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, 1, S, S), or (N, 1, D, S, S) volumes, float in [0, 1], before normalisation
    labels: torch.Tensor  # (N,) int64 class indices
    names: list[str]  # file name (or array index) of each image, for error analysis
    groups: list[str] | None = None  # patient of each image, where known (cross-validation keeps one together)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> ImageSet:
        return ImageSet(self.images[idx], self.labels[idx], [self.names[i] for i in idx],
                        [self.groups[i] for i in idx] if self.groups else None)

    @staticmethod
    def concat(*parts: ImageSet) -> ImageSet:
        return ImageSet(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]),
                        [n for p in parts for n in p.names],
                        [g for p in parts for g in p.groups] if all(p.groups for p in parts) else None)

    def batch(self, idx: torch.Tensor, augment) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented images (still in [0, 1]) and their targets."""
        return torch.stack([augment(self.images[i]) for i in idx]).clamp_(0, 1), self.labels[idx]

    def summary(self, label_names: list[str]) -> dict[str, int]:
        return {label_names[k]: v for k, v in sorted(Counter(self.labels.tolist()).items())}


@dataclass
class MaskSet:
    images: torch.Tensor  # (N, 1, S, S) float in [0, 1]
    masks: torch.Tensor  # (N, 1, S, S) int64 in {0, 1}: the training target at the model's size
    names: list[str]
    full_masks: list[np.ndarray]  # (H, W) bool at the image's own size: what quality is measured on
    pixel_mm: np.ndarray  # (N,) mm per pixel of the image as stored
    reference_hc_mm: np.ndarray  # (N,) the dataset's head circumference, where it has one (else nan)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, idx: torch.Tensor, augment) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [augment(tv_tensors.Image(self.images[i]), tv_tensors.Mask(self.masks[i])) for i in idx]
        return (torch.stack([p[0] for p in pairs]).as_subclass(torch.Tensor).clamp_(0, 1),
                torch.stack([p[1] for p in pairs]).as_subclass(torch.Tensor))

    def summary(self, label_names: list[str]) -> dict[str, int]:
        return {"images": len(self)}


@dataclass
class Splits:
    label_names: list[str]
    sets: dict[str, ImageSet | MaskSet]  # train / val / test
    description: str  # which data and which split, for the model card
    limitations: tuple[str, ...] = ()  # what the card must warn about

    def counts(self) -> dict[str, dict[str, int]]:
        return {split: s.summary(self.label_names) for split, s in self.sets.items()}


def gray_of_file(path: Path) -> np.ndarray:
    """The 8-bit grayscale image the viewer shows for a file (first frame)."""
    return model_view(read_study(Path(path).read_bytes()))


def _from_rows(rows: list[dict], root: Path, prep: Preprocessing, label_names: list[str],
               only: tuple[str, ...]) -> dict[str, ImageSet]:
    sets = {}
    for split in only:
        chosen = [r for r in rows if r["split"] == split]
        if not chosen:
            raise DatasetError(f"the {split} split is empty: every dataset needs train, val and test images")
        images = torch.stack([prep.resize_uint8(gray_of_file(root / r["path"])) for r in chosen])
        labels = torch.tensor([label_names.index(r["label"]) for r in chosen])
        groups = [r["patient_id"] for r in chosen] if all(r.get("patient_id") for r in chosen) else None
        sets[split] = ImageSet(images, labels, [r["path"] for r in chosen], groups)
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


def _medmnist(file: str, label_names: list[str], description: str, limitations: tuple[str, ...]):
    """A loader of a MedMNIST v2 file (official train/val/test split): 2-D images or 3-D volumes."""

    def load(root: Path, prep: Preprocessing, only: tuple[str, ...]) -> Splits:
        with np.load(root / file) as arrays:
            sets = {split: ImageSet(torch.stack([prep.resize_uint8(im) for im in arrays[f"{split}_images"]]),
                                    torch.from_numpy(arrays[f"{split}_labels"].reshape(-1).astype(np.int64)),
                                    [f"{split}[{i}]" for i in range(len(arrays[f"{split}_labels"]))])
                    for split in only}
        return Splits(label_names, sets, description, limitations)

    return load


_ADRENAL_LIMITS = (
    "Shape masks only: every voxel is 0 or 255 (the gland as segmented on CT by an endocrinologist); the CT "
    "intensities were withheld by the dataset's authors, so a CT volume itself is outside what the model has seen.",
    "One hospital (Zhongshan Hospital, Fudan University), one annotation protocol.",
    "Normal vs adrenal hyperplasia only; tumours and other adrenal findings are out of scope.",
    "Each volume is a 64 mm cube centred on one gland, resized; other crops or scales were never seen.",
)
_ADRENAL = "AdrenalMNIST3D (MedMNIST v2, CC BY 4.0) adrenal gland shape masks {0}^3, official patient-level split"


def _manifest_rows(root: Path) -> list[dict]:
    """root/manifest.csv (path,label,split) or root/<split>/<label>/<file>."""
    manifest = root / "manifest.csv"
    if manifest.is_file():
        with open(manifest, newline="") as f:
            rows = list(csv.DictReader(f))
        missing = {"path", "label", "split"} - set(rows[0] if rows else {})
        if missing:
            raise DatasetError(f"{manifest} lacks column(s) {', '.join(sorted(missing))}")
    else:
        rows = [{"path": str(p.relative_to(root)), "label": p.parent.name, "split": p.parent.parent.name}
                for split in SPLITS for p in sorted((root / split).glob("*/*")) if p.is_file()]
    return rows


def _label_names(root: Path, rows: list[dict]) -> list[str]:
    names = sorted({r["label"] for r in rows})  # alphabetical: the second label is the positive class
    if len(names) < 2:
        raise DatasetError(f"{root}: need at least two labels, found {names or 'none'}")
    return names


def _folder(root: Path, prep: Preprocessing, only: tuple[str, ...]) -> Splits:
    """The user's own images: root/manifest.csv (path,label,split) or root/<split>/<label>/<image>."""
    rows = _manifest_rows(root)
    names = _label_names(root, rows)
    return Splits(names, _from_rows(rows, root, prep, names, only), f"folder {root}")


def _volume_folder(root: Path, prep: Preprocessing, only: tuple[str, ...]) -> Splits:
    """The user's own volumes (multi-frame DICOM, NIfTI, .npy, .npz), laid out as a `folder` dataset."""
    rows, sets = _manifest_rows(root), {}
    names = _label_names(root, rows)
    for split in only:
        chosen = [r for r in rows if r["split"] == split]
        if not chosen:
            raise DatasetError(f"the {split} split is empty: every dataset needs train, val and test volumes")
        volumes = []
        for r in chosen:
            try:
                volumes.append(prep.resize_uint8(read_volume((root / r["path"]).read_bytes()).voxels))
            except EngineError as error:
                raise DatasetError(f"{r['path']}: {error}") from None
        sets[split] = ImageSet(torch.stack(volumes), torch.tensor([names.index(r["label"]) for r in chosen]),
                               [r["path"] for r in chosen])
    return Splits(names, sets, f"volume folder {root}")


_HC18_LIMITS = (
    "One site (Radboud UMC), one sonographer population, images from the HC18 challenge's training set only.",
    "Images are the dataset's x0.5 downscaled copies (400x270 typical); other sizes are resized to fit.",
    "Trained on standard transthalamic planes with the whole skull in view: a partial head, another "
    "plane or another organ still gets a mask, so the mask must be looked at before the number is used.",
    "The ground truth masks are filled ellipses drawn by annotators, so the model learns ellipse-shaped heads.",
)


def _hc18(root: Path, prep: Preprocessing, only: tuple[str, ...]) -> Splits:
    with open(root / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    sets = {}
    for split in only:
        chosen = [r for r in rows if r["split"] == split]
        full = [cv2.imread(str(root / r["mask"]), cv2.IMREAD_GRAYSCALE) > 127 for r in chosen]
        small = [cv2.resize(m.astype(np.float32), prep.shape[::-1], interpolation=cv2.INTER_AREA) > 0.5
                 for m in full]
        sets[split] = MaskSet(
            torch.stack([prep.resize_uint8(gray_of_file(root / r["image"])) for r in chosen]),
            torch.from_numpy(np.stack(small)).long()[:, None], [r["image"] for r in chosen], full,
            np.array([float(r["pixel_size_mm"]) for r in chosen]),
            np.array([float(r["head_circumference_mm"]) for r in chosen]))
    return Splits(["background", "head"], sets, "hc18 (HC18 challenge training set, fetal head ultrasound, x0.5); "
                  "subject-grouped split 796/107/96, seed 20180101", _HC18_LIMITS)


@dataclass(frozen=True)
class Dataset:
    loader: Callable[[Path, Preprocessing, tuple[str, ...]], Splits]
    folder: str | None  # under RADLENS_DATA_DIR; None when --data-path names it
    task: str  # a key of engine.tasks.TASKS: which models can train on it


DATASETS: dict[str, Dataset] = {  # each one's scope (where its models may answer): engine.models.scope
    "cxr_pneumonia": Dataset(_cxr_pneumonia, "cxr_pneumonia", "classification"),
    "pneumoniamnist": Dataset(_medmnist("pneumoniamnist.npz", ["normal", "pneumonia"], "PneumoniaMNIST (MedMNIST "
                                        "v2) 28x28, official train/val/test split", _KERMANY_LIMITS),
                              "pneumoniamnist", "classification"),
    "folder": Dataset(_folder, None, "classification"),
    "hc18": Dataset(_hc18, "hc18", "segmentation"),
    "adrenalmnist3d_64": Dataset(_medmnist("adrenalmnist3d_64.npz", ["normal", "hyperplasia"], _ADRENAL.format(64),
                                           _ADRENAL_LIMITS), "adrenalmnist3d", "sequence"),
    "adrenalmnist3d": Dataset(_medmnist("adrenalmnist3d.npz", ["normal", "hyperplasia"], _ADRENAL.format(28),
                                        _ADRENAL_LIMITS), "adrenalmnist3d", "sequence"),
    "volume_folder": Dataset(_volume_folder, None, "sequence"),
}


def datasets(task: str, in_data_dir: bool = False) -> list[str]:
    return [n for n, d in DATASETS.items() if d.task == task and (d.folder or not in_data_dir)]


def load_dataset(name: str, prep: Preprocessing, data_dir: Path | None, data_path: Path | None = None,
                 only: tuple[str, ...] = SPLITS) -> Splits:
    if name not in DATASETS:
        raise UnknownDataset(f"Unknown dataset {name!r}. Available: {', '.join(DATASETS)}")
    dataset = DATASETS[name]
    root = data_path or (data_dir / dataset.folder if data_dir and dataset.folder else None)
    if root is None or not root.is_dir():
        raise DatasetError(f"dataset {name!r} not found: set RADLENS_DATA_DIR (or --data-path for a folder)")
    return dataset.loader(root, prep, only)


def augmentation() -> v2.Transform:
    """Small pose and exposure changes a real chest film shows. No flips: a mirrored chest puts the
    heart on the right (dextrocardia), which changes what the image means."""
    return v2.Compose([
        v2.RandomAffine(degrees=7, translate=(0.05, 0.05), scale=(0.92, 1.08)),
        v2.ColorJitter(brightness=0.15, contrast=0.15),
    ])


def mask_augmentation() -> v2.Transform:
    """Applied to an (image, mask) pair together, so the mask follows every geometric change. A fetal
    head lies either way round, so left-right flips are real; up-down would put the probe at the bottom."""
    return v2.Compose([
        v2.RandomHorizontalFlip(),
        v2.RandomAffine(degrees=15, translate=(0.05, 0.05), scale=(0.9, 1.1)),
        v2.ColorJitter(brightness=0.2, contrast=0.2),
    ])


class VolumeShift:
    """A random shift of a (1, D, H, W) volume by up to `fraction` of each axis, zero-filled: where the gland
    sits in its crop varies a little. No flips or rotations: left and right adrenal glands differ in shape,
    and a mirrored one is not a real gland."""

    def __init__(self, fraction: float = 0.08):
        self.fraction = fraction

    def __call__(self, volume: torch.Tensor) -> torch.Tensor:
        out = volume
        for axis in (1, 2, 3):
            most = max(1, round(self.fraction * volume.shape[axis]))
            k = int(torch.randint(-most, most + 1, ()))
            if k:
                out = torch.roll(out, k, axis)
                band = [slice(None)] * 4
                band[axis] = slice(0, k) if k > 0 else slice(k, None)
                out[tuple(band)] = 0
        return out
