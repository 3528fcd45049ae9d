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
    active = active_model(config, store, "classification").name if models else None
    st.subheader("Installed weights")
    st.dataframe(pd.DataFrame([{
        "Name": m.name, "Version": m.card["version"], "Task": m.task, "Architecture": m.card["arch"],
        "Test AUC": m.card["metrics"]["test"]["auc"], "Active": m.name == active,
        "Source": "shipped" if m.shipped else "trained here", "File": m.path.name} for m in models]),
        hide_index=True, width="stretch", column_config={"Test AUC": st.column_config.NumberColumn(format="%.3f")})
    names = [m.name for m in models]
    wanted = st.query_params.get("model", active)
    name = st.selectbox("Model card", names, index=names.index(wanted) if wanted in names else 0)
    if name:
        model = next(m for m in models if m.name == name)
        card = model.card
        if name != active and st.button(f"Make {name} the active model", icon=":material/check_circle:"):
            set_active(config, store, name)
            st.rerun()
        st.markdown(f"**{name}** v{card['version']} - {card['arch']}, labels {', '.join(card['labels'])}  \n"
                    f"Data: {card['data']['description']}  \nPreprocessing: `{model_widgets.prep_text(card)}`  \n"
                    f"Operating threshold {card['operating_point']['threshold']:.3f} ({card['operating_point']['rule']}); "
                    f"temperature {card['calibration']['temperature']:.3f}; OOD threshold {card['ood']['threshold']:.1f}")
        model_widgets.card_metrics(card)
        c1, c2 = st.columns(2)
        with c1:
            model_widgets.roc_chart(card)
        with c2:
            model_widgets.reliability_chart(card)
        model_widgets.card_details(card)

    st.subheader("Registered architectures")
    st.dataframe(pd.DataFrame(architectures()), hide_index=True, width="stretch")
