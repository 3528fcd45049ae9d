"""Synthetic minority images for a training run (`--synthetic K`): K seeded images of the training split's
smallest class from an installed generator, screened for memorisation (a flagged image is replaced by the
next seeded one, never used), resized to the model's input like a real image, and appended to the training
split only. Validation and test stay real, so every reported metric is on real images.

Images used for training are not pixel-marked: a mark only on synthetic normals would teach the classifier
that the mark means "normal". They never leave the training process."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from engine.config import Config
from engine.data.loaders import ImageSet, Splits
from engine.errors import DatasetError
from engine.models.checkpoint import LoadedModel
from engine.models.preprocess import Preprocessing
from engine.synthetic.evaluation import load_references, memorised
from engine.synthetic.generator import find_generator, generate, load_generator

__all__ = ["add_synthetic", "as_model_input"]

_MAX_ROUNDS = 10  # generation rounds to replace flagged images before giving up


def as_model_input(images: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """(n, S, S) uint8 synthetic images -> (n, 1, rows, cols) in [0, 1], upscaled (bilinear) to the model's input."""
    rows, cols = prep.shape
    return torch.stack([prep.resize_uint8(cv2.resize(im, (cols, rows), interpolation=cv2.INTER_LINEAR))
                        for im in images])


def add_synthetic(splits: Splits, config: Config, classifier: LoadedModel, prep: Preprocessing, k: int,
                  generator: str | None, seed: int) -> dict:
    """Append k screened synthetic images of the smallest training class to splits' training set (in place);
    returns what the model card records."""
    gen = load_generator(find_generator(config, generator))
    if gen.labels != splits.label_names:
        raise DatasetError(f"generator {gen.name} makes {', '.join(gen.labels)}; this dataset's labels are "
                           f"{', '.join(splits.label_names)}")
    train = splits.sets["train"]
    counts = np.bincount(train.labels.numpy(), minlength=len(gen.labels))
    label = gen.labels[int(counts.argmin())]
    refs = load_references(config, gen, classifier)
    kept, dropped, batch = [], 0, max(k, 16)
    for round_ in range(_MAX_ROUNDS):
        images = generate(gen, label, batch, seed + 7919 * round_)
        flagged = memorised(images, refs).flagged
        kept += list(images[~flagged])
        dropped += int(flagged.sum())
        if len(kept) >= k:
            break
    else:
        raise DatasetError(f"{gen.name}: after {_MAX_ROUNDS} rounds only {len(kept)} of {k} synthetic images passed "
                           "the memorisation check; the generator copies training images and is not used")
    chosen = np.stack(kept[:k])
    names = [f"synthetic:{gen.name}:{seed}:{i}" for i in range(k)]
    synthetic = ImageSet(as_model_input(chosen, prep), torch.full((k,), gen.labels.index(label), dtype=torch.long),
                         names, names if train.groups else None)
    splits.sets["train"] = ImageSet.concat(train, synthetic)
    return {"generator": gen.name, "version": gen.card.version, "weights_sha256": gen.sha256, "label": label,
            "images": k, "seed": seed, "flagged_and_replaced": dropped,
            "screen": "memorisation check of engine/synthetic/quality.py against the training images; flagged "
                      "images replaced by further seeded ones",
            "resize": f"{gen.size} px generated, upscaled bilinear to the model input"}
