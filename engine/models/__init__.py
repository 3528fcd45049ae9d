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
from engine.public import public_face

__all__ = ["LoadedModel", "load_model", "read_card", "save_model", "Preprocessing", "cam_layer",
           "create_model", "get_spec", "list_models", "register_model"]

# The public face the dashboard and the pages import from (engine.public: each module loads when first asked).
__getattr__, __dir__ = public_face(__name__, {
    "card": ("ModelCard",),
    "checkpoint": ("load_model",),
    "installed": ("InstalledModel", "activation_log", "active_model", "find_model", "installed_models", "promote",
                  "rollback", "rollback_target"),
    "preprocess": ("Preprocessing",),
    "registry": ("architectures", "get_spec", "list_models"),
    "scope": ("Scope", "Verdict"),
})
