"""Out-of-distribution gate: the shipped Mahalanobis feature distance against a convolutional
autoencoder's reconstruction error, on the same images.

In-distribution: cxr_pneumonia demo_split test (156). Out: hc18 test (96 fetal-head ultrasound) plus the
non-chest images of pydicom-data (MR, CT, US, leg CR RG3). Reports AUROC for both scores and, for the
shipped threshold, how many chest films are flagged and how many non-chest images are caught.

Run: python -m bench.ood   (needs RADLENS_DATA_DIR)
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import numpy as np
import torch
from pydicom.data import get_testdata_file
from sklearn.metrics import roc_auc_score
from torch import nn

from bench.common import report
from engine.data.loaders import gray_of_file, load_dataset
from engine.inference.predict import predict
from engine.models import cam_layer, load_model
from engine.models.installed import SHIPPED_DIR
from engine.models.ood import mahalanobis
from engine.models.preprocess import Preprocessing

OTHER_DICOMS = ("US1_J2KR.dcm", "MR2_J2KR.dcm", "693_J2KR.dcm", "RG3_UNCR.dcm", "emri_small.dcm", "CT_small.dcm",
                "MR_small.dcm")
AE_SIZE = 64


class _AutoEncoder(nn.Module):
    """64x64 -> 8x8x64 -> 64x64; small enough to train in a minute on two cores."""

    def __init__(self):
        super().__init__()
        self.encode = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                                    nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU())
        self.decode = nn.Sequential(nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),
                                    nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.ReLU(),
                                    nn.ConvTranspose2d(16, 1, 4, 2, 1), nn.Sigmoid())

    def forward(self, x):
        return self.decode(self.encode(x))


def _train_autoencoder(images: torch.Tensor, epochs: int = 40) -> _AutoEncoder:
    torch.manual_seed(0)
    model = _AutoEncoder()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(images)).split(64):
            loss = nn.functional.mse_loss(model(images[idx]), images[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _outliers(data_dir: Path) -> list[np.ndarray]:
    with open(data_dir / "hc18" / "manifest.csv", newline="") as f:
        hc18 = [data_dir / "hc18" / r["image"] for r in csv.DictReader(f) if r["split"] == "test"]
    return [gray_of_file(p) for p in hc18] + [gray_of_file(Path(get_testdata_file(n))) for n in OTHER_DICOMS]


def main() -> None:
    data_dir = Path(os.environ["RADLENS_DATA_DIR"])
    loaded = load_model(SHIPPED_DIR / "cxr-pneumonia-resnet18.safetensors")
    prep, layer, cpu = loaded.preprocessing, cam_layer(loaded.model, loaded.card.arch), torch.device("cpu")
    chest = load_dataset("cxr_pneumonia", prep, data_dir, only=("test",)).sets["test"].images
    outliers = _outliers(data_dir)
    other = torch.stack([prep.resize_uint8(g) for g in outliers])
    labels = np.r_[np.zeros(len(chest)), np.ones(len(other))]

    _, features = predict(loaded.model, torch.cat([chest, other]), prep, layer, cpu)
    distance = mahalanobis(features, loaded.extras["ood_mean"], loaded.extras["ood_precision"]).numpy()
    threshold = loaded.card.ood["threshold"]

    small = Preprocessing(size=AE_SIZE)
    train = load_dataset("cxr_pneumonia", small, data_dir, only=("train",)).sets["train"].images
    start = time.perf_counter()
    autoencoder = _train_autoencoder(train)
    ae_seconds = time.perf_counter() - start
    both = torch.cat([load_dataset("cxr_pneumonia", small, data_dir, only=("test",)).sets["test"].images,
                      torch.stack([small.resize_uint8(g) for g in outliers])])
    with torch.no_grad():
        error = ((autoencoder(both) - both) ** 2).mean(dim=(1, 2, 3)).numpy()

    report("ood", {
        "in_distribution": f"cxr_pneumonia test ({len(chest)})",
        "out_of_distribution": f"hc18 test ({len(outliers) - len(OTHER_DICOMS)}) + pydicom-data {list(OTHER_DICOMS)}",
        "mahalanobis": {"auroc": round(float(roc_auc_score(labels, distance)), 4), "threshold": round(threshold, 2),
                        "chest_flagged": int((distance[labels == 0] > threshold).sum()),
                        "outliers_caught": int((distance[labels == 1] > threshold).sum()),
                        "outliers": int(labels.sum())},
        "autoencoder": {"auroc": round(float(roc_auc_score(labels, error)), 4),
                        "train_seconds": round(ae_seconds, 1), "input": f"{AE_SIZE}x{AE_SIZE}"},
    })


if __name__ == "__main__":
    main()
