"""The only cached functions: the context (configuration, store), decoded studies, models (read-only), comparisons."""

from __future__ import annotations

import streamlit as st

from dashboard import state
from engine.config import Config
from engine.context import Context, User
from engine.errors import SessionExpired
from engine.identity import check_session
from engine.inference import Classifier, Explainer, Segmenter, SequenceClassifier
from engine.io import Study
from engine.models import active_model, find_model, load_model
from engine.store import Store
from engine.stored import load_image
from engine.synthetic import LoadedGenerator, References, find_generator, load_generator, load_references
from engine.tasks import Task, classification, compare_models, get_task, load, segmentation, sequence

NOBODY = User("nobody", "nobody", "none")  # holds no permission


@st.cache_resource
def _base_config() -> Config:
    return Config.from_env()


@st.cache_resource
def _base_context() -> Context:
    return Context.open(_base_config(), "server")


def base_context() -> Context:
    """The server's context, acting as nobody in particular: only the login gate uses it as is."""
    return _base_context()


def context() -> Context:
    """This request's context, acting as the user the login gate let in (no permission at all otherwise).
    A fragment that reruns on its own checks the session is still live, so an expired one stops at once."""
    base = _base_context()
    user = st.session_state.get(state.USER) or NOBODY
    if base.config.auth.mode != "none" and user != NOBODY:
        try:
            check_session(base, st.session_state.get(state.SESSION), touch=False)
        except SessionExpired:
            st.session_state.pop(state.USER, None)
            st.rerun()
    return base.as_user(user)


def store() -> Store:
    return _base_context().store


@st.cache_resource(max_entries=8, show_spinner="Decoding image...")
def study(image_path: str, image_id: int) -> Study:
    """A decoded stored image. Stored files never change, so the path is a safe cache key."""
    return load_image(_base_config(), {"path": image_path, "id": image_id})


@st.cache_resource(max_entries=8, show_spinner="Loading model...")
def model(task: str, name: str):
    """A task's loaded model shared by every session (its runner serialises calls with its own lock); loaded
    once, on the device the engine chooses, and warmed up as the task says."""
    return load(_base_context(), get_task(task), name)


def classifier(name: str) -> Classifier:
    return model(classification.TASK.name, name)


@st.cache_resource(max_entries=2, show_spinner="Preparing explanations...")
def explainer(name: str) -> Explainer:
    """Explanation methods for a cached classifier (shares its model and lock)."""
    return Explainer(classifier(name))


def active(ctx: Context, task: Task):
    """The task's active model, loaded once and shared: what its page runs."""
    return model(task.name, active_model(ctx, task.name).name)


def active_classifier(ctx: Context) -> Classifier:
    return active(ctx, classification.TASK)


def active_segmenter(ctx: Context) -> Segmenter:
    return active(ctx, segmentation.TASK)


def active_sequence_classifier(ctx: Context) -> SequenceClassifier:
    return active(ctx, sequence.TASK)


@st.cache_resource(max_entries=2, show_spinner="Loading the generator...")
def generator(name: str) -> LoadedGenerator:
    return load_generator(find_generator(_base_config(), name))


@st.cache_resource(max_entries=2, show_spinner="Preparing the real reference images and their features (the first "
                   "time only: a few minutes on a laptop CPU)...")
def references(generator_name: str, classifier_name: str) -> References:
    """The generator's dataset at its size with features in the classifier's spaces (also cached on disk)."""
    config = _base_config()
    return load_references(config, generator(generator_name), load_model(find_model(config, classifier_name).path))


def release_models() -> None:
    """Drop every loaded model, so the next page run loads the newly active one (after promote / roll back)."""
    for cached in (model, explainer, references):
        cached.clear()


def comparison(ctx: Context, names: tuple[str, ...]) -> dict:
    """Both models on the first one's test split (needs `model.compare`, checked by the engine every time)."""
    ctx.require("model.compare")
    return _comparison(names)


@st.cache_data(max_entries=8, show_spinner="Evaluating both models on the held-out split...")
def _comparison(names: tuple[str, ...]) -> dict:
    """Both models' metrics on the first one's test split and their paired difference. Installed weights never
    change under a name (a job writes a new name), so the names are a safe key."""
    return compare_models(_base_config(), list(names))
