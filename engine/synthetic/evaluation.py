"""A generator measured against the real images it learned from: the reference sets (real images of every split
at the generator's size, and their features), the card's quality and memorisation report, and a gallery of
seeded synthetic images with their nearest real neighbours (the Synthetic data page and the CLI)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.config import Config
from engine.data.loaders import SPLITS, load_dataset
from engine.models.checkpoint import LoadedModel, atomic_write, save_model
from engine.models.preprocess import Preprocessing
from engine.synthetic.generator import LoadedGenerator, generate
from engine.synthetic.quality import (
    PRDC_K,
    ClassifierFeatures,
    Memorisation,
    frechet_distance,
    memorisation,
    prdc,
)

__all__ = ["References", "load_references", "evaluate", "Gallery", "gallery", "write_card_metrics", "HELD_OUT",
           "memorised"]

HELD_OUT = ("val", "test")  # real images the generator never saw: the reference for "as close as real"


@dataclass(frozen=True)
class References:
    """Real images of every split at the generator's size (uint8), their classes, names and features."""

    labels: list[str]
    images: dict[str, np.ndarray]
    classes: dict[str, np.ndarray]
    names: dict[str, list[str]]
    features_of: ClassifierFeatures  # images -> {space: (n, d)}
    features: dict[str, dict[str, np.ndarray]]  # space name -> split -> (n, d)

    def held_out(self, what: str, space: str | None = None) -> np.ndarray:
        source = self.features[space] if space else self.images if what == "images" else self.classes
        return np.concatenate([source[s] for s in HELD_OUT])

    def of_class(self, split: str, label: str) -> np.ndarray:
        return self.classes[split] == self.labels.index(label)


def load_references(config: Config, gen: LoadedGenerator, classifier: LoadedModel, device: str = "cpu",
                    cache: bool = True) -> References:
    """The generator's dataset at its size, with features in every space; cached under RADLENS_HOME/synthetic by
    generator size and classifier weights (about a minute on two CPU cores the first time)."""
    dataset = gen.card.data["dataset"]
    path = config.home / "synthetic" / f"references-{dataset}-{gen.size}-{classifier.sha256[:16]}.npz"
    features_of = ClassifierFeatures(classifier, device)
    spaces = list(features_of.spaces)
    if cache and path.is_file():
        with np.load(path, allow_pickle=False) as saved:
            return References([str(n) for n in saved["labels"]], {s: saved[f"images_{s}"] for s in SPLITS},
                              {s: saved[f"classes_{s}"] for s in SPLITS},
                              {s: [str(n) for n in saved[f"names_{s}"]] for s in SPLITS},
                              features_of, {sp: {s: saved[f"{sp}_{s}"] for s in SPLITS} for sp in spaces})
    splits = load_dataset(dataset, Preprocessing(size=gen.size), config.data_dir)
    images = {s: (splits.sets[s].images[:, 0].numpy() * 255).round().astype(np.uint8) for s in SPLITS}
    by_split = {s: features_of(images[s]) for s in SPLITS}
    refs = References(splits.label_names, images, {s: splits.sets[s].labels.numpy() for s in SPLITS},
                      {s: list(splits.sets[s].names) for s in SPLITS}, features_of,
                      {sp: {s: by_split[s][sp] for s in SPLITS} for sp in spaces})
    if cache:
        arrays = {"labels": np.array(refs.labels)}
        for s in SPLITS:
            arrays.update({f"images_{s}": refs.images[s], f"classes_{s}": refs.classes[s],
                           f"names_{s}": np.array(refs.names[s])})
            arrays.update({f"{sp}_{s}": refs.features[sp][s] for sp in spaces})
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        atomic_write(path, write)
    return refs


def _rounded(values: dict) -> dict:
    return {k: round(v, 4) for k, v in values.items()}


def evaluate(gen: LoadedGenerator, refs: References, seed: int = 0) -> dict:
    """The card's report. Per class: as many synthetic images as there are real held-out images of the class,
    compared with the class's training images in every space, next to the real held-out images compared the same
    way (the floor); memorisation of all of them against every training image."""
    report = {"seed": seed, "held_out_splits": list(HELD_OUT), "prdc_k": PRDC_K, "classes": {}}
    synthetic_all, held_classes = [], refs.held_out("classes")
    for label in refs.labels:
        n = int((held_classes == refs.labels.index(label)).sum())
        synthetic = generate(gen, label, n, seed + refs.labels.index(label))
        synthetic_all.append(synthetic)
        in_train, in_held = refs.of_class("train", label), held_classes == refs.labels.index(label)
        entry = {"synthetic": n, "real_held_out": n, "real_train": int(in_train.sum())}
        synth_features = refs.features_of(synthetic)
        for space in refs.features:
            train_f = refs.features[space]["train"][in_train]
            held_f, synth_f = refs.held_out("", space)[in_held], synth_features[space]
            entry[space] = {
                "frechet": round(frechet_distance(synth_f, train_f), 3),
                "frechet_real_floor": round(frechet_distance(held_f, train_f), 3),
                "prdc": _rounded(prdc(train_f, synth_f)), "prdc_real_floor": _rounded(prdc(train_f, held_f))}
        report["classes"][label] = entry
    report["spaces"] = dict(refs.features_of.spaces)
    report["memorisation"] = memorised(np.concatenate(synthetic_all), refs).summary()
    return report


def memorised(synthetic: np.ndarray, refs: References) -> Memorisation:
    return memorisation(synthetic, refs.features_of(synthetic)["classifier"], refs.images["train"],
                        refs.features["classifier"]["train"], refs.held_out("images"),
                        refs.held_out("", "classifier"))


@dataclass(frozen=True)
class Gallery:
    label: str
    seed: int
    images: np.ndarray  # (n, S, S) uint8, unmarked
    check: Memorisation
    neighbour_names: list[str]  # nearest training image by pixels, by file name
    neighbours: np.ndarray  # (n, S, S) uint8 training images
    feature_neighbour_names: list[str]  # nearest training image by classifier features


def gallery(gen: LoadedGenerator, refs: References, label: str, n: int, seed: int) -> Gallery:
    """n seeded synthetic images of `label` with their memorisation check and nearest real training images."""
    images = generate(gen, label, n, seed)
    check = memorised(images, refs)
    names = refs.names["train"]
    return Gallery(label, seed, images, check, [names[i] for i in check.pixel_index],
                   refs.images["train"][check.pixel_index], [names[i] for i in check.feature_index])


def write_card_metrics(gen: LoadedGenerator, report: dict) -> str:
    """The report into the generator's card (inside its weights file and the JSON copy); returns the new sha256."""
    card = gen.card.replace(metrics={**gen.card.metrics, "quality": report})
    return save_model(gen.path, gen.net, card, half=True)
