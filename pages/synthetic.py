"""Synthetic data: a GAN generator's images of a chosen class (seeded), each beside its nearest real training
image, with the generator's quality and memorisation report and a marked export. Researchers only: synthetic
images are for studying data augmentation, never for reading as cases."""

import streamlit as st

from dashboard import resources, state, synthetic_widgets, widgets
from engine.models import active_model
from engine.synthetic import export_zip, synthesise

ctx = resources.context()
st.title("Synthetic data")

with widgets.engine_errors():
    ctx.require("synthetic.generate")
    name = synthetic_widgets.generator_picker(ctx.config)
    if name is None:
        st.stop()
    gen = resources.generator(name)
    synthetic_widgets.card_summary(gen)
    with st.expander("Quality and memorisation (the generator's card)", icon=":material/analytics:", expanded=True):
        synthetic_widgets.quality_report(gen)
    asked = synthetic_widgets.request_form(gen)
    classifier = active_model(ctx, "classification").name
    if asked is not None:
        st.session_state[state.SYNTHETIC_ASKED] = asked
    asked = st.session_state.get(state.SYNTHETIC_ASKED)
    if asked is None:
        st.caption("Choose a class, a number of images and a seed, then Generate.")
        st.stop()
    refs = resources.references(name, classifier)
    made = widgets.once_per_opening(state.SYNTHETIC, (name, classifier, *asked),
                                    lambda: synthesise(ctx, gen, refs, *asked))
    flagged = int(made.check.flagged.sum())
    st.download_button(f"Export {len(made.images) - flagged} image(s) as marked PNGs + manifest (zip)",
                       lambda: export_zip(ctx, gen, made), f"synthetic-{made.label}-seed{made.seed}.zip",
                       "application/zip", icon=":material/download:", on_click="ignore")
    synthetic_widgets.gallery_grid(made)
