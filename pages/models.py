"""Models: every installed version with its card; promote one to active, roll back, compare two versions
on the same held-out split, and who changed what when."""

import pandas as pd
import streamlit as st

from dashboard import lifecycle_widgets, model_widgets, resources, state, widgets
from engine.models import active_model, architectures, installed_models, promote, rollback, rollback_target

ctx = resources.context()
st.title("Models")
ACTIONS = {
    "model.promote": lambda model, reason: promote(ctx, model.name, reason),
    "model.rollback": lambda model, reason: rollback(ctx, model.task, reason),
}

with widgets.engine_errors():
    models = installed_models(ctx.config)
    active = {task: active_model(ctx, task).name for task in sorted({m.task for m in models})}
    st.subheader("Installed versions")
    may_promote = ctx.user.may("model.promote")
    targets = {t: rollback_target(ctx, t) for t in active}
    if task := lifecycle_widgets.rollback_buttons(active, targets, may_promote):
        st.session_state[state.CONFIRM] = ("model.rollback", targets[task].name)
    st.dataframe(pd.DataFrame([{
        "Name": m.name, "Version": m.card.version, "Task": m.task, "Architecture": m.card.arch,
        "Test split": model_widgets.headline(m.card), "Active": active.get(m.task) == m.name,
        "Source": "shipped" if m.shipped else "trained here", "File": m.path.name} for m in models]),
        hide_index=True, width="stretch")
    names = [m.name for m in models]
    wanted = st.query_params.get("model", active.get("classification"))
    name = st.selectbox("Model card", names, index=names.index(wanted) if wanted in names else 0)
    model = next(m for m in models if m.name == name)
    card = model.card
    if may_promote and lifecycle_widgets.promote_button(model, active[model.task]):
        st.session_state[state.CONFIRM] = ("model.promote", model.name)
    if confirmed := lifecycle_widgets.pending_activation(models, active):
        ACTIONS[confirmed[0]](*confirmed[1:])
        st.session_state.pop(state.CONFIRM, None)
        resources.release_models()
        st.rerun()
    st.text(f"{name} version {card.version} - {card.task}, {card.arch}, labels {', '.join(card.labels)}\n"
            f"Data: {card.data.get('description', 'not recorded')}\nPreprocessing: {model_widgets.prep_text(card)}")
    model_widgets.card_summary(card)
    model_widgets.card_details(card)

    st.subheader("Compare two versions")
    lifecycle_widgets.compare(models, active, model)
    st.subheader("Promotions and roll backs")
    lifecycle_widgets.history(ctx.store)
    st.subheader("Registered architectures")
    st.dataframe(pd.DataFrame(architectures()), hide_index=True, width="stretch")
