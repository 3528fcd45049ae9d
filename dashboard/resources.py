"""The only cached functions: the context (configuration, store), decoded studies, models (read-only), comparisons."""

from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard import state
from engine.cases.diagnosis import load_classifier
from engine.cases.images import load_image
from engine.cases.segmentation import load_segmenter
from engine.cases.sequence import TASK as SEQUENCE_TASK
from engine.cases.sequence import load_sequence_classifier
from engine.config import Config
from engine.context import Context, User
from engine.errors import SessionExpired
from engine.identity.sessions import check_session
from engine.inference.classify import Classifier
from engine.inference.explainer import Explainer
from engine.inference.segment import Segmenter
from engine.inference.sequence import SequenceClassifier
from engine.io.study import Study
from engine.models.catalog import active_model, find_model
from engine.models.checkpoint import load_model
from engine.store import Store
from engine.synthetic.evaluation import References, load_references
from engine.synthetic.generator import LoadedGenerator, find_generator, load_generator
from engine.tasks.evaluation import compare_models

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


@st.cache_resource(max_entries=4, show_spinner="Loading model...")
def classifier(name: str) -> Classifier:
    """A loaded classifier shared by every session; Classifier serialises calls with its own lock."""
    return load_classifier(_base_context(), name)


@st.cache_resource(max_entries=2, show_spinner="Preparing explanations...")
def explainer(name: str) -> Explainer:
    """Explanation methods for a cached classifier (shares its model and lock)."""
    return Explainer(classifier(name))


@st.cache_resource(max_entries=2, show_spinner="Loading segmentation model...")
def segmenter(name: str) -> Segmenter:
    """A loaded segmentation model shared by every session (Segmenter serialises calls with its lock).
    One warm-up call on a blank image takes the one-off CPU kernel set-up (hundreds of ms) off the first case."""
    segmenter = load_segmenter(_base_context(), name)
    segmenter.segment(np.zeros((64, 64), np.uint8))
    return segmenter


@st.cache_resource(max_entries=2, show_spinner="Loading sequence model...")
def sequence_classifier(name: str) -> SequenceClassifier:
    """A loaded sequence model shared by every session (its calls are serialised by its lock)."""
    return load_sequence_classifier(_base_context(), name)


def active_classifier(ctx: Context) -> Classifier:
    """The task's active model, loaded once and shared: what Diagnosis runs."""
    return classifier(active_model(ctx, "classification").name)


def active_segmenter(ctx: Context) -> Segmenter:
    return segmenter(active_model(ctx, "segmentation").name)


def active_sequence_classifier(ctx: Context) -> SequenceClassifier:
    return sequence_classifier(active_model(ctx, SEQUENCE_TASK).name)


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
    for cached in (classifier, explainer, segmenter, sequence_classifier, references):
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
