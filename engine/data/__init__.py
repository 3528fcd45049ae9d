"""Datasets: the catalogue of training/evaluation datasets, dataset-specific matching, reviews as training data."""

from engine.public import public_face

# The public face the dashboard and the pages import from (engine.public: each module loads when first asked).
__getattr__, __dir__ = public_face(__name__, {
    "loaders": ("SPLITS", "datasets", "gray_of_file"),
    "reviews": ("usable_review_ids",),
})
