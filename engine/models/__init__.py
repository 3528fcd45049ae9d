"""Models: the architecture registry, preprocessing, checkpoints and the catalogue of installed weights."""

from engine.models.checkpoint import LoadedModel, load_model, read_card, save_model
from engine.models.preprocess import Preprocessing
from engine.models.registry import (
           cam_layer,
           create_model,
           get_spec,
           list_models,
           register_model,
)

__all__ = ["LoadedModel", "load_model", "read_card", "save_model", "Preprocessing", "cam_layer",
           "create_model", "get_spec", "list_models", "register_model"]
