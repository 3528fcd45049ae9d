"""Synthetic images: installed generators and seeded generation (generator.py), their quality in the shipped
classifier's feature space, memorisation checks against the training images (quality.py), and the synthetic
minority images a training run can add (training.py)."""

from engine.public import public_face

# The public face the dashboard and the pages import from (engine.public: each module loads when first asked).
__getattr__, __dir__ = public_face(__name__, {
    "evaluation": ("Gallery", "References", "load_references"),
    "export": ("export_zip", "shown", "synthesise", "upscaled"),
    "generator": ("LoadedGenerator", "find_generator", "installed_generators", "load_generator"),
})
