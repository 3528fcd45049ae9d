"""The Synthetic data page's parts: the generator's card, its quality and memorisation report, the request form
and the gallery of synthetic images beside their nearest real training images."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard.text import md
from engine.config import Config
from engine.synthetic import Gallery, LoadedGenerator, installed_generators, shown, upscaled

__all__ = ["generator_picker", "card_summary", "quality_report", "request_form", "gallery_grid", "GALLERY_MAX"]

GALLERY_MAX = 64  # images one page request may generate
_COLUMNS = 4  # synthetic / nearest-real pairs per row


def generator_picker(config: Config) -> str | None:
    names = [name for name, _ in installed_generators(config)]
    if not names:
        st.info("No generator is installed. Train one as a GAN job (`python -m engine.train.gan`).")
        return None
    return st.selectbox("Generator", names, help="Installed generators: shipped ones and finished GAN jobs")


def card_summary(gen: LoadedGenerator) -> None:
    card, training = gen.card, gen.card.training
    st.caption(md("{name} {version}: class-conditional GAN, {size} x {size} px, classes {labels}. Trained on the "
                  "{dataset} training split only ({counts}), {epochs} epochs in {minutes} min on {hardware}.",
                  name=card.name, version=card.version, size=gen.size, labels=", ".join(card.labels),
                  dataset=card.data.get("dataset", "?"),
                  counts=", ".join(f"{k} {v}" for k, v in card.data.get("counts", {}).get("train", {}).items()),
                  epochs=training.get("epochs_run", "?"), minutes=round(training.get("wall_time_s", 0) / 60),
                  hardware=training.get("hardware", "?")))


def quality_report(gen: LoadedGenerator) -> None:
    """The card's report: Fréchet distance and PRDC per class and feature space, each beside the same measure for
    real held-out images (the floor a perfect generator reaches), and the memorisation check."""
    report = gen.card.metrics.get("quality")
    if not report:
        st.info("This generator has not been evaluated yet: `python -m engine synthetic evaluate --write`.")
        return
    rows = []
    for label, entry in report["classes"].items():
        for space, title in report["spaces"].items():
            m = entry[space]
            rows.append({"class": label, "feature space": title, "Fréchet (synthetic)": m["frechet"],
                         "Fréchet (real held-out)": m["frechet_real_floor"],
                         **{f"{k} (synthetic / real)": f"{m['prdc'][k]:.2f} / {m['prdc_real_floor'][k]:.2f}"
                            for k in ("precision", "recall", "density", "coverage")}})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    memo = report["memorisation"]
    st.caption(md("Memorisation: {flagged} of {images} synthetic images flagged ({fraction:.1%}); {rule}. Real "
                  "held-out images would be flagged at about 1-2 % by construction. Each class: as many synthetic "
                  "images as real held-out ones (val + test), seed {seed}.", flagged=memo["flagged"],
                  images=memo["images"], fraction=memo["flagged_fraction"], rule=memo["rule"], seed=report["seed"]))


def request_form(gen: LoadedGenerator) -> tuple[str, int, int] | None:
    with st.form("synthetic.form", border=True):
        c1, c2, c3 = st.columns(3)
        label = c1.selectbox("Class", gen.labels, help="The class the generator is asked for")
        count = c2.number_input("Images", 1, GALLERY_MAX, 8)
        seed = c3.number_input("Seed", 0, 2**31 - 1, 0, help="The same seed always gives the same images")
        if not st.form_submit_button("Generate", type="primary", icon=":material/auto_awesome:"):
            return None
    return label, int(count), int(seed)


def gallery_grid(made: Gallery) -> None:
    """Each synthetic image (marked) beside its nearest real training image by pixels, with both distances."""
    check = made.check
    st.caption(md("Left of each pair: synthetic ({label}, seed {seed}); right: its nearest training image by pixels. "
                  "Flagged when nearer a training image than {tail} of real held-out images are (RMS pixel "
                  "distance < {p:.3f} or feature distance < {f:.2f}).", label=made.label, seed=made.seed,
                  tail="99 %", p=check.pixel_threshold, f=check.feature_threshold))
    for start in range(0, len(made.images), _COLUMNS):
        columns = st.columns(_COLUMNS * 2)
        for j, i in enumerate(range(start, min(start + _COLUMNS, len(made.images)))):
            flag = "FLAGGED, withheld from export and training: " if check.flagged[i] else ""
            columns[2 * j].image(shown(made.images[i]), caption=md("{flag}synthetic #{i}", flag=flag, i=i),
                                 width="stretch")
            columns[2 * j + 1].image(upscaled(made.neighbours[i]), width="stretch", caption=md(
                "nearest real: {name} (RMS {p:.3f}, features {f:.2f})", name=made.neighbour_names[i],
                p=check.pixel_distance[i], f=check.feature_distance[i]))
