"""Models: every installed version with its card; promote one to active, roll back, compare two versions
on the same held-out split, and who changed what when."""

import pandas as pd
import streamlit as st

from dashboard import lifecycle_widgets, model_widgets, resources, widgets
from engine.models.catalog import active_model, installed_models
from engine.models.registry import architectures

store, config = resources.store(), resources.config()
st.title("Models")

with widgets.engine_errors():
    models = installed_models(config)
    active = {task: active_model(config, store, task).name for task in sorted({m.task for m in models})}
    st.subheader("Installed versions")
    lifecycle_widgets.rollback_buttons(config, store, active)
    st.dataframe(pd.DataFrame([{
        "Name": m.name, "Version": m.card["version"], "Task": m.task, "Architecture": m.card["arch"],
        "Test split": model_widgets.headline(m.card), "Active": active.get(m.task) == m.name,
        "Source": "shipped" if m.shipped else "trained here", "File": m.path.name} for m in models]),
        hide_index=True, width="stretch")
    names = [m.name for m in models]
    wanted = st.query_params.get("model", active.get("classification"))
    name = st.selectbox("Model card", names, index=names.index(wanted) if wanted in names else 0)
    model = next(m for m in models if m.name == name)
    card = model.card
    lifecycle_widgets.promote_button(config, store, model, active[model.task])
    st.markdown(f"**{name}** version {card['version']} - {card['task']}, {card['arch']}, labels "
                f"{', '.join(card['labels'])}  \nData: {card.get('data', {}).get('description', 'not recorded')}  \n"
                f"Preprocessing: `{model_widgets.prep_text(card)}`")
    model_widgets.card_summary(card)
    model_widgets.card_details(card)

    st.subheader("Compare two versions")
    lifecycle_widgets.compare(models, active, model)
    st.subheader("Promotions and roll backs")
    lifecycle_widgets.history(store)
    st.subheader("Registered architectures")
    st.dataframe(pd.DataFrame(architectures()), hide_index=True, width="stretch")
