"""Models: the registered architectures, the installed weights with their cards, and which one is active."""

import pandas as pd
import streamlit as st

from dashboard import model_widgets, resources, widgets
from engine.models.catalog import active_model, installed_models, set_active
from engine.models.registry import architectures

store, config = resources.store(), resources.config()
st.title("Models")

with widgets.engine_errors():
    models = installed_models(config)
    active = {task: active_model(config, store, task).name for task in sorted({m.task for m in models})}
    st.subheader("Installed weights")
    st.dataframe(pd.DataFrame([{
        "Name": m.name, "Version": m.card["version"], "Task": m.task, "Architecture": m.card["arch"],
        "Test split": model_widgets.headline(m.card), "Active": active.get(m.task) == m.name,
        "Source": "shipped" if m.shipped else "trained here", "File": m.path.name} for m in models]),
        hide_index=True, width="stretch")
    names = [m.name for m in models]
    wanted = st.query_params.get("model", active.get("classification"))
    name = st.selectbox("Model card", names, index=names.index(wanted) if wanted in names else 0)
    if name:
        model = next(m for m in models if m.name == name)
        card = model.card
        if name != active[model.task] and st.button(f"Make {name} the active model", icon=":material/check_circle:"):
            set_active(config, store, name)
            st.rerun()
        st.markdown(f"**{name}** v{card['version']} - {card['task']}, {card['arch']}, labels "
                    f"{', '.join(card['labels'])}  \nData: {card['data']['description']}  \n"
                    f"Preprocessing: `{model_widgets.prep_text(card)}`")
        model_widgets.card_summary(card)
        model_widgets.card_details(card)

    st.subheader("Registered architectures")
    st.dataframe(pd.DataFrame(architectures()), hide_index=True, width="stretch")
