"""Sequence: a volume or cine loop slice by slice (three planes, cine playback), the sequence model's
calibrated result with its OOD gate, and each slice's contribution to it."""

import streamlit as st

from dashboard import resources, sequence_widgets, state, widgets
from engine.models import Scope
from engine.tasks import analyse_sequence, raw_sequence_output, sequence_images

ctx = resources.context()
st.title("Sequence")

with widgets.engine_errors():
    classifier = resources.active_sequence_classifier(ctx)
    card = classifier.loaded.card
    case_id = sequence_widgets.case_picker(ctx.store, Scope.from_card(card))
    case = widgets.viewed_case(ctx, case_id)
    image = widgets.image_picker({**case, "images": sequence_images(case)})
    done = widgets.once_per_opening(state.SEQUENCE, (image["id"], classifier.loaded.sha256),
                                    lambda: analyse_sequence(ctx, classifier, image))
    at = sequence_widgets.position(done.volume, image["id"], sequence_widgets.focus(done.prediction))
    left, right = st.columns([3, 2])
    with left:
        sequence_widgets.planes(done.volume, at)
        with st.expander("Cine playback", icon=":material/play_circle:"):
            sequence_widgets.cine(done.volume)
    with right:
        prediction = done.prediction
        if prediction is None and sequence_widgets.abstained(done, ctx.user.may("case.raw_output")):
            prediction = widgets.once_per_opening(state.RAW_OUTPUT, ("sequence", done.prediction_id),
                                                  lambda: raw_sequence_output(ctx, done))
            widgets.raw_output_banner()
        if prediction is not None:
            sequence_widgets.result(prediction, card.positive_label, card.name, card.version)
            sequence_widgets.contribution_chart(prediction, at[0])
